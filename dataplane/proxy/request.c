/*
 * Reading a client's request: the head (picohttpparser through http1.c), the headers to
 * forward, the request id, the body (Content-Length or chunked), pipelined requests, and
 * the refusals of what cannot be served; then each complete request goes where its route
 * says (local endpoint, router, or any ready replica).
 */
#include "internal.h"

#include <assert.h>
#include <string.h>

#include <xxh_x86dispatch.h>

enum ib_route ib_route_of(ib_span_t path)
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
    if (IS("/debug/affinity"))
        return IB_ROUTE_DEBUG_AFFINITY;
#undef IS
    if (n >= 4 && memcmp(path.ptr, "/v1/", 4) == 0)
        return IB_ROUTE_OTHER_PROXIED;
    return IB_ROUTE_NONE;
}

/* "ib-WORKER-SEQ", SEQ in hex: at most 3 + 10 + 1 + 16 bytes and a NUL. */
static void make_request_id(char *out, uint32_t worker, uint64_t seq)
{
    size_t n = 3;
    memcpy(out, "ib-", 3);
    n += ib_format_uint(out + n, worker, 10);
    out[n++] = '-';
    n += ib_format_uint(out + n, seq, 16);
    out[n] = '\0';
}
_Static_assert(sizeof(((ib_client_t *)0)->request_id) >= 31, "make_request_id writes up to 31 bytes");

/* The request (head and body) is complete. */
/* A connection accepted past the cap, to be told so: answered, then closed. */
static void refuse_over_cap(ib_worker_t *w, ib_client_t *c)
{
    c->keepalive = 0;
    c->in.len = 0;
    ib_respond_error(w, c, 503, "ibrain is at its connection limit; retry shortly", "server_error", NULL,
                     "connection_limit", "Retry-After: 1");
}

/* How long a request head (and body) has: a second for a connection past the cap. */
static uint32_t request_timeout_ms(const ib_worker_t *w, const ib_client_t *c)
{
    return c->over_cap ? IB_OVER_CAP_TIMEOUT_MS : w->px->cfg.header_timeout_ms;
}

static void request_ready(ib_worker_t *w, ib_client_t *c)
{
    c->deadline_ns = 0;
    if (c->over_cap) {
        refuse_over_cap(w, c);
    } else if (c->admin && c->route < IB_ROUTE_MODELS) {
        ib_respond_error(w, c, 404, "the admin listener serves /health, /ready, /metrics, /debug/affinity and "
                         "/v1/models only",
                         "invalid_request_error", NULL, NULL, NULL);
    } else if (c->route == IB_ROUTE_NONE) {
        ib_respond_error(w, c, 404, "no such route", "invalid_request_error", NULL, NULL, NULL);
    } else if (c->route >= IB_ROUTE_MODELS) {
        ib_local_respond(w, c);
    } else if (w->draining && w->drain_idle_close_ns == 0) { /* past the lame-duck window */
        ib_respond_error(w, c, 503, "ibrain is shutting down", "server_error", NULL, NULL, "Retry-After: 1");
    } else if (c->route == IB_ROUTE_CHAT || c->route == IB_ROUTE_COMPLETIONS) {
        ib_routing_request(w, c);
    } else { /* other /v1 routes: any ready replica */
        const ib_rtab_t *rt = atomic_load_explicit(&w->px->rtab, memory_order_acquire);
        c->cand[0] = rt->all_ready[0];
        c->cand[1] = rt->all_ready[1];
        ib_exchange_dispatch(w, c, -1);
    }
}

static void consume_in(ib_client_t *c, size_t n)
{
    assert(n <= c->in.len);
    memmove(c->in.ptr, c->in.ptr + n, c->in.len - n);
    c->in.len -= n;
}

/* Reads body bytes from c->in. 1 complete, 0 more needed, -STATUS refused: -400 broken
 * chunked framing, -413 a chunked body over the limit, -500 out of memory, -503 the
 * worker went over its buffer budget while the body came (many large bodies at once). */
static int read_body(ib_worker_t *w, ib_client_t *c)
{
    /* A body of unknown length (chunked) is counted as it comes; one of known length was
     * counted whole at its head. */
    if (c->body_need < 0 && ib_over_budget(w) && c->in.len > 0 && c->route < IB_ROUTE_MODELS) {
        ib_client_account(w, c); /* what it holds now counts (its own growth may be why) */
        if (ib_over_budget(w))
            return -503;
    }
    if (c->body_need >= 0) {
        size_t take = c->in.len < (size_t)c->body_need ? c->in.len : (size_t)c->body_need;
        if (ib_buf_try_append(&c->body, c->in.ptr, take) != 0)
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
    if (ib_buf_try_append(&c->body, c->in.ptr, sz) != 0)
        return -500;
    if (rc >= 0) { /* bytes after the body (a pipelined request) follow the decoded data */
        assert(sz + (size_t)rc <= c->in.len);
        memmove(c->in.ptr, c->in.ptr + sz, (size_t)rc);
        c->in.len = (size_t)rc;
        return 1;
    }
    c->in.len = 0;
    return 0;
}

void ib_request_refuse(ib_worker_t *w, ib_client_t *c, int status)
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
    case 503: msg = "ibrain is over its memory budget; retry shortly"; break;
    default: msg = "malformed HTTP request"; status = 400; break;
    }
    c->keepalive = 0;
    c->in.len = 0;
    if (status == 503)
        ib_counter_add(&w->m.shed, 1);
    ib_respond_error(w, c, status, msg, status >= 500 ? "server_error" : "invalid_request_error", NULL,
                     status == 503 ? "memory_limit" : NULL, status == 503 ? "Retry-After: 1" : NULL);
}

/* What the head says of the exchange: route, framing, request id, forwarded headers. */
static void take_head(ib_worker_t *w, ib_client_t *c, const ib_http_req_t *req)
{
    c->route = ib_route_of(req->path);
    c->keepalive = req->keepalive;
    c->minor = req->minor_version;
    c->is_get = req->method.len == 3 && memcmp(req->method.ptr, "GET", 3) == 0;
    if (req->request_id.len > 0 && req->request_id.len < sizeof(c->request_id)) {
        memcpy(c->request_id, req->request_id.ptr, req->request_id.len);
        c->request_id[req->request_id.len] = '\0';
    } else {
        make_request_id(c->request_id, w->id, ++w->next_request_id);
    }
    ib_buf_append(&c->method_path, req->method.ptr, req->method.len);
    ib_buf_append(&c->method_path, " ", 1);
    ib_buf_append(&c->method_path, req->path.ptr, req->path.len);
    c->debug = 0;
    c->session_key =
        req->session_id.len ? XXH3_64bits_withSeed(req->session_id.ptr, req->session_id.len, 0x5e55) | 1 : 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct phr_header *h = &req->headers[i];
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
    c->body_need = req->chunked ? -1 : (req->content_length > 0 ? req->content_length : 0);
    memset(&c->body_dec, 0, sizeof(c->body_dec));
    c->body_dec.consume_trailer = 1;
}

/* A head in c->in: 1 taken (state IB_C_BODY), 0 incomplete, -1 refused. */
static int read_head(ib_worker_t *w, ib_client_t *c)
{
    ib_http_limits_t lim = {w->px->cfg.max_head_bytes, w->px->cfg.max_body_bytes};
    ib_http_req_t req;
    int n = ib_http_parse_request(c->in.ptr, c->in.len, &lim, &req);
    if (n == 0) {
        /* The header timeout runs from the head's first byte, whatever trickles in after
         * it (a slow-loris client must not push it out line by line). */
        if (!c->head_started) {
            c->head_started = 1;
            c->deadline_ns = ib_deadline(request_timeout_ms(w, c));
        }
        return 0;
    }
    c->head_started = 0;
    c->t_start = ib_now_ns();
    ib_poll_request(&w->poll, c);
    ib_exchange_reset(c);
    if (n < 0) {
        c->route = IB_ROUTE_NONE;
        ib_request_refuse(w, c, -n);
        return -1;
    }
    assert((size_t)n <= c->in.len);
    take_head(w, c, &req);
    int expect = req.expect_continue;
    consume_in(c, (size_t)n);
    if (c->over_cap && (c->body_need < 0 || c->body_need > 65536)) { /* not worth reading to be refused */
        refuse_over_cap(w, c);
        return -1;
    }
    /* Over the buffer budget, a request for a replica (its body, its upstream copy, its
     * answer) is refused before its body is read; /health and /metrics still answer. */
    if (c->route < IB_ROUTE_MODELS && !c->over_cap && w->buf_budget != UINT64_MAX) {
        /* A body of known length is room taken now: reserved exactly and counted before its
         * first byte, with its upstream copy to come, so that many large bodies arriving at
         * once cannot pass the budget together. */
        uint64_t body = c->body_need > 0 ? (uint64_t)c->body_need : 0;
        ib_client_account(w, c); /* the last exchange's buffers were just given back */
        if (w->buf_bytes + 2 * body > w->buf_budget ||
            (body > 0 && ib_buf_try_reserve_exact(&c->body, (size_t)body) != 0)) {
            ib_request_refuse(w, c, 503);
            return -1;
        }
        ib_client_account(w, c);
    }
    c->state = IB_C_BODY;
    /* The body must be read before routing; a 100 Continue asks for it. */
    if (expect && c->body_need != 0 && c->in.len == 0) {
        ib_out_append(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
        ib_client_flush(w, c);
    }
    c->deadline_ns = ib_deadline(request_timeout_ms(w, c));
    return 1;
}

void ib_request_input(ib_worker_t *w, ib_client_t *c)
{
    while (!c->closing && !c->close_after_send) {
        if (c->state == IB_C_HEAD) {
            /* Answers the client does not read pile up: further pipelined requests wait
             * (on_client_send resumes them), and c->in fills to its cap. */
            if (ib_out_pending(c) > ib_out_high_water(w))
                return;
            if (c->in.len == 0 || read_head(w, c) <= 0)
                return;
        }
        if (c->state == IB_C_BODY) {
            int rc = read_body(w, c);
            if (rc < 0) {
                ib_request_refuse(w, c, -rc);
                return;
            }
            if (rc == 0)
                return;
            request_ready(w, c);
            continue;
        }
        assert(c->state == IB_C_UPSTREAM);
        return; /* pipelined bytes wait in c->in */
    }
}
