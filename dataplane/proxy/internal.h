/*
 * Private to dataplane/proxy: the proxy, its workers and their metrics.
 * Public face: include/ibrain/proxy.h.
 */
#ifndef IBRAIN_PROXY_INTERNAL_H
#define IBRAIN_PROXY_INTERNAL_H

#include <liburing.h>
#include <pthread.h>
#include <string.h>

#include "ibrain/chat.h"
#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/kv_events.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/prompt.h"
#include "ibrain/proxy.h"
#include "ibrain/route.h"
#include "ibrain/sync.h"
#include "ibrain/tokenizer.h"

/* ---- metrics: one set per worker, written by it alone, summed at scrape time ---- */

enum ib_route {
    IB_ROUTE_CHAT, IB_ROUTE_COMPLETIONS, IB_ROUTE_OTHER_PROXIED, IB_ROUTE_MODELS, IB_ROUTE_HEALTH, IB_ROUTE_READY,
    IB_ROUTE_METRICS, IB_ROUTE_DEBUG_AFFINITY, IB_ROUTE_NONE, IB_ROUTE__COUNT
};
#define IB_NSTATUS 16 /* see ib_metrics_status_index() */
#define IB_NBUCKETS 16
#define IB_NMATCHED 12 /* matched prefix histogram: 0, 1, 2, 4, ... 1024 blocks */
enum ib_upstream_error {
    IB_UPERR_CONNECT, IB_UPERR_IO, IB_UPERR_TIMEOUT, IB_UPERR_MIDSTREAM, IB_UPERR_UNRESPONSIVE, IB_UPERR__COUNT
};

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
    ib_counter_t accept_errors;   /* accepts failed for want of descriptors or memory */
    ib_counter_t conns_refused;   /* closed at once: the cap was reached and no connection was idle */
    ib_counter_t conns_evicted;   /* idle keep-alive connections closed to make room at the cap */
    ib_counter_t conns_open;      /* gauge: incremented and decremented by the owner */
    ib_counter_t conns_open_dec;
    ib_counter_t upstream_conns_opened;
    ib_counter_t client_aborts;   /* clients gone before their response ended */
    ib_counter_t send_timeouts;   /* clients that accepted no byte for --send-timeout-ms */
    ib_counter_t route_reason[IB_POLICY_MAX][IB_REASON__COUNT]; /* by policy, reason */
    ib_counter_t matched_bucket[IB_NMATCHED + 1];
    ib_counter_t matched_sum;
    ib_counter_t matched_count;
    ib_counter_t prompt_blocks;   /* prefix blocks hashed, for the matched/total ratio */
    ib_counter_t prompt_tokens;   /* prompt tokens counted by the tokenizer */
    ib_counter_t context_exceeded; /* requests refused: prompt + max_tokens over the context */
    ib_counter_t busy_poll_ns;    /* time spent polling an empty ring (--busy-poll-us) */
    ib_counter_t buf_bytes;       /* gauge: w->buf_bytes, published by the owner */
    ib_counter_t shed;            /* requests refused with 503: the worker was over its buffer budget */
    ib_counter_t upstream_pauses; /* relays that stopped reading their replica: the client was behind */
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

/* ---- threads that read the replicas off the request path (probe.c, engine_load.c) ---- */

/* A replica to read: its slot and identity, copied under the table lock (the sync thread
 * may give the slot to another replica meanwhile: its epoch tells). */
typedef struct ib_replica_target {
    uint32_t slot, epoch;
    char hostport[64];
    char name[64];
} ib_replica_target_t;

/** The slots in use now, into <t> (IB_MAX_REPLICAS entries); returns how many. */
uint32_t ib_replica_targets(ib_proxy_t *px, ib_replica_target_t *t);

/* A thread that reads every replica once per period (probe.c runs it). */
typedef struct ib_replica_reader {
    const char *name;             /* the thread's name */
    uint32_t period_ms;
    void (*read_one)(ib_proxy_t *px, const ib_replica_target_t *t, ib_buf_t *body);
    ib_proxy_t *px;
    pthread_t thread;
    int running;
    _Atomic int stop;
} ib_replica_reader_t;

/** Starts <r> (its name, period, read_one and px set). 0, or -1. */
int ib_replica_reader_start(ib_replica_reader_t *r);
void ib_replica_reader_stop(ib_replica_reader_t *r);
/** Starts / stops the thread that reads the engines' own load (--engine-metrics-ms). */
int ib_engine_load_start(ib_proxy_t *px);
void ib_engine_load_stop(ib_proxy_t *px);
/** Engine-load figures of slot <r> are fresh (read within three periods). */
int ib_engine_load_fresh(const ib_proxy_t *px, const ib_replica_t *r, uint64_t now_ns);

/* ---- KV-cache events: the events thread (kvevents.c) ---- */

/* Where a replica's engine publishes its KV-cache events; written by the table's writers
 * under rtab_lock (with the slot), read by the events thread under it. */
typedef struct ib_kv_endpoint {
    char events[128];             /* ZMQ endpoint to connect a SUB to; "" for none */
    char replay[128];             /* its replay ROUTER; "" for none */
    char topic[64];               /* "" accepts any topic */
} ib_kv_endpoint_t;

/* How a replica is routed. */
enum ib_kv_mode { IB_KV_OFF, IB_KV_PRECISE, IB_KV_APPROXIMATE };
/* Why a replica with events is routed approximately. */
enum ib_kv_reason {
    IB_KVR_NONE, IB_KVR_CONNECTING, IB_KVR_HISTORY_LOST, IB_KVR_BLOCK_SIZE, IB_KVR_NO_TOKENIZER, IB_KVR_POLICY,
    IB_KVR__COUNT
};
/* Messages dropped before decoding. */
enum ib_kv_drop { IB_KVD_FRAMES, IB_KVD_TOPIC, IB_KVD_BLOCK_SIZE, IB_KVD_ORPHAN, IB_KVD_MAP_FULL, IB_KVD__COUNT };
#define IB_KV_LAG_BUCKETS 14

/* Per slot, written by the events thread only, read by /metrics. Reset when the slot's
 * subscription starts. */
typedef struct ib_kv_stats {
    _Alignas(64) _Atomic uint32_t mode;   /* enum ib_kv_mode */
    _Atomic uint32_t reason;              /* enum ib_kv_reason */
    _Atomic uint64_t batches, stored_events, removed_events, cleared_events;
    _Atomic uint64_t blocks_stored, blocks_removed, unknown_removed;
    _Atomic uint64_t gaps, replays, replay_failures, restarts, losses;
    _Atomic uint64_t decode_errors[IB_KVE__COUNT];
    _Atomic uint64_t dropped[IB_KVD__COUNT];
    _Atomic uint64_t lag_bucket[IB_KV_LAG_BUCKETS + 1];
    _Atomic uint64_t lag_sum_us, lag_count;
    _Atomic uint64_t facts;               /* blocks the table holds for it, as the engine said */
    _Atomic uint64_t next_seq;            /* the batch expected next: the last applied + 1 */
} ib_kv_stats_t;

struct ib_kv;
/** Starts the events thread. 0, or -1 (it could not start: routing stays approximate). */
int ib_kv_start(ib_proxy_t *px);
void ib_kv_stop(ib_proxy_t *px);
/** Parses --kv-events NAME=ENDPOINT[,REPLAY[,TOPIC]] into <ep> and the name. 0 or -1. */
int ib_kv_parse_spec(const char *spec, char *name, size_t namelen, ib_kv_endpoint_t *ep);
/** The per-replica KV event metrics. 0, or -1 when out of memory. */
int ib_kv_render_metrics(const ib_proxy_t *px, ib_buf_t *b);
const char *ib_kv_mode_name(uint32_t mode);
const char *ib_kv_reason_name(uint32_t reason);

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
static inline void ib_mask_clear(uint64_t *m, uint32_t slot) { m[slot >> 6] &= ~(1ull << (slot & 63)); }

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
#define IB_WB_MAX_REMOTE_LOAD (1ll << 30) /* another instance's in-flight or pending figure, clamped */
IB_STATIC_ASSERT(IB_MAX_REPLICAS <= 256 && IB_MAX_WORKLOADS <= 256, "a record header holds slot and workload in 8 bits each");
IB_STATIC_ASSERT(IB_WB_MAX_BLOCKS <= 0xffff, "a record header holds n in 16 bits");

struct ib_worker;
/** Worker side: records that <slot> of workload <wl> now holds <h>[0..n). */
void ib_writeback_push(struct ib_worker *w, uint64_t version, uint32_t wl, uint32_t slot, const uint64_t *h, size_t n);
/**
 * Sync thread side: drains every worker's ring into one packed SyncBatch (records of an
 * older table dropped), with this instance's load per replica every 500 ms. <*out>
 * (free() it) is NULL when there is nothing to send. Returns the affinity updates in it,
 * or -1 when out of memory.
 */
int ib_writeback_build(ib_proxy_t *px, const ib_rtab_t *rt, uint64_t now_ms, uint8_t **out, size_t *len);
/** Applies another instance's packed batch to <rt>'s affinity tables and the remote load
 * figures. Returns the updates applied, or -1 when it does not decode. */
int ib_writeback_apply(ib_proxy_t *px, const ib_rtab_t *rt, const void *payload, size_t len);
/** Sync thread side, every tick: send this instance's batch, apply the others'. */
void ib_writeback_tick(void *px, ib_sync_t *s);

/* ---- connections (worker.c, upstream.c) ---- */

enum ib_op {
    IB_OP_ACCEPT = 1, IB_OP_CRECV, IB_OP_CSEND, IB_OP_UCONN, IB_OP_USEND, IB_OP_URECV, IB_OP_TICK, IB_OP_WAKE,
    IB_OP_ACCEPT_ADMIN, IB_OP_CNOP, IB_OP_UCANCEL
};
#define IB_OP_MASK 15u
#define IB_BGID 1                        /* the provided-buffer group of receives */
#define IB_OUT_HIGH_WATER (1u << 20)     /* stop reading the upstream above this much unsent */
#define IB_MULTISHOT_MAX_PENDING (64u << 10) /* above this much unsent, single-shot upstream receives */
#define IB_IN_MAX_PIPELINED (1u << 20)
#define IB_RESP_MAX_HEAD 65536u          /* a replica's response head, interim heads included */
#define IB_MAX_ATTEMPTS 3                /* replicas a request is sent to before the first byte, at most */
#define IB_MAX_OVER_CAP 1024u            /* connections per worker held past the cap to be told 503 */
#define IB_OVER_CAP_TIMEOUT_MS 1000u     /* how long such a connection has to send its request */

/* A client connection's state: reading a head, reading a body, waiting on a replica
 * (request sent, response being relayed), or closed (freed when its last op returns). */
enum ib_cstate { IB_C_HEAD, IB_C_BODY, IB_C_UPSTREAM, IB_C_CLOSED };
/* An upstream connection's state: connecting, idle in its replica's pool, or carrying
 * one exchange. */
enum ib_ustate { IB_U_CONNECTING, IB_U_IDLE, IB_U_BUSY };

typedef struct ib_upstream {
    _Alignas(16) int fd;
    uint32_t ops;                 /* operations in flight */
    int replica;
    enum ib_ustate state;
    int closing;
    int reused;                   /* taken from the pool (not freshly connected) */
    int recv_armed;               /* its multishot receive runs (until a completion without MORE) */
    int recv_cancelling;          /* ... and is being cancelled (back-pressure, ib_upstream_pause_recv) */
    int recv_multishot;           /* the armed receive is multishot */
    struct ib_client *client;     /* the exchange it carries (IB_U_BUSY, IB_U_CONNECTING) */
    size_t send_off;
    uint64_t deadline_ns;
    uint64_t last_rx_ns;          /* when it last sent us a byte (or was given its request) */
    struct ib_upstream *next_idle;
    uint32_t epoch;               /* the replica slot's epoch when connected */
} ib_upstream_t;

typedef struct ib_client {
    _Alignas(16) int fd;
    uint32_t ops;                 /* operations in flight */
    enum ib_cstate state;
    int closing;
    int recv_armed;
    int keepalive;
    int admin;                    /* came through the admin listener: local routes only */
    int over_cap;                 /* accepted past the cap: its request is read and told 503 */
    uint32_t answered;            /* exchanges it has had: only a kept-alive connection is idle */
    int minor;
    int is_get;
    int close_after_send;
    ib_buf_t in;
    ib_buf_t out[2];              /* [out_cur] fills while [!out_cur] is being sent */
    int out_cur;
    int sending;
    size_t send_off;
    uint64_t send_progress;       /* sends begun + completions: moves while the client takes bytes */
    uint64_t send_seen;           /* send_progress as the tick last saw it ... */
    uint64_t send_since_ns;       /* ... and since when (the send deadline, timed by the tick) */
    uint64_t deadline_ns;         /* header / body / idle deadline */
    int head_started;             /* part of a request head is in c->in: its deadline is set */
    struct ib_client *prev, *next;
    /* the exchange in progress */
    enum ib_route route;
    uint64_t t_start, t_first;
    int64_t body_need;            /* Content-Length still to read, -1 when chunked */
    struct phr_chunked_decoder body_dec;
    ib_buf_t method_path;         /* "METHOD PATH" */
    ib_buf_t fwd_headers;         /* headers to forward, "Name: value\r\n"... */
    ib_buf_t body;
    ib_buf_t upreq;               /* the assembled upstream request */
    char request_id[48];
    int replica, attempts, inflight_counted;
    ib_upstream_t *up;
    int upstream_blocked;         /* upstream receive paused for back-pressure */
    int up_single;                /* this exchange's upstream receives are single-shot: its client fell behind */
    size_t mem;                   /* its buffers' capacity, as last counted in its worker's buf_bytes */
    int debug;                    /* X-IB-Debug: 1 -> X-IB-Route in the response */
    uint64_t session_key;         /* hash of X-Session-Id, 0 when none */
    ib_route_reason_t route_reason;
    uint32_t route_matched, route_blocks;
    int routed;                   /* the router chose the replica (vs. least-load) */
    ib_policy_t route_policy;
    uint64_t cand[2];             /* slots a retry may go to: the workload's ready replicas */
    uint64_t tried[2];            /* slots this request was sent to: a retry goes elsewhere */
    int64_t pending_blocks;       /* prefill work counted on c->replica until the first byte */
    /* response */
    ib_buf_t resp_head;           /* upstream head being accumulated */
    int head_sent, status, sse, client_chunked, up_keepalive;
    int said_close;  /* our response head said Connection: close (else the client may reuse) */
    ib_http_body_t resp_body;     /* where the replica's body ends */
} ib_client_t;

/* ---- worker ---- */

/* Adaptive busy polling (wait_completions in worker.c). A worker polls its empty ring
 * only while polling pays:
 *  - its last IB_POLL_CLOSED_LOOP + 1 requests came on one client connection: a closed
 *    loop, whose next event (the replica's answer, then the client's next request)
 *    follows the last at once. With requests from many connections, arrivals are
 *    independent and sleeping costs less: at a fixed 20,000 requests/s from 64
 *    connections even a 5 us window cost 2.5 us of CPU per request over sleeping, for no
 *    latency gained (docs/performance.md);
 *  - its recent waits for a completion averaged under one poll window (a closed
 *    request/response rhythm: one connection, or a busy worker). A rhythm with long gaps
 *    (a fixed moderate rate; streams whose chunks come every few ms) puts it to sleep at
 *    once, as --busy-poll-us 0 would. The average moves by 1/8 of each wait, a wait
 *    counted as at most 8 windows so that one long idle spell does not stop polling for
 *    long once short waits come back (16 waits);
 *  - its last poll found work: a poll that ran out its window empty is followed by 1, then
 *    2, 4 ... up to IB_POLL_MAX_BACKOFF waits slept through without polling (Poisson
 *    arrivals at a moderate rate leave many gaps longer than the window: each costs a
 *    whole window of CPU and then the sleep anyway); a poll that finds work ends it;
 *  - it has relayed no streamed response chunk for IB_POLL_STREAM_QUIET_NS: a stream's
 *    next chunk comes when its engine's decode step ends (about a millisecond), and polling
 *    for it would burn the window before every sleep. While streams flow, the worker
 *    sleeps between completions, those of other exchanges too (requests coming in, the
 *    heads of new streams): before, it polled after each batch that held one, which cost
 *    some 10 us per 16-token stream.
 * And a poll lasts only about as long as the waits polling has been catching (the way
 * glibc's adaptive mutexes spin): twice their recent average plus IB_POLL_MARGIN_NS, at
 * most --busy-poll-us. One connection's closed loop (waits of 8 to 30 us here) keeps a
 * window that catches them; a fixed rate whose requests come in bursts (polls that find
 * work at once, then a gap of a millisecond) pays a few microseconds at each burst's end
 * instead of a whole window. A poll that runs out its window moves the average toward the
 * window, so that waits which grew longer (a slower replica) are caught again.
 */
#define IB_POLL_MARGIN_NS 5000u
#define IB_POLL_CLOSED_LOOP 4u
#define IB_POLL_STREAM_QUIET_NS 2000000u
#define IB_POLL_MAX_BACKOFF 64u
typedef struct ib_poll {
    uint64_t avg_ns;  /* recent waits for a completion */
    uint64_t spin_ns; /* recent polls' durations (the window: twice this + the margin) */
    uint32_t skip;    /* waits still to sleep through without polling */
    uint32_t backoff; /* the skip after the next empty poll: 0, 1, 2, 4 ... */
    uint64_t stream_ns; /* when it last relayed a streamed response's chunk */
    const void *last_client; /* the connection of the last request (compared, never followed) */
    uint32_t same_client;    /* requests in a row from it, after the first */
} ib_poll_t;

/* A request came on connection <client>. */
static inline void ib_poll_request(ib_poll_t *p, const void *client)
{
    p->same_client = client == p->last_client ? p->same_client + (p->same_client < IB_POLL_CLOSED_LOOP) : 0;
    p->last_client = client;
}
static inline int ib_poll_wanted(ib_poll_t *p, uint64_t window_ns, uint64_t now_ns)
{
    if (p->same_client < IB_POLL_CLOSED_LOOP)
        return 0;
    if (now_ns - p->stream_ns < IB_POLL_STREAM_QUIET_NS)
        return 0;
    if (p->skip > 0) {
        p->skip--;
        return 0;
    }
    return p->avg_ns < window_ns;
}
static inline void ib_poll_note(ib_poll_t *p, uint64_t wait_ns, uint64_t window_ns)
{
    uint64_t w = wait_ns < 8 * window_ns ? wait_ns : 8 * window_ns;
    p->avg_ns = p->avg_ns - p->avg_ns / 8 + w / 8;
}
/* How long the next poll may last: at most max_ns (--busy-poll-us). */
static inline uint64_t ib_poll_window(const ib_poll_t *p, uint64_t max_ns)
{
    uint64_t w = 2 * p->spin_ns + IB_POLL_MARGIN_NS;
    return w < max_ns ? w : max_ns;
}
/* The result of a poll that lasted polled_ns: it found work (1) or ran out its window (0). */
static inline void ib_poll_result(ib_poll_t *p, int found, uint64_t polled_ns)
{
    p->spin_ns = p->spin_ns - p->spin_ns / 8 + polled_ns / 8;
    if (found) {
        p->backoff = 0;
        return;
    }
    p->backoff = p->backoff == 0 ? 1 : p->backoff < IB_POLL_MAX_BACKOFF ? 2 * p->backoff : IB_POLL_MAX_BACKOFF;
    p->skip = p->backoff;
}

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
    uint64_t drain_idle_close_ns; /* idle keep-alive connections are closed from then (0: done) */
    uint64_t next_request_id;
    int accept_paused;                /* accepts wait for accept_resume_ns (out of descriptors) */
    int admin_paused;                 /* and so does the admin listener's */
    uint32_t accept_backoff_ms;       /* 0 while accepts succeed */
    uint64_t accept_resume_ns;
    struct ib_client *clients;        /* every open client connection (for timeouts), newest first */
    struct ib_client *clients_tail;   /* the oldest */
    int admin_fd;                     /* worker 0: the admin listener (-1: none) */
    ib_poll_t poll;                   /* adaptive busy polling's state */
    uint32_t nclients;
    uint32_t nadmin;                  /* of which came through the admin listener */
    uint32_t nover_cap;               /* of which were accepted past the cap, to be told 503 */
    uint32_t nupstreams;              /* upstream connections not yet freed */
    uint64_t buf_bytes;               /* what its clients' buffers hold (ib_client_account) */
    uint64_t buf_budget;              /* its share of --max-buffer-mb (UINT64_MAX: none) */
    struct ib_upstream **idle;        /* per replica: idle keep-alive upstream connections */
    ib_buf_t scratch;
    ib_json_parser_t *json;           /* request bodies, parsed once */
    ib_prompt_t prompt;               /* rendered prompt, its tokens and prefix block hashes */
    struct {
        const ib_tokenizer_t *t;
        ib_tok_state_t *s;
    } toks[IB_WORKER_TOKSTATES];      /* tokenizer scratch, one per workload tokenizer seen */
    uint64_t rng;                     /* per-worker random stream: routing, tie breaks */
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
        uint64_t serial;              /* unique per router made: a freed one's address may come back */
    } routers[IB_MAX_WORKLOADS + 1];  /* by workload id ("" for the static workload) */
    uint32_t nrouters;
    uint64_t router_serials;          /* routers made so far */
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
    int upstream_multishot;           /* upstream receives are multishot (--upstream-recv, upstream.c) */
    /* active health (probe.c) */
    ib_replica_reader_t prober;
    /* the engines' own load (engine_load.c) */
    ib_replica_reader_t engine_load;
    /* KV-cache events (kvevents.c) */
    ib_kv_endpoint_t *kv_ep;          /* IB_MAX_REPLICAS: where each slot's engine publishes */
    ib_kv_stats_t *kv_stats;          /* IB_MAX_REPLICAS: what the events thread reports */
    struct ib_kv *kv;                 /* the events thread, or NULL */
};

/* ---- the event loop and connections (worker.c) ---- */

void *ib_worker_main(void *arg);
int ib_worker_init(ib_worker_t *w, ib_proxy_t *px, uint32_t id);
void ib_worker_destroy(ib_worker_t *w);

/** A submission queue entry, submitting what is queued when the ring is full. */
static inline struct io_uring_sqe *ib_get_sqe(ib_worker_t *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    while (sqe == NULL) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    return sqe;
}

/** Operations carry their object and kind in user_data: (pointer | op), objects being
 * 16-byte aligned. */
static inline void ib_set_data(struct io_uring_sqe *sqe, void *obj, enum ib_op op)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)obj | op);
}

static inline uint64_t ib_deadline(uint32_t ms) { return ib_now_ns() + (uint64_t)ms * 1000000ull; }

/** Closes a client connection: its exchange is abandoned (counted), its socket shut down;
 * it is freed when its last operation completes. */
void ib_client_close(ib_worker_t *w, ib_client_t *c);

/* ---- the buffer budget (worker.c): what client connections hold, per worker ---- */

/** Counts <c>'s buffers again in w->buf_bytes, after they may have grown or been freed. */
void ib_client_account(ib_worker_t *w, ib_client_t *c);
/** The worker holds more than its share of --max-buffer-mb: new proxied requests get 503. */
static inline int ib_over_budget(const ib_worker_t *w) { return w->buf_bytes > w->buf_budget; }
/** How much a client's unsent output may reach before its replica's relay pauses: 1 MiB,
 * 64 KiB while the worker is over its budget. */
static inline size_t ib_out_high_water(const ib_worker_t *w)
{
    return ib_over_budget(w) ? IB_OUT_HIGH_WATER / 16 : IB_OUT_HIGH_WATER;
}

/* ---- what a worker writes to clients (respond.c) ---- */

/** Head building on the request path, without printf: a string, a literal, a number. */
static inline void ib_append_str(ib_buf_t *b, const char *s) { ib_buf_append(b, s, strlen(s)); }
#define IB_APPEND_LIT(b, lit) ib_buf_append((b), (lit), sizeof(lit) - 1)
/** Writes <v> in base 10 or 16 at <dst> (at most 20 bytes, no NUL); returns the length. */
static inline size_t ib_format_uint(char *dst, uint64_t v, unsigned base)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v != 0);
    memcpy(dst, tmp + i, sizeof(tmp) - i);
    return sizeof(tmp) - i;
}

static inline void ib_append_uint(ib_buf_t *b, uint64_t v, unsigned base)
{
    char tmp[24];
    ib_buf_append(b, tmp, ib_format_uint(tmp, v, base));
}

/** Appends to the client's filling output buffer (bounded by the back-pressure: what a
 * relay appends beyond IB_OUT_HIGH_WATER is one receive; out of memory aborts). */
void ib_out_append(ib_client_t *c, const void *p, size_t n);
/** Body bytes for the client, as one chunk when its response is chunked. */
void ib_out_chunk(ib_client_t *c, const char *p, size_t n);
/** Bytes queued for the client and not yet sent. */
size_t ib_out_pending(const ib_client_t *c);
/** Sends what is queued (one send in flight at a time); closes after it when asked. */
void ib_client_flush(ib_worker_t *w, ib_client_t *c);
/** Counts the exchange in the request metrics with <status>. */
void ib_count_request(ib_worker_t *w, ib_client_t *c, int status);
/** Queues a complete local response and ends the exchange. */
void ib_respond(ib_worker_t *w, ib_client_t *c, int status, const char *ctype, const char *body, size_t len,
                const char *extra_headers);
/** An OpenAI-style JSON error response (<param>, <code> and <extra_headers> may be NULL). */
void ib_respond_error(ib_worker_t *w, ib_client_t *c, int status, const char *msg, const char *type,
                      const char *param, const char *code, const char *extra_headers);

/* ---- reading a client's request (request.c) ---- */

/** Parses what the client sent (heads, bodies, pipelined requests) and acts on each
 * complete request. */
void ib_request_input(ib_worker_t *w, ib_client_t *c);
/** Refuses the request in progress with <status> (400, 408, 413, 417, 431, 500, 501,
 * 503 over the buffer budget, 505; anything else is a 400) and closes after the answer. */
void ib_request_refuse(ib_worker_t *w, ib_client_t *c, int status);
/** The route a request path names. */
enum ib_route ib_route_of(ib_span_t path);

/* ---- routing a chat or completion request (routing.c) ---- */

/** Why a request cannot be routed: the answer it gets. */
typedef struct ib_routing_error {
    int status;
    const char *type, *param, *code, *extra_headers; /* static strings, or param_buf */
    char param_buf[64];
    char message[320];
} ib_routing_error_t;

/**
 * Understands c->body as an OpenAI request of c->route and picks its replica: parses it,
 * finds its workload, renders, tokenizes and hashes the prompt, checks the context length,
 * asks the workload's router and records the choice (c->routed, c->route_*, c->cand,
 * write-back). Returns the replica slot, -1 when no replica is usable (the caller falls
 * back to least load), or -2 with <err> filled when the request is refused.
 */
int ib_routing_plan(ib_worker_t *w, ib_client_t *c, ib_routing_error_t *err);
/** ib_routing_plan, then the request is dispatched or refused. */
void ib_routing_request(ib_worker_t *w, ib_client_t *c);

/* ---- local endpoints: /health, /ready, /metrics, /v1/models (local.c) ---- */

typedef struct ib_local_resp {
    int status;
    const char *ctype;
    const char *extra_headers;    /* NULL or "Name: value" */
} ib_local_resp_t;

/** Renders the answer of local route <route> to a GET (or another method) into <body>.
 * 0, or -1 when out of memory. */
int ib_local_render(ib_worker_t *w, enum ib_route route, int is_get, ib_buf_t *body, ib_local_resp_t *out);
/** Answers a request to a local route. */
void ib_local_respond(ib_worker_t *w, ib_client_t *c);

/* ---- upstream connections and their pools (upstream.c) ---- */

/** An idle pooled connection to <replica> (stale ones are closed on the way), or NULL. */
ib_upstream_t *ib_upstream_take(ib_worker_t *w, int replica);
/** A new connection to <replica>, connecting; NULL when no socket could be made. */
ib_upstream_t *ib_upstream_connect(ib_worker_t *w, int replica);
/** Back into its replica's pool, with a receive armed to notice a close while idle. */
void ib_upstream_pool_put(ib_worker_t *w, ib_upstream_t *u);
/** Sends the rest of its client's upstream request. */
void ib_upstream_send(ib_worker_t *w, ib_upstream_t *u);
/** --upstream-recv: auto (NULL or "auto": multishot from Linux 6.8), multishot or single;
 * *multishot set; -1 for anything else. */
int ib_upstream_recv_mode(const char *mode, int *multishot);
/** Arms its receive (multishot, or single-shot: --upstream-recv), when not armed already. */
void ib_upstream_arm_recv(ib_worker_t *w, ib_upstream_t *u);
/** Stops its receive (a client behind by more than the high water mark): cancels it. */
void ib_upstream_pause_recv(ib_worker_t *w, ib_upstream_t *u);
/** Closes it: freed now when nothing is in flight, else when its last op returns. */
void ib_upstream_close(ib_worker_t *w, ib_upstream_t *u);
void ib_upstream_free(ib_worker_t *w, ib_upstream_t *u);
/** Closes idle pooled connections past their deadline (every tick), or all (drain). */
void ib_upstream_close_idle(ib_worker_t *w, uint64_t now, int all);

/* ---- one request's exchange with a replica (exchange.c) ---- */

/** Sends the request to <replica>, or to the least-loaded usable one (other than the
 * last tried) when <replica> is -1; answers 503 when there is none. */
void ib_exchange_dispatch(ib_worker_t *w, ib_client_t *c, int replica);
/** Forgets the previous exchange of a keep-alive connection. */
void ib_exchange_reset(ib_client_t *c);
/** The exchange was answered by ibrain itself (an error, a local route): its large buffers
 * (a body, its upstream copy) are given back now rather than at the next request. */
void ib_exchange_trim(ib_client_t *c);
/** The client left: its in-flight accounting is released and its upstream closed. */
void ib_exchange_abandon(ib_worker_t *w, ib_client_t *c);
/** The replica failed (or timed out): retry before the first byte, else end cleanly. */
void ib_exchange_failed(ib_worker_t *w, ib_client_t *c, enum ib_upstream_error kind, int timeout);
/** Completions of an upstream connection's operations. */
void ib_exchange_on_connect(ib_worker_t *w, ib_upstream_t *u, int res);
void ib_exchange_on_send(ib_worker_t *w, ib_upstream_t *u, int res);
void ib_exchange_on_recv(ib_worker_t *w, ib_upstream_t *u, int res, int more, char *data);

/* ---- routing helpers (proxy.c) ---- */

/** Picks the replica for a request: healthy, least in-flight, ties at random; the slots in
 * <avoid> (NULL: none) are skipped when another healthy replica exists. -1 when none is
 * usable. */
int ib_proxy_pick(ib_proxy_t *px, ib_worker_t *w, const uint64_t *cand, const uint64_t *avoid);
/** Active health: starts the prober thread (none with probe_ms 0); stops and joins it. */
int ib_probe_start(ib_proxy_t *px);
void ib_probe_stop(ib_proxy_t *px);
/** Passive health: a request to <r> succeeded / failed. */
void ib_replica_ok(ib_proxy_t *px, ib_replica_t *r);
void ib_replica_failed(ib_proxy_t *px, ib_replica_t *r, uint64_t now_ns);
int ib_replica_healthy(const ib_replica_t *r, uint64_t now_ns);

#endif
