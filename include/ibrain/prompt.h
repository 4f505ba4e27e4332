/*
 * Prompt: what a request's prompt looks like to the engine's KV cache. The request is
 * rendered with the workload's chat template, then cut into prefix blocks and hashed:
 *   - with a tokenizer: blocks of B tokens, as the engine's KV-cache blocks are, hashed over
 *     the token ids (little-endian uint32); the token count is exact;
 *   - without: blocks of B bytes of the rendered text; the token count is an estimate
 *     (bytes / bytes_per_token, rounded up).
 * ibrain, the mock engine and the routing benchmark all build prompts here, so that the
 * hashes the router predicts are the hashes the engine caches.
 */
#ifndef IBRAIN_PROMPT_H
#define IBRAIN_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/chat.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

/** Per-thread scratch and the result of the last ib_prompt_build. */
typedef struct ib_prompt {
    ib_buf_t text;     /* the rendered prompt */
    ib_tok_ids_t ids;  /* its token ids (tokenizer mode) */
    uint64_t *hashes;  /* nblocks prefix block hashes */
    size_t nblocks;
    size_t hashes_cap;
    uint64_t tokens;   /* prompt tokens: exact with a tokenizer, else estimated */
    int tokenized;     /* tokens is exact */
} ib_prompt_t;

/* ---- functions ---- */

/**
 * Renders <req> with <tpl> and hashes its full prefix blocks. With <st> (a tokenizer
 * state) blocks are <block> tokens, without they are <block> bytes and the token count is
 * estimated with <bytes_per_token>. Returns 0, or -1 when out of memory.
 */
int ib_prompt_build(ib_prompt_t *p, ib_chat_template_t tpl, const ib_oai_request_t *req, ib_tok_state_t *st,
                    uint32_t block, uint32_t bytes_per_token);

void ib_prompt_free(ib_prompt_t *p);

#ifdef __cplusplus
}
#endif
#endif
