/* The tokenizer's tables, shared by load.c (building them) and encode.c (using them). */
#ifndef IBRAIN_TOKENIZE_INTERNAL_H
#define IBRAIN_TOKENIZE_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <stdint.h>

#include "ibrain/tokenizer.h"

#define IB_TOK_NONE UINT32_MAX

/** An added token: its bytes in the arena, its id. */
typedef struct ib_added_token {
    uint32_t off;
    uint32_t len;
    uint32_t id;
    uint8_t special;
    uint64_t head, head_mask; /* its first 8 bytes (fewer: masked), as memcpy loads them */
} ib_added_token_t;

typedef struct ib_merge_slot {
    uint64_t key; /* (left << 32 | right) + 1, 0 = empty */
    uint32_t rank;
    uint32_t res;
} ib_merge_slot_t;

struct ib_tokenizer {
    /* Token bytes (raw, not the byte-level unicode form), indexed by id. */
    char *arena;
    size_t arena_len, arena_cap;
    uint32_t *tok_off;
    uint32_t *tok_len; /* UINT32_MAX: no token has this id */
    uint8_t *tok_special;
    uint32_t ntok; /* highest id + 1 */

    /* Vocabulary bytes -> id (model.vocab only, as the BPE model sees it). */
    uint32_t *vmap; /* id + 1, 0 = empty */
    uint32_t vmask;
    uint32_t nvocab;

    /* Merges: (left id, right id) -> rank and merged id, one cache line access per probe. */
    ib_merge_slot_t *merges;
    uint32_t mmask;
    uint32_t nmerges;
    uint32_t merges_skipped; /* merges whose parts or result are not in the vocabulary */

    uint32_t byte_id[256]; /* the token of each single byte */

    /* Added tokens, grouped by first byte, longest first within a group. */
    ib_added_token_t *added;
    uint32_t nadded;
    uint32_t added_first[257]; /* added[added_first[b] .. added_first[b+1]) start with b */
    int added_lead;            /* the first byte every added token starts with ('<' in both families), or -1 */

    pcre2_code *re;
    int nfc;
    int ignore_merges;
    double load_ms;
};

/* The id of a vocabulary entry given as raw bytes, or IB_TOK_NONE. Defined in load.c. */
uint32_t ib_tok_vocab_lookup(const ib_tokenizer_t *t, const char *p, size_t n);

static inline uint64_t ib_tok_mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* Rank and result of merging <a> and <b>, or IB_TOK_NONE. */
static inline uint32_t ib_tok_merge(const ib_tokenizer_t *t, uint32_t a, uint32_t b, uint32_t *res)
{
    uint64_t key = ((uint64_t)a << 32 | b) + 1;
    for (uint32_t i = (uint32_t)ib_tok_mix64(key) & t->mmask;; i = (i + 1) & t->mmask) {
        const ib_merge_slot_t *m = &t->merges[i];
        if (m->key == key) {
            *res = m->res;
            return m->rank;
        }
        if (m->key == 0)
            return IB_TOK_NONE;
    }
}

#endif
