/*
 * One ibrain worker: an io_uring event loop owning its listener, its client connections
 * and its upstream keep-alive pools (include/ibrain/proxy.h, internal.h).
 *
 * Operations carry their object and kind in user_data: (pointer | OP_x), objects being
 * 16-byte aligned. Every object counts its in-flight operations; closing an object shuts
 * its socket down (which ends its receives) and the object is freed when the last
 * operation has completed, never earlier.
 *
 * A request's life: the head is parsed (picohttpparser, http1.c), the body read (Content-
 * Length or chunked), the upstream request assembled once (kept for a retry), a replica
 * picked (least in-flight), a pooled connection taken or one connected, the request sent,
 * and the response relayed as it arrives: Content-Length bodies as they are, chunked and
 * close-delimited bodies re-chunked by us, so that we always stand at a chunk boundary and
 * can end a broken SSE stream with an error event.
 */
#include "internal.h"

#include "ibrain/clock.h"
#include "ibrain/hashchain.h"
#include "ibrain/http1.h"
#include "ibrain/oai_error.h"
#include "ibrain/picohttp.h"

#include <xxh_x86dispatch.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

enum { OP_ACCEPT = 1, OP_CRECV, OP_CSEND, OP_UCONN, OP_USEND, OP_URECV, OP_TICK, OP_WAKE };
#define OP_MASK 15u
#define BGID 1
#define TICK_MS 100
#define OUT_HIGH_WATER (1u << 20) /* stop reading the upstream above this much unsent */
#define IN_MAX_PIPELINED (1u << 20)

enum cstate { C_HEAD, C_BODY, C_UPSTREAM, C_CLOSED };
enum ustate { U_CONNECTING, U_IDLE, U_BUSY };

typedef struct ib_upstream {
    _Alignas(16) int fd;
    uint32_t ops;
    int replica;
    enum ustate state;
    int closing;
    int reused;                   /* taken from the pool (not freshly connected) */
    int recv_armed;
    struct ib_client *client;
    size_t send_off;
    uint64_t deadline_ns;
    struct ib_upstream *next_idle;
    uint32_t epoch;               /* the replica slot's epoch when connected */
} ib_upstream_t;

typedef struct ib_client {
    _Alignas(16) int fd;
    uint32_t ops;
    enum cstate state;
    int closing;
    int recv_armed;
    int keepalive;
    int minor;
    int is_get;
    int close_after_send;
    ib_buf_t in;
    ib_buf_t out[2];              /* [out_cur] fills while [!out_cur] is being sent */
    int out_cur;
    int sending;
    size_t send_off;
    uint64_t deadline_ns;         /* header / body / idle deadline */
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
    int debug;                    /* X-IB-Debug: 1 -> X-IB-Route in the response */
    uint64_t session_key;         /* hash of X-Session-Id, 0 when none */
    ib_route_reason_t route_reason;
    uint32_t route_matched, route_blocks;
    int routed;                   /* the router chose the replica (vs. least-load) */
    ib_policy_t route_policy;
    uint64_t cand[2];             /* slots a retry may go to: the workload's ready replicas */
    int64_t pending_blocks;       /* prefill work counted on c->replica until the first byte */
    /* response */
    ib_buf_t resp_head;           /* upstream head being accumulated */
    int head_sent, status, up_chunked, until_close, sse, client_chunked, up_keepalive;
    int64_t resp_remaining;
    struct phr_chunked_decoder resp_dec;
} ib_client_t;

_Static_assert(sizeof(((ib_client_t *)0)->request_id) >= 31, "make_request_id writes up to 31 bytes");
_Static_assert(_Alignof(ib_client_t) >= 16 && _Alignof(ib_upstream_t) >= 16, "user_data packs the op in 4 bits");

static void client_close(ib_worker_t *w, ib_client_t *c);
static void upstream_close(ib_worker_t *w, ib_upstream_t *u);
static void process_input(ib_worker_t *w, ib_client_t *c);
static void dispatch(ib_worker_t *w, ib_client_t *c, int replica);
static void flush_client(ib_worker_t *w, ib_client_t *c);

/* ---- ring helpers ---- */

static struct io_uring_sqe *get_sqe(ib_worker_t *w)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&w->ring);
    while (sqe == NULL) {
        io_uring_submit(&w->ring);
        sqe = io_uring_get_sqe(&w->ring);
    }
    return sqe;
}

static void set_data(struct io_uring_sqe *sqe, void *obj, unsigned op)
{
    io_uring_sqe_set_data64(sqe, (uint64_t)(uintptr_t)obj | op);
}

static void recycle_buffer(ib_worker_t *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, w->buf_base + (size_t)bid * w->buf_size, w->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(w->nbufs), 0);
    io_uring_buf_ring_advance(w->br, 1);
}

static void arm_client_recv(ib_worker_t *w, ib_client_t *c)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    set_data(sqe, c, OP_CRECV);
    c->ops++;
    c->recv_armed = 1;
}

/* Upstream receives are single-shot: re-armed only while the client keeps up, which is
 * the back-pressure from a slow client to the replica. POLL_FIRST: the receive is
 * mostly armed right after the request was sent, when no answer can be there yet, so
 * the kernel waits for readiness instead of trying a receive that would fail first. */
static void arm_upstream_recv(ib_worker_t *w, ib_upstream_t *u)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_recv(sqe, u->fd, NULL, 0, 0);
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    set_data(sqe, u, OP_URECV);
    u->ops++;
    u->recv_armed = 1;
}

/* ---- metrics helpers ---- */

static void count_request(ib_worker_t *w, ib_client_t *c, int status)
{
    ib_counter_add(&w->m.requests[c->route][ib_metrics_status_index(status)], 1);
    ib_metrics_observe(w->m.duration_bucket, &w->m.duration_sum_us, &w->m.duration_count, ib_now_ns() - c->t_start);
}

/* ---- client output ---- */

static int out_append(ib_client_t *c, const void *p, size_t n) { return ib_buf_append(&c->out[c->out_cur], p, n); }

/* Head building on the request path, without printf: a string, a literal, a number. */
static void append_str(ib_buf_t *b, const char *s) { ib_buf_append(b, s, strlen(s)); }
#define APPEND_LIT(b, lit) ib_buf_append((b), (lit), sizeof(lit) - 1)

/* Writes V in base 10 or 16 at DST (at most 20 bytes, no NUL); returns the length. */
static size_t format_uint(char *dst, uint64_t v, unsigned base)
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

static void append_uint(ib_buf_t *b, uint64_t v, unsigned base)
{
    char tmp[24];
    ib_buf_append(b, tmp, format_uint(tmp, v, base));
}

/* "ib-WORKER-SEQ", SEQ in hex: at most 3 + 10 + 1 + 16 bytes and a NUL. */
static void make_request_id(char *out, uint32_t worker, uint64_t seq)
{
    size_t n = 3;
    memcpy(out, "ib-", 3);
    n += format_uint(out + n, worker, 10);
    out[n++] = '-';
    n += format_uint(out + n, seq, 16);
    out[n] = '\0';
}

/* Body bytes for the client, as one chunk when its response is chunked. */
static void append_chunk(ib_client_t *c, const char *p, size_t n)
{
    if (n == 0)
        return;
    if (c->client_chunked) {
        append_uint(&c->out[c->out_cur], n, 16);
        out_append(c, "\r\n", 2);
        out_append(c, p, n);
        out_append(c, "\r\n", 2);
    } else {
        out_append(c, p, n);
    }
}

static size_t out_pending(const ib_client_t *c)
{
    return c->out[c->out_cur].len + (c->sending ? c->out[!c->out_cur].len - c->send_off : 0);
}

static void flush_client(ib_worker_t *w, ib_client_t *c)
{
    if (c->sending || c->closing)
        return;
    if (c->out[c->out_cur].len == 0) {
        if (c->close_after_send)
            client_close(w, c);
        return;
    }
    c->out_cur ^= 1;
    ib_buf_reset(&c->out[c->out_cur]);
    c->sending = 1;
    c->send_off = 0;
    ib_buf_t *b = &c->out[!c->out_cur];
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_send(sqe, c->fd, b->ptr, b->len, MSG_NOSIGNAL);
    set_data(sqe, c, OP_CSEND);
    c->ops++;
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Internal Server Error";
    }
}

/* Queues a complete local response and ends the exchange. */
static void respond(ib_worker_t *w, ib_client_t *c, int status, const char *ctype, const char *body, size_t len,
                    const char *extra_headers)
{
    char head[512];
    int close = !c->keepalive || w->draining || status == 400 || status == 408 || status == 413 || status == 431 ||
                status == 501 || status == 505;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: ibrain\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n",
                     status, reason(status), ctype, len, c->request_id[0] ? "X-Request-Id: " : "", c->request_id,
                     c->request_id[0] ? "\r\n" : "", close ? "Connection: close\r\n" : "");
    if (extra_headers != NULL && (size_t)n + strlen(extra_headers) + 4 < sizeof(head)) {
        n -= 2; /* insert before the blank line, then end the head again */
        n += snprintf(head + n, sizeof(head) - (size_t)n, "%s\r\n\r\n", extra_headers);
    }
    if (out_append(c, head, (size_t)n) != 0 || out_append(c, body, len) != 0)
        close = 1;
    count_request(w, c, status);
    if (close) {
        c->keepalive = 0;
        c->close_after_send = 1;
    }
    c->state = C_HEAD;
    c->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.idle_timeout_ms * 1000000ull;
    flush_client(w, c);
}

static void respond_error_param(ib_worker_t *w, ib_client_t *c, int status, const char *msg, const char *type,
                                const char *param, const char *code, const char *extra_headers)
{
    ib_buf_reset(&w->scratch);
    if (ib_oai_error_json(&w->scratch, msg, type, param, code) != 0) {
        client_close(w, c);
        return;
    }
    respond(w, c, status, "application/json", w->scratch.ptr, w->scratch.len, extra_headers);
}

static void respond_error(ib_worker_t *w, ib_client_t *c, int status, const char *msg, const char *type,
                          const char *code, const char *extra_headers)
{
    respond_error_param(w, c, status, msg, type, NULL, code, extra_headers);
}

/* ---- exchange bookkeeping ---- */

/* Adds <d> to this worker's own slot of a per-replica counter: single writer, so a plain
 * relaxed load and store (no locked instruction); readers sum the slots. */
static void slot_add(ib_inflight_slot_t *slot, int64_t d)
{
    atomic_store_explicit(&slot->v, atomic_load_explicit(&slot->v, memory_order_relaxed) + d, memory_order_relaxed);
}

static void inflight_add(ib_worker_t *w, int replica, int64_t d) { slot_add(&w->px->replicas[replica].inflight[w->id], d); }

static void pending_add(ib_worker_t *w, int replica, int64_t d) { slot_add(&w->px->replicas[replica].pending[w->id], d); }

/* The replica started answering (or the request left it): its prefill is no longer queued. */
static void release_pending(ib_worker_t *w, ib_client_t *c)
{
    if (c->pending_blocks != 0) {
        pending_add(w, c->replica, -c->pending_blocks);
        c->pending_blocks = 0;
    }
}

static void release_inflight(ib_worker_t *w, ib_client_t *c)
{
    release_pending(w, c);
    if (c->inflight_counted) {
        inflight_add(w, c->replica, -1);
        c->inflight_counted = 0;
    }
}

/* Detaches the upstream connection from <c>: back to the pool when it is reusable. */
static void detach_upstream(ib_worker_t *w, ib_client_t *c, int reusable)
{
    ib_upstream_t *u = c->up;
    if (u == NULL)
        return;
    c->up = NULL;
    u->client = NULL;
    if (reusable && !u->closing && !w->draining) {
        u->state = U_IDLE;
        u->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.idle_timeout_ms * 1000000ull;
        u->next_idle = w->idle[u->replica];
        w->idle[u->replica] = u;
        /* A receive stays armed while idle, so that a replica closing the connection is
         * noticed now rather than by the next request. */
        if (!u->recv_armed)
            arm_upstream_recv(w, u);
    } else {
        upstream_close(w, u);
    }
}

static void reset_exchange(ib_client_t *c)
{
    ib_buf_reset(&c->method_path);
    ib_buf_reset(&c->fwd_headers);
    ib_buf_reset(&c->body);
    ib_buf_reset(&c->upreq);
    ib_buf_reset(&c->resp_head);
    c->request_id[0] = '\0';
    c->replica = -1;
    c->attempts = 0;
    c->head_sent = c->status = c->up_chunked = c->until_close = c->sse = c->client_chunked = 0;
    c->up_keepalive = 1;
    c->upstream_blocked = 0;
    c->resp_remaining = -1;
    c->t_first = 0;
    c->routed = 0;
    c->route_matched = c->route_blocks = 0;
}

/* The response was relayed completely. */
static void finish_exchange(ib_worker_t *w, ib_client_t *c)
{
    ib_replica_ok(w->px, &w->px->replicas[c->replica]);
    release_inflight(w, c);
    detach_upstream(w, c, c->up_keepalive && !c->until_close);
    count_request(w, c, c->status);
    if (!c->keepalive || w->draining || c->until_close)
        c->close_after_send = 1;
    reset_exchange(c);
    c->state = C_HEAD;
    c->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.idle_timeout_ms * 1000000ull;
    flush_client(w, c);
    if (!c->close_after_send && c->in.len > 0)
        process_input(w, c); /* a pipelined request waits */
}

/* The upstream failed. Before any response byte: retry once elsewhere, else 502/504.
 * After the head went out: end an SSE stream with an error event, else cut the client. */
static void upstream_failed(ib_worker_t *w, ib_client_t *c, enum ib_upstream_error kind, int timeout)
{
    ib_upstream_t *u = c->up;
    int stale_reuse = u != NULL && u->reused && kind == IB_UPERR_IO && c->resp_head.len == 0;
    ib_counter_add(&w->m.upstream_errors[c->replica][c->head_sent ? IB_UPERR_MIDSTREAM : kind], 1);
    /* A pooled connection that the replica had already closed is not the replica's fault. */
    if (!stale_reuse)
        ib_replica_failed(w->px, &w->px->replicas[c->replica], ib_now_ns());
    release_inflight(w, c);
    detach_upstream(w, c, 0);
    if (!c->head_sent && c->resp_head.len == 0 && !timeout) {
        if (c->attempts < 2 || stale_reuse) {
            ib_counter_add(&w->m.retries, 1);
            dispatch(w, c, -1);
            return;
        }
        c->status = 502;
        respond_error(w, c, 502, "the model replica failed before responding", "server_error", "upstream_error", NULL);
        return;
    }
    if (!c->head_sent) {
        int st = timeout ? 504 : 502;
        respond_error(w, c, st, timeout ? "the model replica did not respond in time" : "the model replica sent a broken response",
                      "server_error", timeout ? "upstream_timeout" : "upstream_error", NULL);
        return;
    }
    if (c->sse && c->client_chunked) {
        static const char ev[] =
            "data: {\"error\":{\"message\":\"the model replica failed mid-stream\",\"type\":\"server_error\","
            "\"param\":null,\"code\":\"upstream_error\"}}\n\n";
        append_chunk(c, ev, sizeof(ev) - 1);
        out_append(c, "0\r\n\r\n", 5);
    }
    count_request(w, c, c->status);
    c->keepalive = 0;
    c->close_after_send = 1;
    c->state = C_HEAD;
    flush_client(w, c);
}

/* ---- upstream side ---- */

static void build_upstream_request(ib_worker_t *w, ib_client_t *c)
{
    const ib_replica_t *r = &w->px->replicas[c->replica];
    ib_buf_t *b = &c->upreq;
    ib_buf_reset(b);
    ib_buf_append(b, c->method_path.ptr, c->method_path.len);
    APPEND_LIT(b, " HTTP/1.1\r\nHost: ");
    append_str(b, r->hostport);
    APPEND_LIT(b, "\r\n");
    ib_buf_append(b, c->fwd_headers.ptr, c->fwd_headers.len);
    APPEND_LIT(b, "X-Request-Id: ");
    append_str(b, c->request_id);
    APPEND_LIT(b, "\r\nX-IB-Replica: ");
    append_str(b, r->name);
    APPEND_LIT(b, "\r\nContent-Length: ");
    append_uint(b, c->body.len, 10);
    APPEND_LIT(b, "\r\n\r\n");
    ib_buf_append(b, c->body.ptr, c->body.len);
}

static void upstream_send(ib_worker_t *w, ib_upstream_t *u)
{
    ib_client_t *c = u->client;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_send(sqe, u->fd, c->upreq.ptr + u->send_off, c->upreq.len - u->send_off, MSG_NOSIGNAL);
    set_data(sqe, u, OP_USEND);
    u->ops++;
}

static ib_upstream_t *upstream_connect(ib_worker_t *w, int replica)
{
    ib_upstream_t *u = aligned_alloc(16, sizeof(*u));
    if (u == NULL)
        return NULL;
    memset(u, 0, sizeof(*u));
    u->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (u->fd < 0) {
        free(u);
        return NULL;
    }
    int one = 1;
    setsockopt(u->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    u->replica = replica;
    u->epoch = atomic_load_explicit(&w->px->replicas[replica].epoch, memory_order_relaxed);
    u->state = U_CONNECTING;
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_connect(sqe, u->fd, (struct sockaddr *)&w->px->replicas[replica].addr, sizeof(struct sockaddr_in));
    set_data(sqe, u, OP_UCONN);
    u->ops++;
    ib_counter_add(&w->m.upstream_conns_opened, 1);
    w->nupstreams++;
    return u;
}

/* Sends the request to <replica>, or to the least-loaded one (other than the last tried)
 * when <replica> is -1. */
static void dispatch(ib_worker_t *w, ib_client_t *c, int replica)
{
    if (replica < 0)
        replica = ib_proxy_pick(w->px, w, c->cand, c->attempts > 0 ? c->replica : -1);
    if (replica < 0) {
        c->status = 503;
        respond_error(w, c, 503, "no model replica is available", "server_error", "no_replica", "Retry-After: 1");
        return;
    }
    c->replica = replica;
    c->attempts++;
    inflight_add(w, replica, 1);
    c->inflight_counted = 1;
    /* Prefill work this request queues on the replica: the blocks it is not believed to
     * hold (all of them on a retry or an unrouted request), at least one. */
    int64_t work = c->route_blocks;
    if (c->routed && c->attempts == 1)
        work -= c->route_matched;
    c->pending_blocks = work > 0 ? work : 1;
    pending_add(w, replica, c->pending_blocks);
    ib_buf_reset(&c->resp_head);
    build_upstream_request(w, c);
    uint64_t now = ib_now_ns();
    ib_upstream_t *u = w->idle[replica];
    uint32_t epoch = atomic_load_explicit(&w->px->replicas[replica].epoch, memory_order_relaxed);
    while (u != NULL && (u->closing || u->epoch != epoch)) {
        /* closed by the replica while idle, or connected to the slot's previous replica */
        w->idle[replica] = u->next_idle;
        if (!u->closing)
            upstream_close(w, u);
        u = w->idle[replica];
    }
    if (u != NULL) {
        w->idle[replica] = u->next_idle;
        u->reused = 1;
    } else {
        u = upstream_connect(w, replica);
        if (u == NULL) {
            c->up = NULL;
            ib_counter_add(&w->m.upstream_errors[replica][IB_UPERR_CONNECT], 1);
            release_inflight(w, c);
            respond_error(w, c, 502, "cannot open a connection to the model replica", "server_error", "upstream_error",
                          NULL);
            return;
        }
    }
    c->up = u;
    u->client = c;
    u->send_off = 0;
    c->state = C_UPSTREAM;
    if (u->state == U_CONNECTING) {
        u->deadline_ns = now + (uint64_t)w->px->cfg.connect_timeout_ms * 1000000ull;
        return; /* the send follows the connect */
    }
    u->state = U_BUSY;
    u->deadline_ns = now + (uint64_t)w->px->cfg.upstream_timeout_ms * 1000000ull;
    upstream_send(w, u);
    if (!u->recv_armed)
        arm_upstream_recv(w, u);
}

/* Parses the upstream's response head and sends ours. 1 done, 0 need more, -1 broken. */
static int response_head(ib_worker_t *w, ib_client_t *c)
{
    struct phr_header hdrs[64];
    size_t nh = 64, msglen;
    int minor, status;
    const char *msg;
    int n = phr_parse_response(c->resp_head.ptr, c->resp_head.len, &minor, &status, &msg, &msglen, hdrs, &nh, 0);
    if (n == -2)
        return c->resp_head.len > 65536 ? -1 : 0;
    if (n < 0)
        return -1;
    if (status < 200) { /* interim responses (100 Continue) are dropped */
        memmove(c->resp_head.ptr, c->resp_head.ptr + n, c->resp_head.len - (size_t)n);
        c->resp_head.len -= (size_t)n;
        return c->resp_head.len ? response_head(w, c) : 0;
    }
    c->status = status;
    c->up_keepalive = minor >= 1;
    int64_t cl = -1;
    ib_buf_t *o = &c->out[c->out_cur];
    APPEND_LIT(o, "HTTP/1.1 ");
    append_uint(o, (uint64_t)status, 10);
    APPEND_LIT(o, " ");
    ib_buf_append(o, msg, msglen < 64 ? msglen : 64);
    APPEND_LIT(o, "\r\n");
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hdrs[i];
        if (h->name == NULL)
            continue;
        if (ib_http_name_is(h, "transfer-encoding")) {
            c->up_chunked = h->value_len >= 7 && strncasecmp(h->value + h->value_len - 7, "chunked", 7) == 0;
            continue;
        }
        if (ib_http_name_is(h, "connection")) {
            if (h->value_len == 5 && strncasecmp(h->value, "close", 5) == 0)
                c->up_keepalive = 0;
            continue;
        }
        if (ib_http_is_hop_by_hop(h) || ib_http_name_is(h, "x-request-id") || ib_http_name_is(h, "server"))
            continue;
        if (ib_http_name_is(h, "content-length")) {
            char tmp[24];
            size_t m = h->value_len < sizeof(tmp) - 1 ? h->value_len : sizeof(tmp) - 1;
            memcpy(tmp, h->value, m);
            tmp[m] = '\0';
            char *end;
            long long v = strtoll(tmp, &end, 10);
            if (*end != '\0' || v < 0)
                return -1;
            cl = v;
        }
        if (ib_http_name_is(h, "content-type") && h->value_len >= 17 && strncasecmp(h->value, "text/event-stream", 17) == 0)
            c->sse = 1;
        ib_buf_append(o, h->name, h->name_len);
        ib_buf_append(o, ": ", 2);
        ib_buf_append(o, h->value, h->value_len);
        ib_buf_append(o, "\r\n", 2);
    }
    int no_body = status == 204 || status == 304;
    if (no_body) {
        c->resp_remaining = 0;
    } else if (c->up_chunked) {
        memset(&c->resp_dec, 0, sizeof(c->resp_dec));
        c->resp_dec.consume_trailer = 1;
    } else if (cl >= 0) {
        c->resp_remaining = cl;
    } else {
        c->until_close = 1;
    }
    /* Chunked and close-delimited bodies are re-chunked for HTTP/1.1 clients. */
    c->client_chunked = !no_body && cl < 0 && c->minor >= 1;
    if (c->client_chunked)
        ib_buf_append(o, "Transfer-Encoding: chunked\r\n", 28);
    if (!no_body && cl < 0 && c->minor == 0)
        c->keepalive = 0;
    if (c->debug) {
        char line[256];
        int k = snprintf(line, sizeof(line), "X-IB-Route: policy=%s reason=%s matched=%u/%u attempts=%d\r\n",
                     ib_policy_name(c->route_policy), c->routed ? ib_route_reason_name(c->route_reason) : "retry",
                     c->route_matched, c->route_blocks, c->attempts);
        ib_buf_append(o, line, (size_t)k);
    }
    APPEND_LIT(o, "Server: ibrain\r\nX-Request-Id: ");
    append_str(o, c->request_id);
    APPEND_LIT(o, "\r\nX-IB-Replica: ");
    append_str(o, w->px->replicas[c->replica].name);
    APPEND_LIT(o, "\r\n");
    if (!c->keepalive || w->draining)
        APPEND_LIT(o, "Connection: close\r\n");
    APPEND_LIT(o, "\r\n");
    c->head_sent = 1;
    c->t_first = ib_now_ns();
    release_pending(w, c);
    ib_metrics_observe(w->m.ttfb_bucket, &w->m.ttfb_sum_us, &w->m.ttfb_count, c->t_first - c->t_start);
    /* What followed the head in the buffer is body. */
    memmove(c->resp_head.ptr, c->resp_head.ptr + n, c->resp_head.len - (size_t)n);
    c->resp_head.len -= (size_t)n;
    return 1;
}

/* Relays body bytes; 1 when the response is complete, 0 for more, -1 broken framing. */
static int relay_body(ib_worker_t *w, ib_client_t *c, char *p, size_t n)
{
    (void)w;
    if (c->up_chunked) {
        size_t sz = n;
        ssize_t rc = phr_decode_chunked(&c->resp_dec, p, &sz);
        if (rc == -1)
            return -1;
        append_chunk(c, p, sz);
        if (rc >= 0) {
            if (c->client_chunked)
                out_append(c, "0\r\n\r\n", 5);
            return 1;
        }
        return 0;
    }
    if (c->until_close) {
        append_chunk(c, p, n);
        return 0;
    }
    size_t take = (int64_t)n < c->resp_remaining ? n : (size_t)c->resp_remaining;
    out_append(c, p, take);
    c->resp_remaining -= (int64_t)take;
    return c->resp_remaining == 0;
}

static void on_upstream_data(ib_worker_t *w, ib_upstream_t *u, char *p, size_t n)
{
    ib_client_t *c = u->client;
    u->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.upstream_timeout_ms * 1000000ull;
    int done = 0;
    if (!c->head_sent) {
        if (ib_buf_append(&c->resp_head, p, n) != 0) {
            upstream_failed(w, c, IB_UPERR_IO, 0);
            return;
        }
        int rc = response_head(w, c);
        if (rc < 0) {
            upstream_failed(w, c, IB_UPERR_IO, 0);
            return;
        }
        if (rc == 0) {
            arm_upstream_recv(w, u);
            return;
        }
        done = c->resp_remaining == 0 ? 1 : c->resp_head.len ? relay_body(w, c, c->resp_head.ptr, c->resp_head.len) : 0;
        ib_buf_reset(&c->resp_head);
    } else {
        done = relay_body(w, c, p, n);
    }
    if (done < 0) {
        upstream_failed(w, c, IB_UPERR_IO, 0);
        return;
    }
    if (done) {
        finish_exchange(w, c);
        return;
    }
    flush_client(w, c);
    if (out_pending(c) > OUT_HIGH_WATER)
        c->upstream_blocked = 1;
    else
        arm_upstream_recv(w, u);
}

/* ---- client side ---- */

static enum ib_route route_of(ib_span_t path)
{
    size_t n = path.len;
    const char *q = memchr(path.ptr, '?', n);
    if (q != NULL)
        n = (size_t)(q - path.ptr);
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(path.ptr, lit, n) == 0)
    if (IS("/v1/chat/completions"))
        return IB_ROUTE_CHAT;
    if (IS("/v1/completions"))
        return IB_ROUTE_COMPLETIONS;
    if (IS("/v1/models"))
        return IB_ROUTE_MODELS;
    if (IS("/health"))
        return IB_ROUTE_HEALTH;
    if (IS("/ready"))
        return IB_ROUTE_READY;
    if (IS("/metrics"))
        return IB_ROUTE_METRICS;
#undef IS
    if (n >= 4 && memcmp(path.ptr, "/v1/", 4) == 0)
        return IB_ROUTE_OTHER_PROXIED;
    return IB_ROUTE_NONE;
}

static void respond_local(ib_worker_t *w, ib_client_t *c, int is_get)
{
    ib_proxy_t *px = w->px;
    if (!is_get) {
        c->status = 405;
        respond_error(w, c, 405, "method not allowed", "invalid_request_error", NULL, "Allow: GET");
        return;
    }
    ib_buf_t *b = &w->scratch;
    ib_buf_reset(b);
    switch (c->route) {
    case IB_ROUTE_HEALTH:
        respond(w, c, 200, "application/json", "{\"status\":\"ok\"}", 15, NULL);
        return;
    case IB_ROUTE_READY: {
        uint64_t now = ib_now_ns();
        int healthy = 0;
        const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
        uint32_t nslots = atomic_load_explicit(&px->nslots, memory_order_acquire);
        for (uint32_t i = 0; i < nslots; i++)
            healthy += ib_mask_has(rt->all_ready, i) && ib_replica_healthy(&px->replicas[i], now);
        char body[96];
        int n = snprintf(body, sizeof(body), "{\"status\":\"%s\",\"replicas_healthy\":%d}",
                         healthy && !w->draining ? "ready" : "not_ready", healthy);
        respond(w, c, healthy && !w->draining ? 200 : 503, "application/json", body, (size_t)n, NULL);
        return;
    }
    case IB_ROUTE_METRICS:
        if (ib_metrics_render(px, b) != 0) {
            client_close(w, c);
            return;
        }
        respond(w, c, 200, "text/plain; version=0.0.4; charset=utf-8", b->ptr, b->len, NULL);
        return;
    default: { /* models */
        char tmp[256];
        ib_buf_append(b, "{\"object\":\"list\",\"data\":[", 25);
        const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
        uint32_t nm = rt->version == 0 ? px->cfg.nmodels : rt->nworkloads;
        for (uint32_t i = 0; i < nm; i++) {
            const char *name = rt->version == 0 ? px->cfg.models[i] : rt->wl[i].model;
            ib_buf_append(b, i ? ",{\"id\":\"" : "{\"id\":\"", i ? 8 : 7);
            ib_json_escape(b, name, strlen(name));
            int n = snprintf(tmp, sizeof(tmp), "\",\"object\":\"model\",\"created\":%llu,\"owned_by\":\"ibrain\"}",
                             (unsigned long long)px->started_unix);
            ib_buf_append(b, tmp, (size_t)n);
        }
        ib_buf_append(b, "]}", 2);
        respond(w, c, 200, "application/json", b->ptr, b->len, NULL);
        return;
    }
    }
}

static void observe_matched(ib_worker_t *w, uint32_t matched, uint32_t blocks)
{
    int k = 0; /* buckets: 0, 1, 2, 4, ..., 1024, +Inf */
    while (k < IB_NMATCHED && matched > (k == 0 ? 0u : 1u << (k - 1)))
        k++;
    ib_counter_add(&w->m.matched_bucket[k], 1);
    ib_counter_add(&w->m.matched_sum, matched);
    ib_counter_add(&w->m.matched_count, 1);
    ib_counter_add(&w->m.prompt_blocks, blocks);
}

/* With a tokenizer and a context length: prompt tokens + max_tokens (at least 1) over the
 * model's context is a 400 context_length_exceeded, as the engines answer it. */
static int context_exceeded(ib_worker_t *w, ib_client_t *c, uint32_t ctx, const ib_oai_request_t *oreq,
                            ib_api_kind_t kind)
{
    uint64_t prompt = w->prompt.tokens;
    uint64_t completion = oreq->max_tokens > 0 ? (uint64_t)oreq->max_tokens : 1;
    if (ctx == 0 || prompt + completion <= ctx)
        return 0;
    char msg[300];
    snprintf(msg, sizeof(msg),
             "This model's maximum context length is %u tokens. However, you requested %llu tokens (%llu in the %s, "
             "%llu for the completion). Please reduce the length of the %s or completion.",
             ctx, (unsigned long long)(prompt + completion), (unsigned long long)prompt,
             kind == IB_API_CHAT ? "messages" : "prompt", (unsigned long long)completion,
             kind == IB_API_CHAT ? "messages" : "prompt");
    c->status = 400;
    ib_counter_add(&w->m.context_exceeded, 1);
    respond_error_param(w, c, 400, msg, "invalid_request_error", kind == IB_API_CHAT ? "messages" : "prompt",
                        "context_length_exceeded", NULL);
    return 1;
}

/* Chat and completions: parse the body once, render (and tokenize) the prompt as the
 * engines will, hash its prefix blocks and let the router choose. */
/* The tokenizer scratch state of this worker for <t>, created on first use. */
static ib_tok_state_t *tok_state(ib_worker_t *w, const ib_tokenizer_t *t)
{
    if (t == NULL)
        return NULL;
    for (int i = 0; i < IB_WORKER_TOKSTATES; i++) {
        if (w->toks[i].t == t)
            return w->toks[i].s;
        if (w->toks[i].t == NULL) {
            w->toks[i].s = ib_tok_state_new(t);
            if (w->toks[i].s != NULL)
                w->toks[i].t = t;
            return w->toks[i].s;
        }
    }
    return NULL; /* more tokenizers than states: route this workload on bytes */
}

static void route_request(ib_worker_t *w, ib_client_t *c)
{
    ib_proxy_t *px = w->px;
    ib_oai_request_t oreq;
    ib_json_error_t jerr;
    ib_api_kind_t kind = c->route == IB_ROUTE_CHAT ? IB_API_CHAT : IB_API_COMPLETION;
    if (ib_oai_parse(w->json, kind, c->body.ptr, c->body.len, c->body.cap, &oreq, &jerr) != 0) {
        c->status = 400;
        respond_error_param(w, c, 400, jerr.message, "invalid_request_error", jerr.param, NULL, NULL);
        return;
    }
    /* The table stays valid until this loop turn ends (rtab.c). */
    const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
    if (rt->nworkloads == 0 && rt->version == 0) { /* no snapshot yet and no static replica */
        c->status = 503;
        respond_error(w, c, 503, "no routing snapshot yet: ibrain has no replica to send this to", "server_error",
                      "no_snapshot", "Retry-After: 1");
        return;
    }
    const ib_workload_rt_t *wl = ib_rtab_find(px, rt, oreq.model);
    if (wl == NULL) {
        char msg[192];
        snprintf(msg, sizeof(msg), "The model `%.*s` does not exist.", (int)(oreq.model.len < 100 ? oreq.model.len : 100),
                 oreq.model.ptr);
        c->status = 404;
        respond_error_param(w, c, 404, msg, "invalid_request_error", "model", "model_not_found", NULL);
        return;
    }
    if (c->session_key == 0 && oreq.session_id.len > 0)
        c->session_key = XXH3_64bits_withSeed(oreq.session_id.ptr, oreq.session_id.len, 0x5e55) | 1;
    size_t nblocks = 0;
    ib_tok_state_t *ts = tok_state(w, wl->tokenizer);
    uint32_t block = ts != NULL ? wl->block : (wl->tokenizer != NULL ? wl->block * 4 : wl->block);
    if (ib_prompt_build(&w->prompt, wl->tpl, &oreq, ts, block, 4) == 0) {
        nblocks = w->prompt.nblocks;
        if (w->prompt.tokenized) {
            ib_counter_add(&w->m.prompt_tokens, w->prompt.tokens);
            if (context_exceeded(w, c, wl->context_length, &oreq, kind))
                return;
        }
    }
    int64_t load[IB_MAX_REPLICAS], inflight[IB_MAX_REPLICAS];
    uint8_t usable[IB_MAX_REPLICAS];
    memset(usable, 0, wl->max_slot);
    uint64_t now = ib_now_ns();
    for (uint32_t k = 0; k < wl->nslots; k++) {
        uint32_t r = wl->slots[k];
        ib_replica_t *rep = &px->replicas[r];
        /* this instance's figures, plus what the other instances report (write-back) */
        load[r] = ib_replica_pending(rep, px->nworkers) + atomic_load_explicit(&rep->remote_pending, memory_order_relaxed);
        inflight[r] = ib_replica_inflight(rep, px->nworkers) +
                      atomic_load_explicit(&rep->remote_inflight, memory_order_relaxed);
        usable[r] = (uint8_t)(ib_mask_has(wl->ready, r) && ib_replica_healthy(&px->replicas[r], now));
    }
    c->cand[0] = wl->ready[0];
    c->cand[1] = wl->ready[1];
    c->route_policy = wl->router->policy;
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    ib_route_input_t in = {.hashes = w->prompt.hashes, .nblocks = nblocks, .session_key = c->session_key, .load = load,
                           .inflight = inflight, .usable = usable, .nreplicas = wl->max_slot, .random = w->rng};
    ib_route_decision_t d;
    ib_router_pick(wl->router, &in, &d);
    if (d.replica >= 0) {
        ib_router_commit(wl->router, &in, d.replica);
        if (w->wb.buf != NULL && wl->router->policy == IB_POLICY_AFFINITY) {
            uint32_t wi = (uint32_t)(wl - rt->wl);
            ib_writeback_push(w, rt->version, wi, (uint32_t)d.replica, w->prompt.hashes, nblocks);
            if (c->session_key != 0)
                ib_writeback_push(w, rt->version, wi, (uint32_t)d.replica, &c->session_key, 1);
        }
        c->routed = 1;
        c->route_reason = d.reason;
        c->route_matched = d.matched;
        c->route_blocks = (uint32_t)nblocks;
        ib_counter_add(&w->m.route_reason[wl->router->policy][d.reason], 1);
        observe_matched(w, d.matched, (uint32_t)nblocks);
    }
    /* All replicas ejected: dispatch's fallback tries the one whose ejection ends first. */
    dispatch(w, c, d.replica);
}

/* The request (head and body) is complete. */
static void request_ready(ib_worker_t *w, ib_client_t *c, int is_get)
{
    c->deadline_ns = 0;
    if (c->route == IB_ROUTE_NONE) {
        c->status = 404;
        respond_error(w, c, 404, "no such route", "invalid_request_error", NULL, NULL);
    } else if (c->route >= IB_ROUTE_MODELS) {
        respond_local(w, c, is_get);
    } else if (w->draining) {
        c->status = 503;
        respond_error(w, c, 503, "ibrain is shutting down", "server_error", NULL, "Retry-After: 1");
    } else if (c->route == IB_ROUTE_CHAT || c->route == IB_ROUTE_COMPLETIONS) {
        route_request(w, c);
    } else { /* other /v1 routes: any ready replica */
        const ib_rtab_t *rt = atomic_load_explicit(&w->px->rtab, memory_order_acquire);
        c->cand[0] = rt->all_ready[0];
        c->cand[1] = rt->all_ready[1];
        dispatch(w, c, -1);
    }
}

static void consume_in(ib_client_t *c, size_t n)
{
    memmove(c->in.ptr, c->in.ptr + n, c->in.len - n);
    c->in.len -= n;
}

/* Reads body bytes from c->in. 1 complete, 0 more needed, -STATUS refused. */
static int read_body(ib_worker_t *w, ib_client_t *c)
{
    if (c->body_need >= 0) {
        size_t take = c->in.len < (size_t)c->body_need ? c->in.len : (size_t)c->body_need;
        if (ib_buf_append(&c->body, c->in.ptr, take) != 0)
            return -500;
        consume_in(c, take);
        c->body_need -= (int64_t)take;
        return c->body_need == 0;
    }
    size_t sz = c->in.len;
    ssize_t rc = phr_decode_chunked(&c->body_dec, c->in.ptr, &sz);
    if (rc == -1)
        return -400;
    if (c->body.len + sz > w->px->cfg.max_body_bytes)
        return -413;
    if (ib_buf_append(&c->body, c->in.ptr, sz) != 0)
        return -500;
    if (rc >= 0) { /* bytes after the body (a pipelined request) follow the decoded data */
        memmove(c->in.ptr, c->in.ptr + sz, (size_t)rc);
        c->in.len = (size_t)rc;
        return 1;
    }
    c->in.len = 0;
    return 0;
}

static void refuse(ib_worker_t *w, ib_client_t *c, int status)
{
    const char *msg;
    switch (status) {
    case 408: msg = "request not received in time"; break;
    case 413: msg = "request body is too large"; break;
    case 417: msg = "unsupported Expect header"; break;
    case 431: msg = "request headers are too large"; break;
    case 501: msg = "unsupported transfer coding"; break;
    case 505: msg = "HTTP version not supported"; break;
    case 500: msg = "out of memory"; break;
    default: msg = "malformed HTTP request"; status = 400; break;
    }
    c->keepalive = 0;
    c->status = status;
    c->in.len = 0;
    respond_error(w, c, status, msg, status >= 500 ? "server_error" : "invalid_request_error", NULL, NULL);
}

static void process_input(ib_worker_t *w, ib_client_t *c)
{
    while (!c->closing && !c->close_after_send) {
        if (c->state == C_HEAD) {
            if (c->in.len == 0)
                return;
            ib_http_limits_t lim = {w->px->cfg.max_head_bytes, w->px->cfg.max_body_bytes};
            ib_http_req_t req;
            int n = ib_http_parse_request(c->in.ptr, c->in.len, &lim, &req);
            if (n == 0) {
                if (c->deadline_ns == 0 || c->t_start == 0)
                    c->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.header_timeout_ms * 1000000ull;
                return;
            }
            c->t_start = ib_now_ns();
            reset_exchange(c);
            if (n < 0) {
                c->route = IB_ROUTE_NONE;
                refuse(w, c, -n);
                return;
            }
            c->route = route_of(req.path);
            c->keepalive = req.keepalive;
            c->minor = req.minor_version;
            c->is_get = req.method.len == 3 && memcmp(req.method.ptr, "GET", 3) == 0;
            if (req.request_id.len > 0 && req.request_id.len < sizeof(c->request_id)) {
                memcpy(c->request_id, req.request_id.ptr, req.request_id.len);
                c->request_id[req.request_id.len] = '\0';
            }
            else
                make_request_id(c->request_id, w->id, ++w->next_request_id);
            ib_buf_append(&c->method_path, req.method.ptr, req.method.len);
            ib_buf_append(&c->method_path, " ", 1);
            ib_buf_append(&c->method_path, req.path.ptr, req.path.len);
            c->debug = 0;
            c->session_key = req.session_id.len ? XXH3_64bits_withSeed(req.session_id.ptr, req.session_id.len, 0x5e55) | 1 : 0;
            for (size_t i = 0; i < req.nheaders; i++) {
                const struct phr_header *h = &req.headers[i];
                if (ib_http_name_is(h, "x-ib-debug")) {
                    c->debug = h->value_len == 1 && h->value[0] == '1';
                    continue;
                }
                if (ib_http_is_hop_by_hop(h) || ib_http_name_is(h, "host") || ib_http_name_is(h, "content-length") ||
                    ib_http_name_is(h, "x-request-id") || ib_http_name_is(h, "x-ib-replica"))
                    continue;
                ib_buf_append(&c->fwd_headers, h->name, h->name_len);
                ib_buf_append(&c->fwd_headers, ": ", 2);
                ib_buf_append(&c->fwd_headers, h->value, h->value_len);
                ib_buf_append(&c->fwd_headers, "\r\n", 2);
            }
            c->body_need = req.chunked ? -1 : (req.content_length > 0 ? req.content_length : 0);
            memset(&c->body_dec, 0, sizeof(c->body_dec));
            c->body_dec.consume_trailer = 1;
            int expect = req.expect_continue;
            consume_in(c, (size_t)n);
            c->state = C_BODY;
            /* The body must be read before routing; a 100 Continue asks for it. */
            if (expect && (c->body_need != 0) && c->in.len == 0)
                out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25), flush_client(w, c);
            c->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.header_timeout_ms * 1000000ull;
        }
        if (c->state == C_BODY) {
            int rc = read_body(w, c);
            if (rc < 0) {
                refuse(w, c, -rc);
                return;
            }
            if (rc == 0)
                return;
            request_ready(w, c, c->is_get);
            continue;
        }
        return; /* C_UPSTREAM: pipelined bytes wait in c->in */
    }
}

static void client_close(ib_worker_t *w, ib_client_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->state = C_CLOSED;
    if (c->up != NULL) {
        ib_counter_add(&w->m.client_aborts, 1);
        release_inflight(w, c);
        detach_upstream(w, c, 0);
    }
    shutdown(c->fd, SHUT_RDWR); /* ends the multishot receive */
}

static void free_client(ib_worker_t *w, ib_client_t *c)
{
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    w->nclients--;
    ib_counter_add(&w->m.conns_open_dec, 1);
    ib_buf_free(&c->in);
    ib_buf_free(&c->out[0]);
    ib_buf_free(&c->out[1]);
    ib_buf_free(&c->method_path);
    ib_buf_free(&c->fwd_headers);
    ib_buf_free(&c->body);
    ib_buf_free(&c->upreq);
    ib_buf_free(&c->resp_head);
    free(c);
}

static void free_upstream(ib_worker_t *w, ib_upstream_t *u);

static void upstream_close(ib_worker_t *w, ib_upstream_t *u)
{
    if (u->closing)
        return;
    u->closing = 1;
    if (u->ops == 0)
        free_upstream(w, u); /* nothing in flight will come back for it */
    else
        shutdown(u->fd, SHUT_RDWR); /* ends its receive; freed when the last op returns */
}

static void free_upstream(ib_worker_t *w, ib_upstream_t *u)
{
    /* Unlink from the idle pool if it is there. */
    for (ib_upstream_t **p = &w->idle[u->replica]; *p != NULL; p = &(*p)->next_idle)
        if (*p == u) {
            *p = u->next_idle;
            break;
        }
    close(u->fd);
    free(u);
    w->nupstreams--;
}

/* ---- completions ---- */

static void on_accept(ib_worker_t *w, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE) && !w->draining) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
        set_data(sqe, w, OP_ACCEPT);
    }
    if (cqe->res < 0)
        return;
    int fd = cqe->res;
    if (w->draining || w->nclients >= w->px->cfg.max_conns_per_worker) {
        close(fd);
        return;
    }
    ib_client_t *c = aligned_alloc(16, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->replica = -1;
    c->route = IB_ROUTE_NONE;
    c->keepalive = 1;
    c->minor = 1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    w->clients = c;
    w->nclients++;
    ib_counter_add(&w->m.conns_accepted, 1);
    ib_counter_add(&w->m.conns_open, 1);
    c->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.header_timeout_ms * 1000000ull;
    arm_client_recv(w, c);
}

static void on_client_recv(ib_worker_t *w, ib_client_t *c, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        c->recv_armed = 0;
    if (cqe->res > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (!c->closing) {
            if (c->in.len + (size_t)cqe->res > IN_MAX_PIPELINED + w->px->cfg.max_head_bytes ||
                ib_buf_append(&c->in, w->buf_base + (size_t)bid * w->buf_size, (size_t)cqe->res) != 0) {
                recycle_buffer(w, bid);
                client_close(w, c);
                return;
            }
        }
        recycle_buffer(w, bid);
        if (!c->closing && c->state != C_UPSTREAM)
            process_input(w, c);
        if (!more && !c->closing)
            arm_client_recv(w, c);
        return;
    }
    if (cqe->res == -ENOBUFS) { /* out of provided buffers: try again */
        if (!c->closing && !more)
            arm_client_recv(w, c);
        return;
    }
    /* EOF or error: the client is gone (or half-closed: we do not serve half-closed
     * clients, their response could not be read reliably by all clients anyway). */
    if (c->state == C_BODY || (c->state == C_HEAD && c->in.len > 0)) {
        c->status = 400;
        count_request(w, c, 400); /* a truncated request */
    }
    client_close(w, c);
}

static void on_client_send(ib_worker_t *w, ib_client_t *c, struct io_uring_cqe *cqe)
{
    ib_buf_t *b = &c->out[!c->out_cur];
    if (cqe->res < 0) {
        c->sending = 0;
        client_close(w, c);
        return;
    }
    c->send_off += (size_t)cqe->res;
    if (c->send_off < b->len && !c->closing) {
        struct io_uring_sqe *sqe = get_sqe(w);
        io_uring_prep_send(sqe, c->fd, b->ptr + c->send_off, b->len - c->send_off, MSG_NOSIGNAL);
        set_data(sqe, c, OP_CSEND);
        c->ops++;
        return;
    }
    c->sending = 0;
    ib_buf_reset(b);
    if (c->closing)
        return;
    flush_client(w, c);
    if (c->upstream_blocked && c->up != NULL && out_pending(c) <= OUT_HIGH_WATER / 2) {
        c->upstream_blocked = 0;
        arm_upstream_recv(w, c->up);
    }
}

static void on_upstream_connect(ib_worker_t *w, ib_upstream_t *u, struct io_uring_cqe *cqe)
{
    ib_client_t *c = u->client;
    if (c == NULL || u->closing) { /* the client left while we connected */
        upstream_close(w, u);
        return;
    }
    if (cqe->res < 0) {
        upstream_failed(w, c, IB_UPERR_CONNECT, 0);
        return;
    }
    u->state = U_BUSY;
    u->deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.upstream_timeout_ms * 1000000ull;
    upstream_send(w, u);
    arm_upstream_recv(w, u);
}

static void on_upstream_send(ib_worker_t *w, ib_upstream_t *u, struct io_uring_cqe *cqe)
{
    ib_client_t *c = u->client;
    if (c == NULL || u->closing)
        return;
    if (cqe->res < 0) {
        /* The receive reports the failure too; act once, here. */
        upstream_failed(w, c, IB_UPERR_IO, 0);
        return;
    }
    u->send_off += (size_t)cqe->res;
    if (u->send_off < c->upreq.len)
        upstream_send(w, u);
}

static void on_upstream_recv(ib_worker_t *w, ib_upstream_t *u, struct io_uring_cqe *cqe)
{
    u->recv_armed = 0;
    if (cqe->res > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        if (u->client != NULL && !u->closing)
            on_upstream_data(w, u, w->buf_base + (size_t)bid * w->buf_size, (size_t)cqe->res);
        else
            upstream_close(w, u); /* bytes on an idle connection: not HTTP we can use */
        recycle_buffer(w, bid);
        return;
    }
    if (cqe->res == -ENOBUFS) {
        if (!u->closing)
            arm_upstream_recv(w, u);
        return;
    }
    ib_client_t *c = u->client;
    if (c == NULL || u->closing) {
        upstream_close(w, u); /* an idle pooled connection was closed by the replica */
        return;
    }
    if (cqe->res == 0 && c->head_sent && c->until_close) { /* close-delimited body ended */
        if (c->client_chunked)
            out_append(c, "0\r\n\r\n", 5);
        c->up_keepalive = 0;
        finish_exchange(w, c);
        return;
    }
    upstream_failed(w, c, IB_UPERR_IO, 0);
}

static void check_timeouts(ib_worker_t *w, uint64_t now)
{
    for (ib_client_t *c = w->clients, *next; c != NULL; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        if (c->state == C_UPSTREAM && c->up != NULL) {
            if (now > c->up->deadline_ns)
                upstream_failed(w, c, c->up->state == U_CONNECTING ? IB_UPERR_CONNECT : IB_UPERR_TIMEOUT,
                                c->up->state != U_CONNECTING);
            continue;
        }
        if (c->deadline_ns == 0 || now <= c->deadline_ns || c->sending)
            continue;
        if (c->state == C_BODY || (c->state == C_HEAD && c->in.len > 0)) {
            if (c->state == C_HEAD)
                c->route = IB_ROUTE_NONE, c->t_start = now;
            refuse(w, c, 408);
        }
        else
            client_close(w, c); /* idle keep-alive connection */
    }
    for (uint32_t r = 0; r < atomic_load_explicit(&w->px->nslots, memory_order_acquire); r++)
        for (ib_upstream_t *u = w->idle[r], *next; u != NULL; u = next) {
            next = u->next_idle; /* upstream_close may free u */
            if (!u->closing && now > u->deadline_ns)
                upstream_close(w, u);
        }
}

static void arm_tick(ib_worker_t *w)
{
    static struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000};
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_timeout(sqe, &ts, 0, 0);
    set_data(sqe, w, OP_TICK);
}

static void arm_wake(ib_worker_t *w)
{
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_read(sqe, w->wake_fd, &w->wake_value, sizeof(w->wake_value), 0);
    set_data(sqe, w, OP_WAKE);
}

static void start_drain(ib_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = 1;
    w->drain_deadline_ns = ib_now_ns() + (uint64_t)w->px->cfg.drain_timeout_ms * 1000000ull;
    shutdown(w->listen_fd, SHUT_RDWR); /* ends the multishot accept */
    for (ib_client_t *c = w->clients, *next; c != NULL; c = next) {
        next = c->next;
        c->keepalive = 0;
        if (c->state == C_HEAD && c->in.len == 0 && !c->sending)
            client_close(w, c);
    }
    for (uint32_t r = 0; r < atomic_load_explicit(&w->px->nslots, memory_order_acquire); r++)
        for (ib_upstream_t *u = w->idle[r], *next; u != NULL; u = next) {
            next = u->next_idle; /* upstream_close may free u */
            upstream_close(w, u);
        }
}

/* Decrements the object's operation count and frees it once closed and quiet. */
static void op_done_client(ib_worker_t *w, ib_client_t *c, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        c->ops--;
    if (c->closing && c->ops == 0)
        free_client(w, c);
}

static void op_done_upstream(ib_worker_t *w, ib_upstream_t *u, struct io_uring_cqe *cqe)
{
    if (!(cqe->flags & IORING_CQE_F_MORE))
        u->ops--;
    if (u->closing && u->ops == 0)
        free_upstream(w, u);
}

static void handle_cqe(ib_worker_t *w, struct io_uring_cqe *cqe)
{
    uint64_t data = io_uring_cqe_get_data64(cqe);
    unsigned op = (unsigned)(data & OP_MASK);
    void *obj = (void *)(uintptr_t)(data & ~(uint64_t)OP_MASK);
    switch (op) {
    case OP_ACCEPT: on_accept(w, cqe); break;
    case OP_CRECV: on_client_recv(w, obj, cqe); op_done_client(w, obj, cqe); break;
    case OP_CSEND: on_client_send(w, obj, cqe); op_done_client(w, obj, cqe); break;
    case OP_UCONN: on_upstream_connect(w, obj, cqe); op_done_upstream(w, obj, cqe); break;
    case OP_USEND: on_upstream_send(w, obj, cqe); op_done_upstream(w, obj, cqe); break;
    case OP_URECV: on_upstream_recv(w, obj, cqe); op_done_upstream(w, obj, cqe); break;
    case OP_TICK:
        check_timeouts(w, ib_now_ns());
        if (w->id == 0) {
            const ib_rtab_t *rt = atomic_load_explicit(&w->px->rtab, memory_order_acquire);
            for (uint32_t i = 0; i < rt->nworkloads; i++)
                ib_affinity_tick(&rt->wl[i].router->table, ib_now_ns() / 1000000u);
        }
        arm_tick(w);
        break;
    case OP_WAKE:
        if (atomic_load(&w->px->stopping))
            start_drain(w);
        else
            arm_wake(w);
        break;
    default: break;
    }
}

/* ---- setup and loop ---- */

int ib_worker_init(ib_worker_t *w, ib_proxy_t *px, uint32_t id)
{
    int listen_fd = w->listen_fd;
    memset(w, 0, sizeof(*w));
    w->px = px;
    w->id = id;
    w->listen_fd = listen_fd;
    w->wake_fd = eventfd(0, EFD_CLOEXEC);
    w->idle = calloc(IB_MAX_REPLICAS, sizeof(*w->idle));
    w->json = ib_json_parser_new(px->cfg.max_body_bytes);
    w->rng = 0x9e3779b97f4a7c15ull * (id + 1);
    if (w->wake_fd < 0 || w->idle == NULL || w->json == NULL)
        return -1;
    int use_redis = (px->cfg.redis != NULL && px->cfg.redis[0] != '\0') || px->cfg.nredis_sentinels > 0;
    if (use_redis && !px->cfg.no_writeback) {
        w->wb.buf = calloc(IB_WB_RING_WORDS, sizeof(uint64_t));
        w->wb.mask = IB_WB_RING_WORDS - 1;
        if (w->wb.buf == NULL)
            return -1;
    }
    /* SINGLE_ISSUER: only this worker's thread submits. DEFER_TASKRUN: completions are
     * processed when the thread waits, never interrupting it. A large CQ so that bursts
     * never overflow it. The ring is created here but first used from the worker thread:
     * SINGLE_ISSUER binds to the first submitter (IORING_SETUP_R_DISABLED lets us defer). */
    struct io_uring_params p = {0};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED;
    p.cq_entries = 65536;
    int rc = io_uring_queue_init_params(4096, &w->ring, &p);
    if (rc < 0) {
        /* Kernels without DEFER_TASKRUN: cooperative task running. */
        p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_CQSIZE | IORING_SETUP_R_DISABLED;
        rc = io_uring_queue_init_params(4096, &w->ring, &p);
    }
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    /* Provided buffers, registered once (liburing 2.3 has no io_uring_setup_buf_ring). */
    w->nbufs = 1024;
    w->buf_size = 16384;
    size_t ring_bytes = sizeof(struct io_uring_buf) * w->nbufs;
    w->br = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    w->buf_base = malloc((size_t)w->nbufs * w->buf_size);
    if (w->br == MAP_FAILED || w->buf_base == NULL) {
        w->br = NULL;
        return -1;
    }
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)w->br, .ring_entries = w->nbufs, .bgid = BGID};
    rc = io_uring_register_buf_ring(&w->ring, &reg, 0);
    if (rc < 0) {
        errno = -rc;
        return -1;
    }
    io_uring_buf_ring_init(w->br);
    for (uint32_t i = 0; i < w->nbufs; i++)
        io_uring_buf_ring_add(w->br, w->buf_base + (size_t)i * w->buf_size, w->buf_size, (unsigned short)i,
                              io_uring_buf_ring_mask(w->nbufs), (int)i);
    io_uring_buf_ring_advance(w->br, (int)w->nbufs);
    return 0;
}

void ib_worker_destroy(ib_worker_t *w)
{
    if (w->ring.ring_fd > 0)
        io_uring_queue_exit(&w->ring);
    if (w->br != NULL)
        munmap(w->br, sizeof(struct io_uring_buf) * w->nbufs);
    free(w->buf_base);
    free(w->idle);
    ib_buf_free(&w->scratch);
    ib_prompt_free(&w->prompt);
    for (int i = 0; i < IB_WORKER_TOKSTATES; i++)
        ib_tok_state_free(w->toks[i].s);
    free(w->wb.buf);
    ib_json_parser_free(w->json);
    if (w->wake_fd > 0)
        close(w->wake_fd);
    if (w->listen_fd > 0)
        close(w->listen_fd);
}

/* Waits for at least one completion. With --busy-poll-us (default 50), first polls the
 * ring for that long, running its deferred completions (io_uring_get_events) and
 * yielding the core between polls. A sleeping worker is woken by an interrupt and, on a
 * VM, through the hypervisor, which costs tens of microseconds per request at light
 * load; a polling one sees the next request as soon as its data is queued. The window
 * starts at the last completion, so an idle worker sleeps, and sched_yield() hands the
 * core to whatever else is runnable there (a co-located engine): polling only takes
 * time the core would have spent idle. */
static void wait_completions(ib_worker_t *w)
{
    uint64_t poll_ns = (uint64_t)w->px->cfg.busy_poll_us * 1000u;
    if (poll_ns == 0 || w->draining) {
        io_uring_submit_and_wait(&w->ring, 1);
        return;
    }
    io_uring_submit(&w->ring);
    if (io_uring_cq_ready(&w->ring) > 0)
        return;
    uint64_t start = ib_now_ns(), now = start;
    for (;;) {
        io_uring_get_events(&w->ring);
        if (io_uring_cq_ready(&w->ring) > 0)
            break;
        now = ib_now_ns();
        if (now - start >= poll_ns)
            break;
        sched_yield();
    }
    ib_counter_add(&w->m.busy_poll_ns, now - start);
    if (io_uring_cq_ready(&w->ring) == 0)
        io_uring_submit_and_wait(&w->ring, 1);
}

void *ib_worker_main(void *arg)
{
    ib_worker_t *w = arg;
    /* liburing 2.3 has no io_uring_enable_rings(): the ring was created disabled so that
     * this thread, not the one that set it up, becomes its single issuer. */
    if (syscall(__NR_io_uring_register, w->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0) {
        fprintf(stderr, "ibrain: worker %u: cannot enable its ring: %s\n", w->id, strerror(errno));
        return NULL;
    }
    struct io_uring_sqe *sqe = get_sqe(w);
    io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    set_data(sqe, w, OP_ACCEPT);
    arm_tick(w);
    arm_wake(w);
    for (;;) {
        /* A quiescent point: no pointer into a routing table is held here (rtab.c). */
        atomic_store(&w->qs_epoch, atomic_load(&w->px->epoch));
        if (w->draining && ((w->nclients == 0 && w->nupstreams == 0) || ib_now_ns() > w->drain_deadline_ns))
            break;
        wait_completions(w);
        struct io_uring_cqe *cqe;
        unsigned head, count = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            handle_cqe(w, cqe);
            count++;
        }
        io_uring_cq_advance(&w->ring, count);
    }
    /* Past the deadline: close what is left; the process is about to exit. */
    for (ib_client_t *c = w->clients; c != NULL; c = c->next)
        client_close(w, c);
    return NULL;
}
