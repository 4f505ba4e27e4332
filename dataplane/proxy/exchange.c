/*
 * One request's exchange with a replica: the replica chosen (or least load), its
 * in-flight and prefill accounting, the upstream request assembled once (kept for a
 * retry), the response head parsed (http/response.c) and ours sent, the body relayed as
 * it arrives — Content-Length bodies as they are, chunked and close-delimited bodies
 * re-chunked, so that ibrain always stands at a chunk boundary and can end a broken SSE
 * stream with an error event — and the failure path: retry before the first byte, a
 * clean end after it.
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

/* ---- accounting ---- */

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
    assert(c->pending_blocks >= 0);
    if (c->pending_blocks != 0) {
        pending_add(w, c->replica, -c->pending_blocks);
        c->pending_blocks = 0;
    }
}

static void release_inflight(ib_worker_t *w, ib_client_t *c)
{
    release_pending(w, c);
    if (c->inflight_counted) {
        assert(c->replica >= 0);
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
    assert(u->client == c);
    c->up = NULL;
    u->client = NULL;
    if (reusable && !u->closing && !w->draining)
        ib_upstream_pool_put(w, u);
    else
        ib_upstream_close(w, u);
}

/* An exchange's buffers are emptied for the next one; those grown past 64 KiB (a large
 * body, a long head) are freed, so that an idle keep-alive connection holds little. */
#define IB_EXCHANGE_KEEP 65536u

void ib_exchange_trim(ib_client_t *c)
{
    ib_buf_shrink(&c->body, IB_EXCHANGE_KEEP);
    ib_buf_shrink(&c->upreq, IB_EXCHANGE_KEEP);
    ib_buf_shrink(&c->resp_head, IB_EXCHANGE_KEEP);
}

void ib_exchange_reset(ib_client_t *c)
{
    assert(c->up == NULL && !c->inflight_counted && c->pending_blocks == 0);
    ib_buf_shrink(&c->method_path, IB_EXCHANGE_KEEP);
    ib_buf_shrink(&c->fwd_headers, IB_EXCHANGE_KEEP);
    ib_exchange_trim(c);
    c->request_id[0] = '\0';
    c->replica = -1;
    c->attempts = 0;
    c->tried[0] = c->tried[1] = 0;
    c->head_sent = c->status = c->sse = c->client_chunked = c->said_close = 0;
    memset(&c->resp_body, 0, sizeof(c->resp_body));
    c->up_keepalive = 1;
    c->upstream_blocked = 0;
    c->up_single = 0;
    c->t_first = 0;
    c->routed = 0;
    c->route_matched = c->route_blocks = 0;
}

void ib_exchange_abandon(ib_worker_t *w, ib_client_t *c)
{
    release_inflight(w, c);
    detach_upstream(w, c, 0);
}

/* The response was relayed completely. */
static void finish_exchange(ib_worker_t *w, ib_client_t *c)
{
    assert(c->state == IB_C_UPSTREAM && c->head_sent && c->replica >= 0);
    int until_close = c->resp_body.framing == IB_FRAMING_CLOSE;
    /* Not reusable when bytes followed the body (they would answer the next request) or
     * when the replica answered before it had our whole request. */
    int clean = !c->resp_body.trailing && c->up != NULL && c->up->send_off == c->upreq.len;
    ib_replica_ok(w->px, &w->px->replicas[c->replica]);
    release_inflight(w, c);
    detach_upstream(w, c, c->up_keepalive && !until_close && clean);
    ib_count_request(w, c, c->status);
    /* Closed after this response only when its head said so (or the body ends with the
     * close): a drain that began while it streamed leaves the connection open, so the
     * client's next request on it is answered, with Connection: close, instead of meeting
     * a closed socket (worker.c, start_drain). */
    if (c->said_close || until_close)
        c->close_after_send = 1;
    ib_exchange_reset(c);
    c->state = IB_C_HEAD;
    c->deadline_ns = ib_deadline(w->px->cfg.idle_timeout_ms);
    ib_client_flush(w, c);
    if (!c->close_after_send && c->in.len > 0)
        ib_request_input(w, c); /* a pipelined request waits */
}

void ib_exchange_failed(ib_worker_t *w, ib_client_t *c, enum ib_upstream_error kind, int timeout)
{
    assert(c->state == IB_C_UPSTREAM && c->replica >= 0);
    ib_upstream_t *u = c->up;
    int stale_reuse = u != NULL && u->reused && kind == IB_UPERR_IO && c->resp_head.len == 0;
    ib_counter_add(&w->m.upstream_errors[c->replica][c->head_sent ? IB_UPERR_MIDSTREAM : kind], 1);
    /* A pooled connection that the replica had already closed is not the replica's fault;
     * a hung replica's health is the prober's to judge (one hang would otherwise count
     * once per exchange it held, and push its ejections to their longest). */
    if (!stale_reuse && kind != IB_UPERR_UNRESPONSIVE)
        ib_replica_failed(w->px, &w->px->replicas[c->replica], ib_now_ns());
    release_inflight(w, c);
    detach_upstream(w, c, 0);
    if (!c->head_sent && c->resp_head.len == 0 && !timeout) {
        /* Nothing reached the client: the next replica not tried yet (a stale pooled
         * connection costs no attempt), up to IB_MAX_ATTEMPTS replicas in all, so that two
         * bad replicas among several (a partition and a hang at once) fail nobody. */
        if (stale_reuse) { /* not the replica's doing: it may be tried again, and it cost no attempt */
            c->attempts--;
            ib_mask_clear(c->tried, (uint32_t)c->replica);
        }
        if (c->attempts < IB_MAX_ATTEMPTS || stale_reuse) {
            ib_counter_add(&w->m.retries, 1);
            ib_exchange_dispatch(w, c, -1);
            return;
        }
        ib_respond_error(w, c, 502, "the model replica failed before responding", "server_error", NULL,
                         "upstream_error", NULL);
        return;
    }
    if (!c->head_sent) {
        ib_respond_error(w, c, timeout ? 504 : 502,
                         timeout ? "the model replica did not respond in time" : "the model replica sent a broken response",
                         "server_error", NULL, timeout ? "upstream_timeout" : "upstream_error", NULL);
        return;
    }
    if (c->sse && c->client_chunked) {
        static const char ev[] =
            "data: {\"error\":{\"message\":\"the model replica failed mid-stream\",\"type\":\"server_error\","
            "\"param\":null,\"code\":\"upstream_error\"}}\n\n";
        ib_out_chunk(c, ev, sizeof(ev) - 1);
        ib_out_append(c, "0\r\n\r\n", 5);
    }
    ib_count_request(w, c, c->status);
    c->keepalive = 0;
    c->close_after_send = 1;
    c->state = IB_C_HEAD;
    ib_client_flush(w, c);
}

/* ---- the request ---- */

/* 0, or -1 when the room for it cannot be had (the body is the client's size). */
static int build_upstream_request(ib_worker_t *w, ib_client_t *c)
{
    const ib_replica_t *r = &w->px->replicas[c->replica];
    ib_buf_t *b = &c->upreq;
    ib_buf_reset(b);
    if (ib_buf_try_reserve_exact(b, c->method_path.len + c->fwd_headers.len + c->body.len + 512 + sizeof(r->hostport) +
                                        sizeof(r->name) + sizeof(c->request_id)) != 0)
        return -1; /* the appends below then fit: none of them allocates */
    ib_buf_append(b, c->method_path.ptr, c->method_path.len);
    IB_APPEND_LIT(b, " HTTP/1.1\r\nHost: ");
    ib_append_str(b, r->hostport);
    IB_APPEND_LIT(b, "\r\n");
    ib_buf_append(b, c->fwd_headers.ptr, c->fwd_headers.len);
    IB_APPEND_LIT(b, "X-Request-Id: ");
    ib_append_str(b, c->request_id);
    IB_APPEND_LIT(b, "\r\nX-IB-Replica: ");
    ib_append_str(b, r->name);
    IB_APPEND_LIT(b, "\r\nContent-Length: ");
    ib_append_uint(b, c->body.len, 10);
    IB_APPEND_LIT(b, "\r\n\r\n");
    ib_buf_append(b, c->body.ptr, c->body.len);
    return 0;
}

/* Counts the request on <replica>: in flight, and the prefill work it queues there (the
 * blocks it is not believed to hold: all of them on a retry or an unrouted request, at
 * least one). */
static void count_on(ib_worker_t *w, ib_client_t *c, int replica)
{
    assert(!c->inflight_counted && c->pending_blocks == 0);
    c->replica = replica;
    c->attempts++;
    ib_mask_set(c->tried, (uint32_t)replica);
    inflight_add(w, replica, 1);
    c->inflight_counted = 1;
    int64_t work = c->route_blocks;
    if (c->routed && c->attempts == 1)
        work -= c->route_matched;
    c->pending_blocks = work > 0 ? work : 1;
    pending_add(w, replica, c->pending_blocks);
}

void ib_exchange_dispatch(ib_worker_t *w, ib_client_t *c, int replica)
{
    assert(c->up == NULL);
    if (replica < 0)
        replica = ib_proxy_pick(w->px, w, c->cand, c->attempts > 0 ? c->tried : NULL);
    if (replica < 0) {
        ib_respond_error(w, c, 503, "no model replica is available", "server_error", NULL, "no_replica",
                         "Retry-After: 1");
        return;
    }
    assert(replica < IB_MAX_REPLICAS);
    count_on(w, c, replica);
    ib_buf_reset(&c->resp_head);
    if (build_upstream_request(w, c) != 0) {
        release_inflight(w, c);
        ib_respond_error(w, c, 503, "ibrain is out of memory", "server_error", NULL, NULL, "Retry-After: 1");
        return;
    }
    ib_upstream_t *u = ib_upstream_take(w, replica);
    if (u == NULL && (u = ib_upstream_connect(w, replica)) == NULL) {
        ib_counter_add(&w->m.upstream_errors[replica][IB_UPERR_CONNECT], 1);
        release_inflight(w, c);
        ib_respond_error(w, c, 502, "cannot open a connection to the model replica", "server_error", NULL,
                         "upstream_error", NULL);
        return;
    }
    c->up = u;
    u->client = c;
    u->send_off = 0;
    uint64_t now = ib_now_ns(); /* one clock read for the silence mark and the deadline */
    u->last_rx_ns = now;
    c->state = IB_C_UPSTREAM;
    if (u->state == IB_U_CONNECTING) {
        u->deadline_ns = now + (uint64_t)w->px->cfg.connect_timeout_ms * 1000000ull;
        return; /* the send follows the connect */
    }
    u->state = IB_U_BUSY;
    u->deadline_ns = now + (uint64_t)w->px->cfg.upstream_timeout_ms * 1000000ull;
    ib_upstream_send(w, u);
    ib_upstream_arm_recv(w, u); /* a pooled connection's is armed already */
}

/* ---- the response ---- */

/* Our head for the client, from the replica's. */
static void send_head(ib_worker_t *w, ib_client_t *c, const ib_http_resp_t *r)
{
    ib_buf_t *o = &c->out[c->out_cur];
    IB_APPEND_LIT(o, "HTTP/1.1 ");
    ib_append_uint(o, (uint64_t)r->status, 10);
    IB_APPEND_LIT(o, " ");
    ib_buf_append(o, r->reason.ptr, r->reason.len < 64 ? r->reason.len : 64);
    IB_APPEND_LIT(o, "\r\n");
    for (size_t i = 0; i < r->nheaders; i++) {
        const struct phr_header *h = &r->headers[i];
        if (ib_http_is_hop_by_hop(h) || ib_http_name_is(h, "x-request-id") || ib_http_name_is(h, "server"))
            continue;
        if (r->framing == IB_FRAMING_CHUNKED && ib_http_name_is(h, "content-length"))
            continue; /* a chunked body's Content-Length is not the length we send */
        ib_buf_append(o, h->name, h->name_len);
        ib_buf_append(o, ": ", 2);
        ib_buf_append(o, h->value, h->value_len);
        ib_buf_append(o, "\r\n", 2);
    }
    if (c->client_chunked)
        IB_APPEND_LIT(o, "Transfer-Encoding: chunked\r\n");
    if (c->debug) {
        char line[256];
        int k = snprintf(line, sizeof(line), "X-IB-Route: policy=%s reason=%s matched=%u/%u attempts=%d\r\n",
                         ib_policy_name(c->route_policy), c->routed ? ib_route_reason_name(c->route_reason) : "retry",
                         c->route_matched, c->route_blocks, c->attempts);
        ib_buf_append(o, line, (size_t)k);
    }
    IB_APPEND_LIT(o, "Server: ibrain\r\nX-Request-Id: ");
    ib_append_str(o, c->request_id);
    IB_APPEND_LIT(o, "\r\nX-IB-Replica: ");
    ib_append_str(o, w->px->replicas[c->replica].name);
    IB_APPEND_LIT(o, "\r\n");
    if (!c->keepalive || w->draining) {
        IB_APPEND_LIT(o, "Connection: close\r\n");
        c->said_close = 1;
    }
    IB_APPEND_LIT(o, "\r\n");
}

/* Parses the upstream's response head and sends ours. 1 done, 0 need more, -1 broken. */
static int response_head(ib_worker_t *w, ib_client_t *c)
{
    ib_http_resp_t r;
    int n = ib_http_parse_response(c->resp_head.ptr, c->resp_head.len, IB_RESP_MAX_HEAD, &r);
    if (n <= 0)
        return n;
    assert((size_t)n <= c->resp_head.len);
    c->status = r.status;
    c->up_keepalive = r.keepalive;
    c->sse = r.sse;
    ib_http_body_init(&c->resp_body, &r);
    /* Chunked and close-delimited bodies are re-chunked for HTTP/1.1 clients; an HTTP/1.0
     * client reads them until we close. */
    int open_ended = r.framing == IB_FRAMING_CHUNKED || r.framing == IB_FRAMING_CLOSE;
    c->client_chunked = open_ended && c->minor >= 1;
    if (open_ended && c->minor == 0)
        c->keepalive = 0;
    send_head(w, c, &r);
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
static int relay_body(ib_client_t *c, char *p, size_t n)
{
    int rc = ib_http_body_feed(&c->resp_body, p, &n);
    if (rc < 0)
        return -1;
    if (c->resp_body.framing == IB_FRAMING_LENGTH)
        ib_out_append(c, p, n);
    else
        ib_out_chunk(c, p, n);
    if (rc == 1 && c->client_chunked)
        ib_out_append(c, "0\r\n\r\n", 5);
    return rc;
}

static void on_data(ib_worker_t *w, ib_upstream_t *u, char *p, size_t n)
{
    ib_client_t *c = u->client;
    u->last_rx_ns = ib_now_ns();
    u->deadline_ns = u->last_rx_ns + (uint64_t)w->px->cfg.upstream_timeout_ms * 1000000ull;
    int done;
    if (!c->head_sent) {
        if (ib_buf_try_append(&c->resp_head, p, n) != 0) {
            ib_exchange_failed(w, c, IB_UPERR_IO, 0);
            return;
        }
        int rc = response_head(w, c);
        if (rc < 0) {
            ib_exchange_failed(w, c, IB_UPERR_IO, 0);
            return;
        }
        if (rc == 0)
            return; /* the rest of the head follows on the same receive */
        done = relay_body(c, c->resp_head.ptr, c->resp_head.len);
        ib_buf_reset(&c->resp_head);
    } else {
        done = relay_body(c, p, n);
    }
    if (done < 0) {
        ib_exchange_failed(w, c, IB_UPERR_IO, 0);
        return;
    }
    if (done) {
        finish_exchange(w, c);
        return;
    }
    ib_client_flush(w, c);
    size_t pending = ib_out_pending(c);
    if (pending > ib_out_high_water(w) && !c->upstream_blocked) {
        c->upstream_blocked = 1;
        c->up_single = 1;
        ib_counter_add(&w->m.upstream_pauses, 1);
        ib_upstream_pause_recv(w, u);
    } else if (pending > IB_MULTISHOT_MAX_PENDING && !c->up_single) {
        c->up_single = 1; /* its last completion arms a single-shot receive */
        ib_upstream_pause_recv(w, u);
    }
}

/* ---- completions ---- */

void ib_exchange_on_connect(ib_worker_t *w, ib_upstream_t *u, int res)
{
    ib_client_t *c = u->client;
    if (c == NULL || u->closing) { /* the client left while we connected */
        ib_upstream_close(w, u);
        return;
    }
    if (res < 0) {
        ib_exchange_failed(w, c, IB_UPERR_CONNECT, 0);
        return;
    }
    assert(u->state == IB_U_CONNECTING);
    u->state = IB_U_BUSY;
    u->deadline_ns = ib_deadline(w->px->cfg.upstream_timeout_ms);
    ib_upstream_send(w, u);
    ib_upstream_arm_recv(w, u);
}

void ib_exchange_on_send(ib_worker_t *w, ib_upstream_t *u, int res)
{
    ib_client_t *c = u->client;
    if (c == NULL || u->closing)
        return;
    if (res < 0) {
        /* The receive reports the failure too; act once, here. */
        ib_exchange_failed(w, c, IB_UPERR_IO, 0);
        return;
    }
    u->send_off += (size_t)res;
    assert(u->send_off <= c->upreq.len);
    if (u->send_off < c->upreq.len)
        ib_upstream_send(w, u);
}

/* After a receive's completion: armed again unless the connection closes or its client
 * is behind (a receive still running makes it a no-op). */
static void rearm_recv(ib_worker_t *w, ib_upstream_t *u)
{
    if (!u->closing && (u->client == NULL || !u->client->upstream_blocked))
        ib_upstream_arm_recv(w, u);
}

/* A receive's completion; <more>: its multishot receive goes on. Its last completion
 * (data, out of buffers, cancelled) re-arms it unless the client is behind. */
void ib_exchange_on_recv(ib_worker_t *w, ib_upstream_t *u, int res, int more, char *data)
{
    if (!more)
        u->recv_armed = u->recv_cancelling = 0;
    if (res > 0) {
        if (u->client != NULL && !u->closing)
            on_data(w, u, data, (size_t)res);
        else
            ib_upstream_close(w, u); /* bytes on an idle connection: not HTTP we can use */
        rearm_recv(w, u);
        return;
    }
    if (res == -ENOBUFS || res == -ECANCELED) {
        rearm_recv(w, u);
        return;
    }
    ib_client_t *c = u->client;
    if (c == NULL || u->closing) {
        ib_upstream_close(w, u); /* an idle pooled connection was closed by the replica */
        return;
    }
    if (res == 0 && c->head_sent && ib_http_body_eof(&c->resp_body) == 1) { /* close-delimited body ended */
        if (c->client_chunked)
            ib_out_append(c, "0\r\n\r\n", 5);
        c->up_keepalive = 0;
        finish_exchange(w, c);
        return;
    }
    ib_exchange_failed(w, c, IB_UPERR_IO, 0);
}
