/*
 * Private to dataplane/proxy: the proxy, its workers and their metrics.
 * Public face: include/ibrain/proxy.h.
 */
#ifndef IBRAIN_PROXY_INTERNAL_H
#define IBRAIN_PROXY_INTERNAL_H

#include <liburing.h>
#include <pthread.h>

#include "ibrain/chat.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/prompt.h"
#include "ibrain/proxy.h"
#include "ibrain/route.h"
#include "ibrain/sync.h"
#include "ibrain/tokenizer.h"

/* ---- metrics: one set per worker, written by it alone, summed at scrape time ---- */

enum ib_route {
    IB_ROUTE_CHAT, IB_ROUTE_COMPLETIONS, IB_ROUTE_OTHER_PROXIED, IB_ROUTE_MODELS, IB_ROUTE_HEALTH, IB_ROUTE_READY,
    IB_ROUTE_METRICS, IB_ROUTE_NONE, IB_ROUTE__COUNT
};
#define IB_NSTATUS 16 /* see ib_metrics_status_index() */
#define IB_NBUCKETS 16
#define IB_NMATCHED 12 /* matched prefix histogram: 0, 1, 2, 4, ... 1024 blocks */
enum ib_upstream_error { IB_UPERR_CONNECT, IB_UPERR_IO, IB_UPERR_TIMEOUT, IB_UPERR_MIDSTREAM, IB_UPERR__COUNT };

typedef struct ib_worker_metrics {
    ib_counter_t requests[IB_ROUTE__COUNT][IB_NSTATUS];
    ib_counter_t duration_bucket[IB_NBUCKETS + 1];
    ib_counter_t duration_sum_us;
    ib_counter_t duration_count;
    ib_counter_t ttfb_bucket[IB_NBUCKETS + 1];
    ib_counter_t ttfb_sum_us;
    ib_counter_t ttfb_count;
    ib_counter_t upstream_errors[IB_MAX_REPLICAS][IB_UPERR__COUNT];
    ib_counter_t retries;
    ib_counter_t conns_accepted;
    ib_counter_t conns_open;      /* gauge: incremented and decremented by the owner */
    ib_counter_t conns_open_dec;
    ib_counter_t upstream_conns_opened;
    ib_counter_t client_aborts;   /* clients gone before their response ended */
    ib_counter_t route_reason[4][IB_REASON__COUNT]; /* by policy, reason */
    ib_counter_t matched_bucket[IB_NMATCHED + 1];
    ib_counter_t matched_sum;
    ib_counter_t matched_count;
    ib_counter_t prompt_blocks;   /* prefix blocks hashed, for the matched/total ratio */
    ib_counter_t prompt_tokens;   /* prompt tokens counted by the tokenizer */
    ib_counter_t context_exceeded; /* requests refused: prompt + max_tokens over the context */
    ib_counter_t busy_poll_ns;    /* time spent polling an empty ring (--busy-poll-us) */
} ib_worker_metrics_t;

extern const double ib_metrics_buckets_s[IB_NBUCKETS];
int ib_metrics_status_index(int status);
void ib_metrics_observe(ib_counter_t *buckets, ib_counter_t *sum_us, ib_counter_t *count, uint64_t ns);
/** Renders the Prometheus text of every worker's metrics, summed, plus replica gauges. */
int ib_metrics_render(const ib_proxy_t *px, ib_buf_t *out);

/* ---- routing table: workloads and their replicas, published RCU-style ---- */

#define IB_MAX_TOKENIZERS 16
#define IB_WORKER_TOKSTATES 8

/** One workload as the workers route it. */
typedef struct ib_workload_rt {
    char id[64];                  /* the snapshot's workload id ("" in the static table) */
    char model[128];              /* "" in the static table: the --model list decides */
    ib_chat_template_t tpl;
    ib_tokenizer_t *tokenizer;    /* in px->toks; NULL: byte blocks */
    uint32_t block;               /* tokens with a tokenizer, else bytes */
    uint32_t context_length;      /* 0: no check */
    ib_router_t *router;          /* in px->routers, kept across versions by workload id */
    uint32_t nslots;
    uint8_t slots[IB_MAX_REPLICAS];  /* its replicas (ready and draining); 8 bits: limits.h */
    uint64_t ready[IB_REPLICA_MASK_WORDS]; /* bit per slot: takes new requests */
    uint32_t max_slot;            /* highest slot + 1 */
} ib_workload_rt_t;

/** Immutable once published in px->rtab; freed after every worker has passed a quiescent
 * point (px->epoch). */
typedef struct ib_rtab {
    uint64_t version;             /* 0: the static configuration (flags) */
    uint32_t nworkloads;
    uint64_t all_ready[IB_REPLICA_MASK_WORDS]; /* every workload's ready slots (for other /v1 routes) */
    ib_workload_rt_t wl[];
} ib_rtab_t;

/* worker.c copies a workload's ready set into a request's retry candidates (cand[0], cand[1]). */
IB_STATIC_ASSERT(IB_REPLICA_MASK_WORDS == 2, "dataplane/proxy/worker.c: cand[] is two words");
static inline int ib_mask_has(const uint64_t *m, uint32_t slot) { return (int)((m[slot >> 6] >> (slot & 63)) & 1); }
static inline void ib_mask_set(uint64_t *m, uint32_t slot) { m[slot >> 6] |= 1ull << (slot & 63); }

/** Builds the static table from the flags, or applies a snapshot (sync thread). */
int ib_rtab_init_static(ib_proxy_t *px);
int ib_rtab_apply_snapshot(void *px, const ib_snapshot_t *snap);
/** Frees the current table and the registries (at exit, workers stopped). */
void ib_rtab_destroy(ib_proxy_t *px);
/** The workload serving <model> in <rt>, or NULL. */
const ib_workload_rt_t *ib_rtab_find(const ib_proxy_t *px, const ib_rtab_t *rt, ib_span_t model);

/* ---- write-back: what a worker routed, handed to the sync thread ---- */

/** Single-producer (a worker) single-consumer (the sync thread) ring of 64-bit words.
 * A record: a header word (slot | workload index << 8 | n << 16 | table version << 32)
 * followed by n prefix block hashes. */
typedef struct ib_wb_ring {
    _Alignas(64) _Atomic uint64_t head; /* words written (producer) */
    _Alignas(64) _Atomic uint64_t tail; /* words consumed (consumer) */
    uint64_t *buf;
    uint64_t mask;
    _Atomic uint64_t dropped;           /* records that did not fit */
    struct {
        uint64_t key;                   /* last block hash ^ slot */
        uint64_t at_ms;
    } recent[1024];                     /* producer only: what was pushed in the last second */
} ib_wb_ring_t;

#define IB_WB_RING_WORDS (1u << 16)
#define IB_WB_MAX_BLOCKS 4096u
#define IB_WB_STREAM "ib:affinity"
IB_STATIC_ASSERT(IB_MAX_REPLICAS <= 256 && IB_MAX_WORKLOADS <= 256, "a record header holds slot and workload in 8 bits each");
IB_STATIC_ASSERT(IB_WB_MAX_BLOCKS <= 0xffff, "a record header holds n in 16 bits");

struct ib_worker;
/** Worker side: records that <slot> of workload <wl> now holds <h>[0..n). */
void ib_writeback_push(struct ib_worker *w, uint64_t version, uint32_t wl, uint32_t slot, const uint64_t *h, size_t n);
/** Sync thread side, every tick: send this instance's batch, apply the others'. */
void ib_writeback_tick(void *px, ib_sync_t *s);

/* ---- worker ---- */

struct ib_client;
struct ib_upstream;

typedef struct ib_worker {
    ib_proxy_t *px;
    uint32_t id;
    pthread_t thread;
    int listen_fd;
    int wake_fd;                      /* eventfd: the main thread asks for a drain */
    struct io_uring ring;
    struct io_uring_buf_ring *br;     /* provided buffers for receives */
    char *buf_base;
    uint32_t nbufs, buf_size;
    uint64_t wake_value;
    int draining;
    uint64_t drain_deadline_ns;
    uint64_t next_request_id;
    uint32_t rr;                      /* tie breaker for replica choice */
    struct ib_client *clients;        /* every open client connection (for timeouts) */
    uint32_t nclients;
    uint32_t nupstreams;              /* upstream connections not yet freed */
    struct ib_upstream **idle;        /* per replica: idle keep-alive upstream connections */
    ib_buf_t scratch;
    ib_json_parser_t *json;           /* request bodies, parsed once */
    ib_prompt_t prompt;               /* rendered prompt, its tokens and prefix block hashes */
    struct {
        const ib_tokenizer_t *t;
        ib_tok_state_t *s;
    } toks[IB_WORKER_TOKSTATES];      /* tokenizer scratch, one per workload tokenizer seen */
    uint64_t rng;
    ib_wb_ring_t wb;                  /* write-back records (buf NULL without Redis) */
    _Alignas(64) _Atomic uint64_t qs_epoch; /* px->epoch seen at the top of the last loop turn */
    _Alignas(64) ib_worker_metrics_t m;
} ib_worker_t;

struct ib_proxy {
    ib_proxy_config_t cfg;
    ib_replica_t *replicas;           /* IB_MAX_REPLICAS slots */
    _Atomic uint32_t nslots;          /* slots ever used (loops go up to this) */
    ib_worker_t *workers;
    uint32_t nworkers;
    uint16_t port;
    uint64_t started_unix;
    _Atomic(ib_rtab_t *) rtab;        /* what the workers route by */
    _Atomic uint64_t epoch;           /* bumped after each publish; workers echo it */
    pthread_mutex_t rtab_lock;        /* writers of rtab and the registries */
    int rtab_lock_ready;
    struct {
        char id[64];
        ib_policy_t policy;
        uint32_t cache_blocks, ttl_ms;
        ib_router_t *router;
    } routers[IB_MAX_WORKLOADS + 1];  /* by workload id ("" for the static workload) */
    uint32_t nrouters;
    struct {
        char path[256];
        ib_tokenizer_t *t;
    } toks[IB_MAX_TOKENIZERS];        /* loaded once, kept until exit */
    uint32_t ntoks;
    ib_sync_t *sync;
    ib_sync_status_t sync_status;
    /* write-back (sync thread only, except the counters) */
    char instance[64];
    uint64_t wb_seq;
    char wb_last_id[48];
    uint64_t wb_last_loads_ms;
    struct ib_wb_remote {
        char instance[64];
        uint64_t at_ms;
        int64_t inflight[IB_MAX_REPLICAS], pending[IB_MAX_REPLICAS];
    } wb_remote[8];
    _Atomic uint64_t wb_sent, wb_applied, wb_batches_in, wb_dropped;
    _Atomic int stopping;
};

void *ib_worker_main(void *arg);
int ib_worker_init(ib_worker_t *w, ib_proxy_t *px, uint32_t id);
void ib_worker_destroy(ib_worker_t *w);

/** Picks the replica for a request: healthy, least in-flight, ties rotating; <avoid> (or
 * -1) is skipped when another healthy replica exists. -1 when none is usable. */
int ib_proxy_pick(ib_proxy_t *px, ib_worker_t *w, const uint64_t *cand, int avoid);
/** Passive health: a request to <r> succeeded / failed. */
void ib_replica_ok(ib_proxy_t *px, ib_replica_t *r);
void ib_replica_failed(ib_proxy_t *px, ib_replica_t *r, uint64_t now_ns);
int ib_replica_healthy(const ib_replica_t *r, uint64_t now_ns);

#endif
