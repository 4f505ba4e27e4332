/*
 * One ibrain worker: an io_uring event loop owning its listener, its client connections
 * and its upstream keep-alive pools (include/ibrain/proxy.h, internal.h). This file holds
 * the loop and the connections' lifecycle: ring set-up and busy polling, completions
 * dispatched by kind, accepts, client receives and sends, closing and freeing, timeouts,
 * and the drain. What a request means is read in request.c, routed in routing.c, answered
 * locally in local.c or exchanged with a replica in exchange.c (connections: upstream.c).
 *
 * Operations carry their object and kind in user_data (ib_set_data). Every object counts
 * its in-flight operations; closing an object shuts its socket down (which ends its
 * receives) and the object is freed when the last operation has completed, never earlier.
 */
#include "internal.h"

#include <assert.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TICK_MS 100

_Static_assert(_Alignof(ib_client_t) >= 16 && _Alignof(ib_upstream_t) >= 16, "user_data packs the op in 4 bits");
_Static_assert(IB_OP_UCANCEL <= IB_OP_MASK, "ops fit the mask");

static void recycle_buffer(ib_worker_t *w, unsigned bid)
{
    io_uring_buf_ring_add(w->br, w->buf_base + (size_t)bid * w->buf_size, w->buf_size, (unsigned short)bid,
                          io_uring_buf_ring_mask(w->nbufs), 0);
    io_uring_buf_ring_advance(w->br, 1);
}

static void arm_client_recv(ib_worker_t *w, ib_client_t *c)
{
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_recv_multishot(sqe, c->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = IB_BGID;
    ib_set_data(sqe, c, IB_OP_CRECV);
    c->ops++;
    c->recv_armed = 1;
}

void ib_client_close(ib_worker_t *w, ib_client_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->state = IB_C_CLOSED;
    if (c->up != NULL) {
        ib_counter_add(&w->m.client_aborts, 1);
        ib_exchange_abandon(w, c);
    }
    assert(c->up == NULL && !c->inflight_counted);
    shutdown(c->fd, SHUT_RDWR); /* ends the multishot receive */
    if (c->ops == 0) {
        /* Nothing in flight would bring it to free_client (its receive ended with a
         * half-close, and nothing was left to send): a no-op's completion does. */
        struct io_uring_sqe *sqe = ib_get_sqe(w);
        io_uring_prep_nop(sqe);
        ib_set_data(sqe, c, IB_OP_CNOP);
        c->ops++;
    }
}

void ib_client_account(ib_worker_t *w, ib_client_t *c)
{
    size_t m = c->in.cap + c->out[0].cap + c->out[1].cap + c->method_path.cap + c->fwd_headers.cap + c->body.cap +
               c->upreq.cap + c->resp_head.cap;
    w->buf_bytes += m - c->mem; /* modulo 2^64: a smaller m subtracts */
    c->mem = m;
}

static void free_client(ib_worker_t *w, ib_client_t *c)
{
    assert(c->closing && c->ops == 0 && c->up == NULL);
    assert(w->nclients > 0);
    w->buf_bytes -= c->mem;
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        w->clients_tail = c->prev;
    w->nclients--;
    w->nadmin -= c->admin != 0;
    w->nover_cap -= c->over_cap != 0;
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

/* ---- completions ---- */

static void arm_accept(ib_worker_t *w)
{
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_multishot_accept(sqe, w->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    ib_set_data(sqe, w, IB_OP_ACCEPT);
}

/* An accept failed for want of a resource (descriptors, buffers, memory): the connection
 * stays in the listen backlog, and accepting again at once fails again at once. Accepts
 * pause for a back-off (100 ms doubling to 1.6 s, resumed by the tick) while the worker
 * serves and closes what it has; logged once per episode, counted each time. */
static void accept_failed(ib_worker_t *w, int err)
{
    ib_counter_add(&w->m.accept_errors, 1);
    if (w->accept_backoff_ms == 0)
        fprintf(stderr, "ibrain: worker %u: cannot accept connections: %s; pausing accepts until it passes\n", w->id,
                strerror(err));
    w->accept_backoff_ms = w->accept_backoff_ms ? (w->accept_backoff_ms < 1600 ? w->accept_backoff_ms * 2 : 1600) : 100;
    w->accept_resume_ns = ib_deadline(w->accept_backoff_ms);
    w->accept_paused = 1;
}

static int evict_idle(ib_worker_t *w);
static ib_client_t *add_client(ib_worker_t *w, int fd, int admin);

/* Past IB_MAX_OVER_CAP connections already waiting to be told 503: the new one is told at
 * once and closed, without becoming a client (no state, no ring operation). A fresh
 * socket's send buffer is empty, so the answer leaves at once; the client's request is not
 * read, and may turn the answer into a reset. */
#define REFUSED_BODY                                                                                                   \
    "{\"error\":{\"message\":\"ibrain is at its connection limit; retry shortly\",\"type\":\"server_error\","       \
    "\"code\":\"connection_limit\"}}\n"
static void refuse_connection(int fd)
{
    static const char resp[] = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                               "Retry-After: 1\r\nConnection: close\r\nContent-Length: 121\r\n\r\n" REFUSED_BODY;
    _Static_assert(sizeof(REFUSED_BODY) - 1 == 121, "Content-Length matches the body");
    ssize_t n = send(fd, resp, sizeof(resp) - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)n; /* a client already gone gets nothing */
    close(fd);
}

static void arm_accept_admin(ib_worker_t *w)
{
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_multishot_accept(sqe, w->admin_fd, NULL, NULL, SOCK_CLOEXEC);
    ib_set_data(sqe, w, IB_OP_ACCEPT_ADMIN);
}

static void on_accept(ib_worker_t *w, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (cqe->res < 0) {
        int err = -cqe->res;
        if (!more && !w->draining) {
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM)
                accept_failed(w, err);
            else
                arm_accept(w); /* a connection that failed on its own (ECONNABORTED ...) */
        }
        return;
    }
    if (!more && !w->draining)
        arm_accept(w);
    w->accept_backoff_ms = 0;
    int fd = cqe->res;
    if (w->draining) {
        close(fd);
        return;
    }
    if (w->nclients - w->nadmin - w->nover_cap >= w->px->cfg.max_conns_per_worker && !evict_idle(w)) {
        ib_counter_add(&w->m.conns_refused, 1);
        /* Told why: its request is read (a second at most) and answered 503, so that the
         * client sees the answer instead of a reset; past IB_MAX_OVER_CAP such, at once. */
        if (w->nover_cap >= IB_MAX_OVER_CAP) {
            refuse_connection(fd);
            return;
        }
        ib_client_t *c = add_client(w, fd, 0);
        if (c != NULL) {
            c->over_cap = 1;
            w->nover_cap++;
            c->deadline_ns = ib_deadline(IB_OVER_CAP_TIMEOUT_MS);
        }
        return;
    }
    add_client(w, fd, 0);
}

/* The admin listener's connections: /health, /ready, /metrics and /v1/models only, not
 * counted against the cap, so that they answer when the clients fill it. */
static void on_accept_admin(ib_worker_t *w, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (cqe->res < 0) {
        int err = -cqe->res;
        if (!more && !w->draining) {
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                accept_failed(w, err); /* the same back-off: the tick re-arms both */
                w->admin_paused = 1;
            } else {
                arm_accept_admin(w);
            }
        }
        return;
    }
    if (!more && !w->draining)
        arm_accept_admin(w);
    if (w->draining) {
        close(cqe->res);
        return;
    }
    add_client(w, cqe->res, 1);
}

/* At the cap: closes the idle keep-alive connection that has waited longest (answered
 * before, no request in progress, nothing to send) to make room. A connection whose first
 * request has not come yet is not idle: in a burst of new connections at the cap, each
 * would otherwise close the one accepted before it. 0 when every connection is busy. */
static int evict_idle(ib_worker_t *w)
{
    for (ib_client_t *c = w->clients_tail; c != NULL; c = c->prev)
        if (!c->closing && !c->admin && c->answered > 0 && c->state == IB_C_HEAD && c->in.len == 0 && !c->sending &&
            c->out[c->out_cur].len == 0) {
            ib_counter_add(&w->m.conns_evicted, 1);
            ib_client_close(w, c);
            return 1;
        }
    return 0;
}

static ib_client_t *add_client(ib_worker_t *w, int fd, int admin)
{
    ib_client_t *c = aligned_alloc(16, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return NULL;
    }
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->replica = -1;
    c->route = IB_ROUTE_NONE;
    c->keepalive = 1;
    c->minor = 1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->admin = admin;
    w->nadmin += admin != 0;
    c->next = w->clients;
    if (w->clients)
        w->clients->prev = c;
    else
        w->clients_tail = c;
    w->clients = c;
    w->nclients++;
    ib_counter_add(&w->m.conns_accepted, 1);
    ib_counter_add(&w->m.conns_open, 1);
    c->deadline_ns = ib_deadline(w->px->cfg.header_timeout_ms);
    arm_client_recv(w, c);
    return c;
}

static void on_client_recv(ib_worker_t *w, ib_client_t *c, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (!more)
        c->recv_armed = 0;
    if (cqe->res > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        /* Refused (closing after its answer): what else it sends is dropped, not kept. */
        if (!c->closing && !c->close_after_send) {
            if (c->in.len + (size_t)cqe->res > IB_IN_MAX_PIPELINED + w->px->cfg.max_head_bytes ||
                ib_buf_try_append(&c->in, w->buf_base + (size_t)bid * w->buf_size, (size_t)cqe->res) != 0) {
                recycle_buffer(w, bid);
                ib_client_close(w, c);
                return;
            }
        }
        recycle_buffer(w, bid);
        if (!c->closing && c->state != IB_C_UPSTREAM)
            ib_request_input(w, c);
        if (c->in.len == 0) /* a large body or a pipelined burst, consumed */
            ib_buf_shrink(&c->in, 65536);
        if (!more && !c->closing)
            arm_client_recv(w, c);
        return;
    }
    if (cqe->res == -ENOBUFS) { /* out of provided buffers: try again */
        if (!c->closing && !more)
            arm_client_recv(w, c);
        return;
    }
    /* EOF after a complete request: a half-close (shutdown(SHUT_WR)) or a client gone
     * altogether, which the server cannot tell apart. The request being answered is
     * answered, then the connection closed (bytes of a later request it left are
     * dropped); a client that is really gone shows itself by the first send that fails.
     * With --abort-on-client-close, a proxied request is abandoned instead, sparing the
     * replica a whole generation for nobody (HAProxy's abortonclose). */
    int answering = c->state == IB_C_UPSTREAM || c->sending || ib_out_pending(c) > 0;
    if (cqe->res == 0 && !c->closing && answering &&
        !(c->state == IB_C_UPSTREAM && w->px->cfg.abort_on_client_close)) {
        c->keepalive = 0;
        c->close_after_send = 1;
        c->in.len = 0;
        return;
    }
    if (!answering && (c->state == IB_C_BODY || (c->state == IB_C_HEAD && c->in.len > 0))) {
        c->status = 400;
        ib_count_request(w, c, 400); /* a truncated request */
    }
    ib_client_close(w, c);
}

static void on_client_send(ib_worker_t *w, ib_client_t *c, struct io_uring_cqe *cqe)
{
    ib_buf_t *b = &c->out[!c->out_cur];
    if (cqe->res < 0) {
        c->sending = 0;
        ib_client_close(w, c);
        return;
    }
    c->send_off += (size_t)cqe->res;
    if (c->send_off < b->len && !c->closing) {
        c->send_progress++; /* it moved: the client reads */
        struct io_uring_sqe *sqe = ib_get_sqe(w);
        io_uring_prep_send(sqe, c->fd, b->ptr + c->send_off, b->len - c->send_off, MSG_NOSIGNAL);
        ib_set_data(sqe, c, IB_OP_CSEND);
        c->ops++;
        return;
    }
    c->sending = 0;
    ib_buf_shrink(b, 256u << 10);
    if (c->closing)
        return;
    ib_client_flush(w, c);
    if (c->upstream_blocked && c->up != NULL && ib_out_pending(c) <= ib_out_high_water(w) / 2) {
        c->upstream_blocked = 0;
        ib_upstream_arm_recv(w, c->up); /* still being cancelled: its last completion re-arms it */
    }
    /* Pipelined requests parked while the answers piled up (ib_request_input). */
    if (!c->closing && c->state == IB_C_HEAD && c->in.len > 0 && ib_out_pending(c) <= ib_out_high_water(w) / 2)
        ib_request_input(w, c);
}

/* The data of a receive is in a provided buffer, recycled once the exchange took it. */
static void on_upstream_recv(ib_worker_t *w, ib_upstream_t *u, struct io_uring_cqe *cqe)
{
    int more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    if (cqe->res > 0) {
        unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
        assert(bid < w->nbufs && (uint32_t)cqe->res <= w->buf_size);
        ib_exchange_on_recv(w, u, cqe->res, more, w->buf_base + (size_t)bid * w->buf_size);
        recycle_buffer(w, bid);
        return;
    }
    ib_exchange_on_recv(w, u, cqe->res, more, NULL);
}

static void check_timeouts(ib_worker_t *w, uint64_t now)
{
    for (ib_client_t *c = w->clients, *next; c != NULL; c = next) {
        next = c->next;
        if (c->closing)
            continue;
        /* A client that accepts no byte of its answer for --send-timeout-ms (it stopped
         * reading, or reads a byte an hour) would hold its replica's slot and our buffers
         * for ever: closed, its exchange abandoned (the replica sees the cancel). The tick
         * times it from when it last saw the count of sends and completions move, so that
         * no send reads the clock. */
        if (c->send_progress != c->send_seen) { /* timed here, not on every send */
            c->send_seen = c->send_progress;
            c->send_since_ns = now;
        } else if (c->sending && now - c->send_since_ns > (uint64_t)w->px->cfg.send_timeout_ms * 1000000ull) {
            ib_counter_add(&w->m.send_timeouts, 1);
            ib_client_close(w, c);
            continue;
        }
        if (c->state == IB_C_UPSTREAM && c->up != NULL && c->upstream_blocked) {
            /* Paused for a client that is behind: the replica's silence is ours, not a
             * hang or a timeout of its own (the client's send timeout governs). */
            c->up->last_rx_ns = now;
            c->up->deadline_ns = now + (uint64_t)w->px->cfg.upstream_timeout_ms * 1000000ull;
            continue;
        }
        if (c->state == IB_C_UPSTREAM && c->up != NULL) {
            /* A replica that hangs (its health probes unanswered) holds this exchange, and
             * has sent nothing for it for as long: retried elsewhere before the first
             * byte, ended cleanly after it. A stream still flowing is left alone. */
            if (atomic_load_explicit(&w->px->replicas[c->up->replica].hung, memory_order_relaxed) &&
                now - c->up->last_rx_ns >= (uint64_t)w->px->cfg.probe_ms * w->px->cfg.eject_after_failures * 1000000ull)
                ib_exchange_failed(w, c, IB_UPERR_UNRESPONSIVE, 0);
            else if (now > c->up->deadline_ns)
                ib_exchange_failed(w, c, c->up->state == IB_U_CONNECTING ? IB_UPERR_CONNECT : IB_UPERR_TIMEOUT,
                                c->up->state != IB_U_CONNECTING);
            continue;
        }
        if (c->deadline_ns == 0 || now <= c->deadline_ns || c->sending)
            continue;
        if (c->state == IB_C_BODY || (c->state == IB_C_HEAD && c->in.len > 0)) {
            if (c->state == IB_C_HEAD)
                c->route = IB_ROUTE_NONE, c->t_start = now;
            ib_request_refuse(w, c, 408);
        }
        else
            ib_client_close(w, c); /* idle keep-alive connection */
    }
    ib_upstream_close_idle(w, now, 0);
}

static void arm_tick(ib_worker_t *w)
{
    static struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = TICK_MS * 1000000};
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_timeout(sqe, &ts, 0, 0);
    ib_set_data(sqe, w, IB_OP_TICK);
}

static void arm_wake(ib_worker_t *w)
{
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_read(sqe, w->wake_fd, &w->wake_value, sizeof(w->wake_value), 0);
    ib_set_data(sqe, w, IB_OP_WAKE);
}

static void drain_idle(ib_worker_t *w);

static void start_drain(ib_worker_t *w)
{
    if (w->draining)
        return;
    w->draining = 1;
    w->drain_deadline_ns = ib_deadline(w->px->cfg.drain_timeout_ms);
    shutdown(w->listen_fd, SHUT_RDWR); /* ends the multishot accept */
    if (w->admin_fd >= 0)
        shutdown(w->admin_fd, SHUT_RDWR);
    /* Lame duck: a client that sends on its kept-alive connection now is served and told
     * Connection: close, so it reconnects to another router; closing the idle connections
     * at once would race with such a request (it would fail, unsent or unanswered). Those
     * still idle after --drain-idle-ms are closed then (drain_idle). */
    for (ib_client_t *c = w->clients; c != NULL; c = c->next)
        c->keepalive = 0;
    w->drain_idle_close_ns = ib_deadline(w->px->cfg.drain_idle_ms);
    if (w->px->cfg.drain_idle_ms == 0)
        drain_idle(w);
}

/* Draining, past --drain-idle-ms: the connections with nothing in flight are closed. */
static void drain_idle(ib_worker_t *w)
{
    w->drain_idle_close_ns = 0;
    for (ib_client_t *c = w->clients, *next; c != NULL; c = next) {
        next = c->next;
        if (c->state == IB_C_HEAD && c->in.len == 0 && !c->sending)
            ib_client_close(w, c);
    }
    ib_upstream_close_idle(w, 0, 1);
}

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
        ib_upstream_free(w, u);
}

/* A completion's operation and object, from its user_data (pointer | op, ib_set_data). */
static unsigned cqe_op(const struct io_uring_cqe *cqe) { return (unsigned)(io_uring_cqe_get_data64(cqe) & IB_OP_MASK); }
static void *cqe_obj(const struct io_uring_cqe *cqe)
{
    return (void *)(uintptr_t)(io_uring_cqe_get_data64(cqe) & ~(uint64_t)IB_OP_MASK);
}

static void handle_cqe(ib_worker_t *w, struct io_uring_cqe *cqe)
{
    void *obj = cqe_obj(cqe);
    switch (cqe_op(cqe)) {
    case IB_OP_ACCEPT: on_accept(w, cqe); break;
    case IB_OP_ACCEPT_ADMIN: on_accept_admin(w, cqe); break;
    case IB_OP_CRECV:
        on_client_recv(w, obj, cqe);
        ib_client_account(w, obj);
        op_done_client(w, obj, cqe);
        break;
    case IB_OP_CSEND:
        on_client_send(w, obj, cqe);
        ib_client_account(w, obj);
        op_done_client(w, obj, cqe);
        break;
    case IB_OP_CNOP: op_done_client(w, obj, cqe); break;
    case IB_OP_UCONN: ib_exchange_on_connect(w, obj, cqe->res); op_done_upstream(w, obj, cqe); break;
    case IB_OP_USEND: ib_exchange_on_send(w, obj, cqe->res); op_done_upstream(w, obj, cqe); break;
    case IB_OP_UCANCEL: op_done_upstream(w, obj, cqe); break; /* the receive's own completion tells */
    case IB_OP_URECV: {
        ib_client_t *c = ((ib_upstream_t *)obj)->client; /* freed only by its own completions */
        on_upstream_recv(w, obj, cqe);
        if (c != NULL)
            ib_client_account(w, c);
        op_done_upstream(w, obj, cqe);
        break;
    }
    case IB_OP_TICK:
        check_timeouts(w, ib_now_ns());
        atomic_store_explicit(&w->m.buf_bytes.v, w->buf_bytes, memory_order_relaxed); /* a gauge */
        if (w->draining && w->drain_idle_close_ns != 0 && ib_now_ns() >= w->drain_idle_close_ns)
            drain_idle(w);
        if (w->accept_paused && !w->draining && ib_now_ns() >= w->accept_resume_ns) {
            w->accept_paused = 0;
            arm_accept(w);
            if (w->admin_paused) {
                w->admin_paused = 0;
                arm_accept_admin(w);
            }
        }
        if (w->id == 0) {
            const ib_rtab_t *rt = atomic_load_explicit(&w->px->rtab, memory_order_acquire);
            for (uint32_t i = 0; i < rt->nworkloads; i++)
                ib_affinity_tick(&rt->wl[i].router->table, ib_now_ns() / 1000000u);
        }
        arm_tick(w);
        break;
    case IB_OP_WAKE:
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
    int listen_fd = w->listen_fd, admin_fd = w->admin_fd;
    memset(w, 0, sizeof(*w));
    w->px = px;
    w->id = id;
    w->listen_fd = listen_fd;
    w->admin_fd = admin_fd;
    w->wake_fd = eventfd(0, EFD_CLOEXEC);
    w->idle = calloc(IB_MAX_REPLICAS, sizeof(*w->idle));
    w->json = ib_json_parser_new(px->cfg.max_body_bytes);
    w->rng = 0x9e3779b97f4a7c15ull * (id + 1);
    w->poll.spin_ns = (uint64_t)px->cfg.busy_poll_us * 1000u / 2; /* a fresh worker polls its whole window */
    w->buf_budget = px->cfg.max_buffer_bytes == UINT64_MAX ? UINT64_MAX : px->cfg.max_buffer_bytes / px->cfg.workers;
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
    struct io_uring_buf_reg reg = {.ring_addr = (unsigned long)w->br, .ring_entries = w->nbufs, .bgid = IB_BGID};
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
    if (w->admin_fd >= 0)
        close(w->admin_fd);
}

/* Waits for at least one completion. With --busy-poll-us (default 50), first polls the
 * ring for that long, running its deferred completions (io_uring_get_events) and
 * yielding the core between polls. A sleeping worker is woken by an interrupt and, on a
 * VM, through the hypervisor, which costs tens of microseconds per request at light
 * load; a polling one sees the next request as soon as its data is queued. The window
 * starts at the last completion, so an idle worker sleeps, and sched_yield() hands the
 * core to whatever else is runnable there (a co-located engine). It polls only while
 * polling pays (ib_poll_t in internal.h). */
static void wait_completions(ib_worker_t *w)
{
    uint64_t poll_ns = (uint64_t)w->px->cfg.busy_poll_us * 1000u;
    if (poll_ns == 0 || w->draining) {
        io_uring_submit_and_wait(&w->ring, 1);
        return;
    }
    if (io_uring_cq_ready(&w->ring) > 0) { /* more to handle: what is queued is submitted, no wait */
        io_uring_submit(&w->ring);
        ib_poll_note(&w->poll, 0, poll_ns);
        return;
    }
    uint64_t start = ib_now_ns(), now = start;
    if (ib_poll_wanted(&w->poll, poll_ns, start)) {
        io_uring_submit(&w->ring);
        uint64_t window = ib_poll_window(&w->poll, poll_ns);
        for (;;) {
            io_uring_get_events(&w->ring);
            if (io_uring_cq_ready(&w->ring) > 0)
                break;
            now = ib_now_ns();
            if (now - start >= window)
                break;
            sched_yield();
        }
        int found = io_uring_cq_ready(&w->ring) > 0;
        if (found)
            now = ib_now_ns(); /* the poll's whole length, the last yield included */
        ib_counter_add(&w->m.busy_poll_ns, now - start);
        ib_poll_result(&w->poll, found, now - start);
        if (found) {
            ib_poll_note(&w->poll, now - start, poll_ns);
            return;
        }
    }
    /* Not polling: one system call submits and waits, where a submit and then a wait took
     * two (with the backend on the proxy's core, saturated: 13.5 us per request against
     * the earlier build's 11.5 with two, 11.2 against 13.0 with one). */
    io_uring_submit_and_wait(&w->ring, 1);
    ib_poll_note(&w->poll, ib_now_ns() - start, poll_ns);
}

/* Whether a completion is a streamed response's chunk, received or sent on (ib_poll_t's
 * stream_ns). Read before the completion is handled (which may free its connection). */
static int stream_step(const struct io_uring_cqe *cqe)
{
    void *obj = cqe_obj(cqe);
    switch (cqe_op(cqe)) {
    case IB_OP_URECV: {
        const ib_client_t *c = ((const ib_upstream_t *)obj)->client;
        return c != NULL && c->head_sent && cqe->res > 0;
    }
    case IB_OP_CSEND: {
        const ib_client_t *c = obj;
        return c->state == IB_C_UPSTREAM && c->head_sent;
    }
    default: return 0;
    }
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
    arm_accept(w);
    if (w->admin_fd >= 0)
        arm_accept_admin(w);
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
        int streams = 0;
        io_uring_for_each_cqe(&w->ring, head, cqe)
        {
            streams |= stream_step(cqe);
            handle_cqe(w, cqe);
            count++;
        }
        io_uring_cq_advance(&w->ring, count);
        if (streams)
            w->poll.stream_ns = ib_now_ns();
    }
    /* Past the deadline: close what is left; the process is about to exit. */
    for (ib_client_t *c = w->clients; c != NULL; c = c->next)
        ib_client_close(w, c);
    return NULL;
}
