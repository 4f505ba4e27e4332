/*
 * Tokenizer: byte-level BPE as in Hugging Face tokenizer.json files (Llama 3, Qwen3).
 * ibrain uses it to count prompt tokens and to cut prefix blocks at token boundaries.
 *
 * Encoding, in the order the reference implementations apply it:
 *   1. invalid UTF-8 is replaced by U+FFFD, the way a WHATWG TextDecoder does it;
 *   2. added tokens (<|im_start|>, <think>, ...) are split out of the text, longest match
 *      first, unless IB_TOK_NO_SPECIAL is given;
 *   3. each remaining piece is normalized (NFC when the file asks for it, via utf8proc);
 *   4. pre-tokenized by the file's Split regex (PCRE2 with JIT);
 *   5. each pre-token's bytes are merged by BPE rank. Tokens are kept as raw bytes: the
 *      byte-to-unicode mapping of the file is undone once at load time.
 *
 * The regex follows JavaScript's semantics where engines differ (\s is ECMAScript's white
 * space, (?i:'s|...) folds ASCII only), because the reference ids come from the
 * transformers.js implementation in @lenml/tokenizers. docs/api.md lists the differences.
 *
 * Threads: an ib_tokenizer_t is read-only after loading and shared; each thread encodes
 * with its own ib_tok_state_t.
 */
#ifndef IBRAIN_TOKENIZER_H
#define IBRAIN_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/buf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef struct ib_tokenizer ib_tokenizer_t; /* the loaded model: vocabulary, merges, regex */
typedef struct ib_tok_state ib_tok_state_t; /* per-thread scratch: match data, buffers */

/** A growable array of token ids. */
typedef struct ib_tok_ids {
    uint32_t *ids;
    size_t len;
    size_t cap;
} ib_tok_ids_t;

/** What was loaded, and what it cost. */
typedef struct ib_tokenizer_info {
    uint32_t vocab_size;   /* highest id + 1, added tokens included */
    uint32_t nmerges;
    uint32_t nadded;
    int nfc;               /* the normalizer is NFC */
    int ignore_merges;     /* a pre-token that is itself in the vocabulary is one token */
    size_t memory_bytes;   /* heap held by the tables */
    double load_ms;        /* wall time of ib_tokenizer_load */
} ib_tokenizer_info_t;

/* Flags for ib_tokenize / ib_detokenize. */
#define IB_TOK_NO_SPECIAL 1u   /* encode: added tokens in the text are plain text */
#define IB_TOK_SKIP_SPECIAL 2u /* decode: leave special tokens out */

/* ---- functions ---- */

/** Loads a tokenizer.json file. NULL with a message in <err> when it cannot. */
ib_tokenizer_t *ib_tokenizer_load(const char *path, char *err, size_t errlen);
/** Same from memory (<len> bytes; the buffer is not kept). */
ib_tokenizer_t *ib_tokenizer_load_mem(const char *json, size_t len, char *err, size_t errlen);
void ib_tokenizer_free(ib_tokenizer_t *t);
void ib_tokenizer_get_info(const ib_tokenizer_t *t, ib_tokenizer_info_t *out);

/** The id of a token given as its text (an added token such as "<|eot_id|>"), or -1. */
int64_t ib_tokenizer_token_id(const ib_tokenizer_t *t, const char *text, size_t len);

ib_tok_state_t *ib_tok_state_new(const ib_tokenizer_t *t);
void ib_tok_state_free(ib_tok_state_t *s);
const ib_tokenizer_t *ib_tok_state_tokenizer(const ib_tok_state_t *s);

/**
 * A state remembers the tokens of recent long segments (text between added tokens, such as
 * a chat message) so that a conversation's history is not tokenized again every turn; at
 * most 8 MiB per state. <on> = 0 turns that off (benchmarks of the cold path).
 */
void ib_tok_state_segment_cache(ib_tok_state_t *s, int on);

/**
 * Appends the token ids of <len> bytes of <text> to <out>. Any bytes are accepted.
 * Returns 0, or -1 when out of memory (or on a regex engine error).
 */
int ib_tokenize(ib_tok_state_t *s, const char *text, size_t len, unsigned flags, ib_tok_ids_t *out);

/**
 * Appends the bytes of <n> token ids to <out> (ids past the vocabulary are skipped).
 * decode(encode(s)) == s for valid UTF-8 s. Returns 0, or -1 when out of memory.
 */
int ib_detokenize(const ib_tokenizer_t *t, const uint32_t *ids, size_t n, unsigned flags, ib_buf_t *out);

/**
 * Appends <text> as the tokenizer sees it before pre-tokenization (invalid UTF-8 replaced,
 * then NFC when the file's normalizer is NFC) to <out>: decode(encode(s)) equals this for
 * every s. Returns 0, or -1 when out of memory.
 */
int ib_tokenizer_normalize(const ib_tokenizer_t *t, const char *text, size_t len, ib_buf_t *out);

void ib_tok_ids_free(ib_tok_ids_t *ids);
static inline void ib_tok_ids_reset(ib_tok_ids_t *ids) { ids->len = 0; }

#ifdef __cplusplus
}
#endif
#endif
