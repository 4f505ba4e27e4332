/*
 * ibrain's data plane: a thread-per-core io_uring HTTP/1.1 reverse proxy for OpenAI-style
 * inference traffic.
 *
 * Each worker thread owns an io_uring (single issuer, deferred task run), its own
 * SO_REUSEPORT listener with multishot accept, multishot client receives into a provided
 * buffer ring, and its own keep-alive pools of upstream connections. Workers share only
 * the replica table below: per-replica in-flight counters (one cache line per worker,
 * written only by that worker, summed on read) and passive-health state (atomics).
 */
#ifndef IBRAIN_PROXY_H
#define IBRAIN_PROXY_H

#include <netinet/in.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ibrain/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

#define IB_MAX_WORKERS 32
#define IB_MAX_MODELS 16

/** A counter written by one thread and read by others: relaxed loads and stores only, so
 * an increment is a plain add (no lock prefix) and readers see a recent value. */
typedef struct ib_counter {
    _Atomic uint64_t v;
} ib_counter_t;

static inline void ib_counter_add(ib_counter_t *c, uint64_t n)
{
    atomic_store_explicit(&c->v, atomic_load_explicit(&c->v, memory_order_relaxed) + n, memory_order_relaxed);
}
static inline uint64_t ib_counter_get(const ib_counter_t *c)
{
    return atomic_load_explicit(&((ib_counter_t *)c)->v, memory_order_relaxed);
}

/** One worker's in-flight count for a replica, alone on its cache line. */
typedef struct ib_inflight_slot {
    _Alignas(64) _Atomic int64_t v;
} ib_inflight_slot_t;

typedef struct ib_replica {
    _Atomic int in_use;           /* named by the routing table (or still draining requests) */
    _Atomic uint32_t epoch;       /* bumped each time the slot gets a new replica */
    char name[64];
    char hostport[64];
    struct sockaddr_in addr;
    ib_inflight_slot_t inflight[IB_MAX_WORKERS];
    ib_inflight_slot_t pending[IB_MAX_WORKERS]; /* prompt blocks awaiting their first byte */
    /* what other ibrain instances report about this replica (write-back), summed */
    _Alignas(64) _Atomic int64_t remote_inflight;
    _Atomic int64_t remote_pending;
    /* passive health, shared by all workers */
    _Alignas(64) _Atomic uint32_t consecutive_failures;
    _Atomic uint64_t ejected_until_ns;
    _Atomic uint64_t ejections;
    /* active health (probe.c): written by the prober, read by anyone */
    _Atomic int unresponsive;     /* failed eject_after_failures probes in a row: no new request */
    _Atomic int hung;             /* and those got no answer in time: its exchanges are ended */
    _Atomic uint32_t probe_failures, probe_timeouts;
    /* its engine's own load, from its /metrics (engine_load.c): written by that thread */
    _Alignas(64) _Atomic int64_t engine_running, engine_waiting;
    _Atomic uint32_t engine_kv_permille;
    _Atomic uint64_t engine_scraped_ns;   /* when last read; 0: never, or not readable now */
    _Atomic uint64_t engine_scrape_errors;
} ib_replica_t;

typedef struct ib_proxy_config {
    const char *listen;             /* "HOST:PORT"; port 0 picks a free port */
    const char *port_file;
    uint32_t workers;
    const char *replica_specs[IB_MAX_REPLICAS]; /* "NAME=HOST:PORT" */
    uint32_t nreplicas;
    const char *models[IB_MAX_MODELS];          /* served by GET /v1/models */
    uint32_t nmodels;
    size_t max_head_bytes;
    size_t max_body_bytes;
    uint32_t header_timeout_ms;     /* a request head must arrive within this (408) */
    uint32_t idle_timeout_ms;       /* keep-alive connections idle this long are closed */
    uint32_t upstream_timeout_ms;   /* no response byte from a replica for this long (504) */
    uint32_t connect_timeout_ms;
    uint32_t drain_timeout_ms;      /* SIGTERM: finish in-flight requests for at most this */
    uint32_t send_timeout_ms;       /* a client that accepts no byte of its answer this long is closed */
    uint32_t drain_idle_ms;         /* SIGTERM: keep-alive connections stay open this long; a request on
                                     * one is served, answered with Connection: close (default 1000) */
    uint32_t eject_after_failures;  /* consecutive failures before a replica is ejected */
    uint32_t eject_ms;              /* base ejection time; doubles per ejection, max 32x */
    uint32_t probe_ms;              /* GET /health of every replica this often, with this timeout (0: off) */
    uint32_t engine_metrics_ms;     /* GET /metrics of every replica this often: its engine's own load (0: off) */
    uint32_t max_conns_per_worker;  /* at the cap, the longest-idle keep-alive connection makes room */
    uint64_t max_buffer_bytes;      /* what client connections may hold in buffers, all workers together:
                                     * above it new proxied requests get 503 and relays slow down
                                     * (UINT64_MAX: no bound; 0, the default: ib_default_buffer_budget) */
    const char *admin_listen;       /* "HOST:PORT" of the admin listener (/health /ready /metrics /v1/models,
                                     * not counted against the cap), or NULL */
    const char *admin_port_file;
    int abort_on_client_close;      /* EOF from a client abandons its proxied request (default: answer it) */
    uint32_t busy_poll_us;          /* a worker with nothing to do polls its ring this long before sleeping
                                     * (0: sleeps at once); see docs/operations.md, Latency */
    const char *upstream_recv;      /* auto (NULL) | multishot | single: upstream receives (docs/operations.md) */
    /* routing (the workload in standalone mode) */
    const char *policy;             /* affinity | least-load | round-robin | consistent-hash */
    const char *chat_template;      /* chatml (qwen3) | llama3 | plain: as the engines render */
    uint32_t block_bytes;           /* prefix block size in bytes (no tokenizer): the engine's block_size x 4 */
    const char *tokenizer;          /* tokenizer.json: blocks of block_tokens tokens, token counts */
    uint32_t block_tokens;          /* prefix block size in tokens (with a tokenizer): the engine's block_size */
    uint32_t context_length;        /* with a tokenizer: prompt + max_tokens above this is a 400 (0: no check) */
    uint32_t cache_blocks;          /* each replica's prefix cache capacity, in blocks */
    uint32_t cache_ttl_ms;          /* the engines' cache TTL (0: none) */
    uint32_t affinity_sets_log2;    /* affinity table: 2^N sets of 8 slots */
    uint32_t min_match_pct;         /* affinity: matches shorter than this % of the prompt do not count */
    /* Redis snapshot sync (off when neither redis nor sentinels are given) */
    const char *redis;              /* IPV4:PORT */
    const char *redis_sentinels[8]; /* IPV4:PORT each */
    uint32_t nredis_sentinels;
    const char *redis_master;       /* sentinel master name */
    uint32_t redis_reread_ms;       /* safety-net re-read period */
    const char *instance_id;        /* this ibrain's name in write-back batches (default host-pid-random) */
    int no_writeback;               /* do not share affinity and load with other instances */
    /* KV-cache events of --replica replicas ("NAME=ENDPOINT[,REPLAY[,TOPIC]]"); snapshot
     * replicas name theirs in the snapshot */
    const char *kv_specs[IB_MAX_REPLICAS];
    uint32_t nkv;
} ib_proxy_config_t;

typedef struct ib_proxy ib_proxy_t; /* opaque: replicas, workers, shared state */

/* ---- functions ---- */

void ib_proxy_config_defaults(ib_proxy_config_t *cfg);

/** Validates <cfg>, binds the listeners. NULL with a message on stderr on failure. */
ib_proxy_t *ib_proxy_create(const ib_proxy_config_t *cfg);
/** The default of max_buffer_bytes: half of what the memory limit of this process's cgroup
 * leaves once the receive buffers of <workers>, one affinity table of 2^<sets_log2> sets
 * and 16 MiB are set aside (an eighth of the limit at least), or UINT64_MAX without a
 * limit. */
uint64_t ib_default_buffer_budget(uint32_t workers, uint32_t affinity_sets_log2);

/** Runs the workers until SIGTERM/SIGINT, then drains. Returns the exit code. */
int ib_proxy_run(ib_proxy_t *px);

void ib_proxy_destroy(ib_proxy_t *px);

/** Sum of every worker's in-flight count for <r>. */
int64_t ib_replica_inflight(const ib_replica_t *r, uint32_t nworkers);

/** Sum of every worker's queued prefill work for <r>, in prompt blocks. */
int64_t ib_replica_pending(const ib_replica_t *r, uint32_t nworkers);

#ifdef __cplusplus
}
#endif
#endif
