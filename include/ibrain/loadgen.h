/*
 * ib-load: the trace-replay load generator's model of a workload.
 *
 * A workload is a list of items (one per request, or per conversation turn). Each item's
 * prompt is made of deterministic text blocks named by 64-bit keys: the same key always
 * gives the same text, so requests that share keys in order share a text prefix, and an
 * engine's prefix cache sees the workload's real sharing structure.
 *
 *  - Mooncake traces (JSONL: timestamp ms, input_length, output_length, hash_ids of
 *    512-token blocks): block i of a request is the text of hash_ids[i]; the last block is
 *    cut to the request's input length.
 *  - Azure LLM inference traces (CSV: TIMESTAMP, ContextTokens, GeneratedTokens): no
 *    prefix information, so each request gets text of its own.
 *  - shared-prefix groups (SGLang's generated-shared-prefix): G groups x P prompts, each a
 *    system prompt of S tokens shared by its group plus a question of Q tokens.
 *  - multi-turn chat (vLLM production-stack's multi-round QA): U users x T turns; each turn
 *    resends the conversation so far (the answers the server gave) plus a new question.
 *
 * A token of text is <bytes_per_token> bytes: a space and letters. At the default of 4 it
 * is a space and a three-letter word that the Qwen3 and Llama 3 tokenizers encode as
 * exactly one token, so a prompt of N tokens is N tokens for an engine that tokenizes
 * (and ceil(bytes / 4) = N for the mock engine without a tokenizer). Other values give
 * random letters, which a real tokenizer splits into more tokens.
 */
#ifndef IBRAIN_LOADGEN_H
#define IBRAIN_LOADGEN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "ibrain/buf.h"
#include "ibrain/ondemand_c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef enum ib_load_source {
    IB_SRC_MOONCAKE = 1,
    IB_SRC_AZURE,
    IB_SRC_SHARED_PREFIX,
    IB_SRC_MULTI_TURN,
} ib_load_source_t;

typedef struct ib_load_item {
    uint64_t at_us;          /* arrival offset from the start (open loop); for multi-turn: the user's start */
    uint32_t input_tokens;
    uint32_t output_tokens;
    uint64_t *keys;          /* Mooncake: hash_ids (owned by the workload) */
    uint32_t nkeys;
    uint32_t group;          /* shared-prefix: group; multi-turn: user */
    uint32_t index;          /* shared-prefix: prompt in group; Azure/Mooncake: line */
} ib_load_item_t;

typedef struct ib_load_workload {
    ib_load_source_t source;
    ib_load_item_t *items;
    size_t nitems, cap;
    /* shape of the synthetic workloads and of the text */
    uint32_t bytes_per_token;    /* default 4 */
    uint32_t block_tokens;       /* Mooncake hash block size, default 512 */
    uint32_t system_tokens;      /* shared-prefix / multi-turn system prompt */
    uint32_t question_tokens;
    uint32_t history_tokens;     /* multi-turn: per-user context before the first question */
    uint32_t turns;              /* multi-turn */
    uint64_t seed;
} ib_load_workload_t;

/* ---- functions ---- */

void ib_load_workload_init(ib_load_workload_t *w);
void ib_load_workload_free(ib_load_workload_t *w);

/**
 * Parses one Mooncake JSONL line into an item (keys allocated). 0, or -1 with <err> set.
 * <json> is a parser from ondemand_c.h.
 */
struct ib_json_parser;
int ib_load_parse_mooncake_line(struct ib_json_parser *json, const char *line, size_t len, ib_load_item_t *out,
                                char *err, size_t errlen);

/** Parses one Azure CSV row ("2023-11-16 18:15:46.6805900,374,44"): at_us is absolute
 * microseconds of the day's timestamp; the caller rebases. 0, or -1 with <err> set. */
int ib_load_parse_azure_line(const char *line, size_t len, ib_load_item_t *out, char *err, size_t errlen);

/**
 * Loads a trace file (format from the first line: '{' -> Mooncake, else Azure CSV with
 * header), keeping at most <limit> items (0: all), with arrivals rebased to start at 0.
 * Mooncake timestamps come in ~3 s buckets: <spread_ms> > 0 spreads each bucket's requests
 * evenly over that many ms. 0, or -1 with a message on stderr.
 */
int ib_load_read_trace(ib_load_workload_t *w, const char *path, size_t limit, uint32_t spread_ms);

/** Synthetic workloads; arrivals are a Poisson process of <rate> per second (0: all at t=0).
 * For multi-turn the items are users (one per user; turns are driven by the client). */
int ib_load_gen_shared_prefix(ib_load_workload_t *w, uint32_t groups, uint32_t per_group, uint32_t output_tokens,
                              double rate);
int ib_load_gen_multi_turn(ib_load_workload_t *w, uint32_t users, uint32_t output_tokens, double rate);

/** Appends <tokens> tokens of the deterministic text named by <key> to <out>. */
int ib_load_block_text(const ib_load_workload_t *w, uint64_t key, uint32_t tokens, ib_buf_t *out);

/**
 * Appends the prompt text of <it> (single-turn sources) to <out>: the whole prompt, which
 * the client sends as one user message (chat) or as the prompt (completions). For
 * shared-prefix, <system> receives the group's system prompt and <out> the question.
 */
int ib_load_item_prompt(const ib_load_workload_t *w, const ib_load_item_t *it, ib_buf_t *system, ib_buf_t *out);

/** Multi-turn: the text of user <user>'s question for turn <turn> (turn 0 includes the
 * user's history block); the system prompt is ib_load_system_prompt(). */
int ib_load_turn_question(const ib_load_workload_t *w, uint32_t user, uint32_t turn, ib_buf_t *out);
int ib_load_system_prompt(const ib_load_workload_t *w, uint32_t group, ib_buf_t *out);

/* ---- statistics ---- */

typedef struct ib_samples {
    double *v;
    size_t n, cap;
} ib_samples_t;

int ib_samples_add(ib_samples_t *s, double x);
void ib_samples_free(ib_samples_t *s);
/** Sorts in place; then ib_samples_pct gives the nearest-rank percentile (p in [0,100]). */
void ib_samples_sort(ib_samples_t *s);
double ib_samples_pct(const ib_samples_t *s, double p);
double ib_samples_mean(const ib_samples_t *s);

#ifdef __cplusplus
}
#endif
#endif
