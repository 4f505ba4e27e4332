/* Rendering, tokenizing and block-hashing a request's prompt (include/ibrain/prompt.h). */
#include "ibrain/prompt.h"

#include <stdlib.h>

#include "ibrain/hashchain.h"

static int reserve_hashes(ib_prompt_t *p, size_t n)
{
    if (n <= p->hashes_cap)
        return 0;
    size_t cap = p->hashes_cap ? p->hashes_cap : 64;
    while (cap < n)
        cap *= 2;
    uint64_t *h = realloc(p->hashes, cap * sizeof(*h));
    if (h == NULL)
        return -1;
    p->hashes = h;
    p->hashes_cap = cap;
    return 0;
}

int ib_prompt_build(ib_prompt_t *p, ib_chat_template_t tpl, const ib_oai_request_t *req, ib_tok_state_t *st,
                    uint32_t block, uint32_t bytes_per_token)
{
    ib_buf_reset(&p->text);
    ib_tok_ids_reset(&p->ids);
    p->nblocks = 0;
    p->tokens = 0;
    p->tokenized = st != NULL;
    if (block == 0 || ib_chat_render(tpl, req, &p->text) != 0)
        return -1;
    const void *bytes = p->text.ptr;
    size_t len = p->text.len, block_bytes = block;
    if (st != NULL) {
        if (ib_tokenize(st, p->text.ptr, p->text.len, 0, &p->ids) != 0)
            return -1;
        p->tokens = p->ids.len;
        bytes = p->ids.ids;
        len = p->ids.len * sizeof(uint32_t);
        block_bytes = (size_t)block * sizeof(uint32_t);
    } else {
        uint32_t bpt = bytes_per_token ? bytes_per_token : 4;
        p->tokens = (p->text.len + bpt - 1) / bpt;
    }
    size_t n = len / block_bytes;
    if (reserve_hashes(p, n) != 0)
        return -1;
    p->nblocks = ib_hashchain(bytes, len, block_bytes, p->hashes, n);
    return 0;
}

void ib_prompt_free(ib_prompt_t *p)
{
    ib_buf_free(&p->text);
    ib_tok_ids_free(&p->ids);
    free(p->hashes);
    p->hashes = NULL;
    p->hashes_cap = p->nblocks = 0;
}
