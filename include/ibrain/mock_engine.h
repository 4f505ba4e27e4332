/*
 * ib-mock-engine: an OpenAI-compatible inference engine simulator with a real prefix KV
 * cache model and a timing model, for ibrain's tests, demos and benchmarks.
 *
 * The scheduler (ib_sched_*) is the engine's timing model and holds no HTTP state:
 *
 *   submit -> [waiting: all max_seqs slots busy] -> [prefill queue] -> prefill -> decode -> done
 *
 *  - a sequence holds one of <max_seqs> slots from admission to its last token; others wait
 *    in FIFO order (overload shows up as queueing delay, as in a real engine);
 *  - prefill is one compute unit shared by all sequences, FIFO: a prefill takes
 *    overhead + uncached_prompt_tokens x prefill cost, where the uncached part is what the
 *    prefix cache does not hold when the prefill starts; its blocks enter the cache when it
 *    ends, and the first token is out;
 *  - then decoding runs in steps, as continuous batching does: every step gives one token
 *    to every decoding sequence, and a step takes itl + itl_per_seq x (sequences decoding
 *    - 1). A sequence whose prefill ends joins the next step. Decode steps are not slowed
 *    by prefills (as with prefill/decode disaggregation).
 *
 * All times are in ns on the caller's monotonic clock; the engine's event loop drives it
 * with ib_sched_next_deadline() and ib_sched_run().
 */
#ifndef IBRAIN_MOCK_ENGINE_H
#define IBRAIN_MOCK_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include "ibrain/buf.h"
#include "ibrain/chat.h"
#include "ibrain/prefix_cache.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef struct ib_sched_config {
    uint32_t max_seqs;              /* concurrent sequences (slots) */
    uint32_t block_tokens;          /* KV block size in tokens */
    uint32_t cache_blocks;          /* prefix cache capacity in blocks */
    uint64_t cache_ttl_ns;          /* 0: blocks never expire */
    uint64_t overhead_ns;           /* fixed cost of every prefill */
    uint64_t prefill_ns_per_token;  /* cost of one uncached prompt token */
    uint64_t itl_ns;                /* inter-token latency with one sequence decoding */
    uint64_t itl_ns_per_seq;        /* added per other sequence decoding */
} ib_sched_config_t;

typedef enum ib_seq_state {
    IB_SEQ_NEW = 0,
    IB_SEQ_WAITING,     /* for a slot */
    IB_SEQ_QUEUED,      /* has a slot, waits for the prefill unit */
    IB_SEQ_PREFILLING,
    IB_SEQ_DECODING,
    IB_SEQ_DONE,        /* finished or cancelled: the scheduler holds no reference */
} ib_seq_state_t;

typedef struct ib_seq ib_seq_t;

/** Called for each token; <last> on the final one, after which the sequence is DONE. */
typedef void (*ib_seq_token_cb)(ib_seq_t *seq, uint32_t index, int last);

struct ib_seq {
    /* set by the caller before submit */
    const uint64_t *hashes;   /* block hash chain of the rendered prompt */
    size_t nblocks;
    const uint32_t *token_ids; /* the prompt's token ids (nblocks x block_tokens at least), or NULL */
    uint32_t prompt_tokens;
    uint32_t max_tokens;      /* >= 1 */
    ib_seq_token_cb on_token;
    void *owner;
    /* read-only for the caller */
    ib_seq_state_t state;
    uint32_t cached_tokens;   /* prompt tokens served from the prefix cache */
    uint32_t generated;
    uint64_t submit_ns, first_token_ns;
    /* private */
    uint64_t _prefill_end_ns;
    ib_seq_t *_prev, *_next;  /* the list it is on: waiting, queued or decoding */
};

typedef struct ib_seq_fifo {
    ib_seq_t *head, *tail;
    uint32_t count;
} ib_seq_fifo_t;

typedef struct ib_sched {
    ib_sched_config_t cfg;
    ib_prefix_cache_t cache;
    ib_seq_fifo_t waiting;    /* no slot yet */
    ib_seq_fifo_t queued;     /* slot held, waiting for the prefill unit */
    ib_seq_t *prefilling;     /* on the prefill unit, or NULL */
    ib_seq_fifo_t decoding;   /* in the decode batch */
    uint32_t slots_used;      /* admitted sequences (queued + prefilling + decoding) */
    uint64_t next_step_ns;    /* next decode step, UINT64_MAX when none is scheduled */
    uint64_t steps;           /* decode steps run */
    /* counters */
    uint64_t query_tokens;    /* prompt tokens looked up in the prefix cache */
    uint64_t hit_tokens;      /* of which found cached */
    uint64_t prompt_tokens;   /* prompt tokens prefilled (hit or not) */
    uint64_t generation_tokens;
    uint64_t finished;
    uint64_t cancelled;
} ib_sched_t;

/* ---- functions ---- */

/** 0, or -1 when out of memory or cfg invalid (max_seqs, block_tokens, cache_blocks > 0). */
int ib_sched_init(ib_sched_t *s, const ib_sched_config_t *cfg);
void ib_sched_destroy(ib_sched_t *s);

/** Admits <seq> (state NEW, fields set) at <now_ns>. 0, or -1 when out of memory. */
int ib_sched_submit(ib_sched_t *s, ib_seq_t *seq, uint64_t now_ns);

/** Drops <seq> wherever it is (a client went away); no more callbacks. Idempotent. */
void ib_sched_cancel(ib_sched_t *s, ib_seq_t *seq, uint64_t now_ns);

/** Fires every event due at <now_ns> (callbacks run from here). */
void ib_sched_run(ib_sched_t *s, uint64_t now_ns);

/** Deadline of the next event, or UINT64_MAX when idle. */
uint64_t ib_sched_next_deadline(const ib_sched_t *s);

#ifdef __cplusplus
}
#endif

/* ---- the engine's metrics (tools/mock_engine/metrics.c): vLLM's names ---- */

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ib_engine_route {
    IB_ER_CHAT, IB_ER_COMPLETIONS, IB_ER_MODELS, IB_ER_HEALTH, IB_ER_METRICS, IB_ER_VERSION, IB_ER_LOAD,
    IB_ER_RESET_CACHE, IB_ER_KV_BLOCKS, IB_ER_TOKENIZE, IB_ER_OTHER,
    IB_ER__COUNT
} ib_engine_route_t;

#define IB_ENGINE_NSTATUS 7    /* 200 400 404 405 413 500 503, then any other */
#define IB_ENGINE_HIST_MAX 24  /* bucket bounds of the longest histogram */

typedef struct ib_engine_hist {
    const double *bounds;      /* upper bounds in seconds, ascending */
    uint32_t n;
    uint64_t counts[IB_ENGINE_HIST_MAX + 1]; /* per bucket, not cumulative; [n] is +Inf */
    double sum;
    uint64_t count;
} ib_engine_hist_t;

typedef struct ib_engine_metrics {
    uint64_t http[IB_ER__COUNT][IB_ENGINE_NSTATUS + 1];
    ib_engine_hist_t ttft;     /* submit to first token */
    ib_engine_hist_t itl;      /* between a sequence's tokens */
    ib_engine_hist_t e2e;      /* submit to last token */
    uint64_t finished_stop, finished_length;
    uint64_t streams_active;   /* completions h2o still holds */
    uint64_t disconnects;
} ib_engine_metrics_t;

/** Zeroes <m> and sets vLLM's bucket bounds. */
void ib_engine_metrics_init(ib_engine_metrics_t *m);
void ib_engine_hist_observe(ib_engine_hist_t *h, double seconds);
/** Counts an HTTP answer on route <r>. */
void ib_engine_metrics_http(ib_engine_metrics_t *m, ib_engine_route_t r, int status);
/** Appends the whole /metrics page. 0, or -1 when out of memory. */
int ib_engine_metrics_render(ib_buf_t *b, const ib_engine_metrics_t *m, const ib_sched_t *s, const char *model);

#ifdef __cplusplus
}
#endif

/* ---- KV-cache events (tools/mock_engine/kv_events.c): vLLM's ZmqEventPublisher ---- */

#ifdef __cplusplus
extern "C" {
#endif

/* vLLM's prefix_caching_hash_algo: sha256 / xxh3_128 over pickle or canonical CBOR */
typedef enum ib_kv_hash_algo { IB_KVH_SHA256, IB_KVH_SHA256_CBOR, IB_KVH_XXHASH, IB_KVH_XXHASH_CBOR } ib_kv_hash_algo_t;
/* events as tagged arrays (vLLM 0.11) or maps with a "type" key (later vLLM) */
typedef enum ib_kv_encoding { IB_KVENC_ARRAY, IB_KVENC_MAP } ib_kv_encoding_t;

typedef struct ib_kvpub_config {
    /* --kv-events-config, vLLM's KVEventsConfig keys */
    int enabled;                /* enable_kv_cache_events and publisher "zmq" */
    char endpoint[256];         /* PUB; binds when it has '*', '::', ipc:// or inproc://, else connects */
    char replay_endpoint[256];  /* ROUTER, always binds; "" for none */
    char topic[128];
    uint32_t buffer_steps;      /* batches kept for replay (10000) */
    int hwm;                    /* PUB send high-water mark (100000) */
    /* engine flags and environment */
    ib_kv_encoding_t encoding;  /* --kv-events-encoding */
    ib_kv_hash_algo_t algo;     /* --prefix-caching-hash-algo */
    int int_hashes;             /* VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES, default 1 */
    int have_seed;              /* PYTHONHASHSEED set: NONE_HASH = hash_fn(seed), else random */
    char seed[64];
    /* fault injection (tests): these batches are not sent live (kept for replay), as a
     * subscriber past its high-water mark misses them */
    uint64_t drop_seq[8];
    uint32_t ndrop;
} ib_kvpub_config_t;

typedef struct ib_kvpub ib_kvpub_t;

void ib_kvpub_config_defaults(ib_kvpub_config_t *c);
/** Reads vLLM's --kv-events-config JSON over <c>. 0, or -1 with a message in <err>. */
int ib_kvpub_config_parse(ib_kvpub_config_t *c, const char *json, char *err, size_t errlen);
int ib_kvpub_algo_parse(const char *name, ib_kv_hash_algo_t *out);
const char *ib_kvpub_algo_name(ib_kv_hash_algo_t a);
/** Opens the sockets and listens to <cache>, whose blocks are <block_tokens> tokens. */
ib_kvpub_t *ib_kvpub_create(const ib_kvpub_config_t *cfg, ib_prefix_cache_t *cache, uint32_t block_tokens, char *err,
                            size_t errlen);
/** Publishes the events since the last flush as one batch (nothing when there are none). */
void ib_kvpub_flush(ib_kvpub_t *p);
/** The blocks the cache holds now, with their event hashes, as JSON. 0 or -1 (OOM). */
int ib_kvpub_render_blocks(const ib_kvpub_t *p, ib_buf_t *b);
void ib_kvpub_destroy(ib_kvpub_t *p);

#ifdef __cplusplus
}
#endif

/* ---- the engine process (tools/mock_engine/engine.c) ---- */


#ifdef __cplusplus
extern "C" {
#endif

typedef struct ib_engine_config {
    const char *listen;         /* "HOST:PORT"; port 0 picks a free one */
    const char *port_file;      /* where the bound port is written once listening, or NULL */
    const char *model;          /* the one model name served */
    const char *engine_id;      /* sent as X-Engine-Id; defaults to HOST:PORT */
    ib_chat_template_t chat_template;
    uint32_t bytes_per_token;   /* without a tokenizer, tokens are estimated as ceil(bytes / this) */
    const char *tokenizer;      /* tokenizer.json: real token counts, KV blocks of block_tokens tokens */
    uint32_t max_model_len;     /* prompt + max_tokens limit, in tokens */
    uint32_t default_max_tokens;
    size_t max_body_bytes;
    uint32_t drain_timeout_ms;  /* on SIGTERM/SIGINT: finish streams for at most this long */
    ib_sched_config_t sched;
    ib_kvpub_config_t kv_events; /* enabled: publish KV-cache events (needs a tokenizer) */
} ib_engine_config_t;

typedef struct ib_engine ib_engine_t; /* opaque: owns the event loop, the scheduler, HTTP state */

/** Defaults for every field (listen 127.0.0.1:8000, model "mock", ChatML, 4 bytes/token ...). */
void ib_engine_config_defaults(ib_engine_config_t *cfg);

/** Binds the listener and builds the engine. NULL with a message on stderr on failure. */
ib_engine_t *ib_engine_create(const ib_engine_config_t *cfg);

/** Serves until SIGINT/SIGTERM, then drains. Returns the process exit code. */
int ib_engine_run(ib_engine_t *eng);

void ib_engine_destroy(ib_engine_t *eng);

#ifdef __cplusplus
}
#endif
#endif /* IBRAIN_MOCK_ENGINE_H */
