/*
 * Upstream connections: connecting to a replica, the per-replica keep-alive pools of idle
 * connections (per worker), sends and receives, closing and freeing.
 */
#include "internal.h"

#include <assert.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

/* Upstream receives are multishot: armed once and kept through the connection's life,
 * its exchanges and its idle spells in the pool (where a replica closing it is noticed
 * at once), so that a streamed response's chunks and a kept-alive connection's answers
 * cost no re-arming each (a receive to prepare, submit and poll-arm per chunk, before).
 * The back-pressure from a slow client to the replica: the receive is cancelled while
 * the client is more than the high water mark behind, and armed again once it has
 * caught up (worker.c, on_client_send). A multishot receive takes in up to 32 buffers
 * (512 KiB) per wake-up before a cancel can land: so once a client is more than
 * IB_MULTISHOT_MAX_PENDING behind, the exchange's receives are single-shot (16 KiB past
 * the mark at most, as before), and a stream whose client keeps up stays multishot.
 * POLL_FIRST: it is mostly armed right after the request was sent, when no answer can be
 * there yet, so the kernel waits for readiness instead of trying a receive that would
 * fail first. */
/* Before Linux 6.8 a multishot receive took in all the socket had in one go (no cap on its
 * retries, "io_uring/net: limit inline multishot retries"): a paused relay could then hold
 * the replica's whole socket buffer, megabytes, past the high-water mark. There, and with
 * --upstream-recv single, receives are single-shot: each completion is the last, and the
 * same code re-arms it unless the client is behind. */
int ib_upstream_recv_mode(const char *mode, int *multishot)
{
    if (mode == NULL || strcmp(mode, "auto") == 0) {
        struct utsname u;
        unsigned major = 0, minor = 0;
        *multishot = uname(&u) == 0 && sscanf(u.release, "%u.%u", &major, &minor) == 2 &&
                     (major > 6 || (major == 6 && minor >= 8));
        return 0;
    }
    if (strcmp(mode, "multishot") == 0 || strcmp(mode, "single") == 0) {
        *multishot = mode[0] == 'm';
        return 0;
    }
    return -1;
}

void ib_upstream_arm_recv(ib_worker_t *w, ib_upstream_t *u)
{
    assert(!u->closing);
    if (u->recv_armed)
        return; /* running, or being cancelled: its last completion re-arms it (exchange.c) */
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    u->recv_multishot = w->px->upstream_multishot && (u->client == NULL || !u->client->up_single);
    if (u->recv_multishot)
        io_uring_prep_recv_multishot(sqe, u->fd, NULL, 0, 0);
    else
        io_uring_prep_recv(sqe, u->fd, NULL, 0, 0);
    sqe->ioprio |= IORING_RECVSEND_POLL_FIRST;
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = IB_BGID;
    ib_set_data(sqe, u, IB_OP_URECV);
    u->ops++;
    u->recv_armed = 1;
}

void ib_upstream_pause_recv(ib_worker_t *w, ib_upstream_t *u)
{
    if (!u->recv_armed || !u->recv_multishot || u->recv_cancelling || u->closing)
        return; /* a single-shot receive ends by itself, and is not armed again */
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)u | IB_OP_URECV, 0);
    ib_set_data(sqe, u, IB_OP_UCANCEL);
    u->ops++;
    u->recv_cancelling = 1;
}

void ib_upstream_send(ib_worker_t *w, ib_upstream_t *u)
{
    ib_client_t *c = u->client;
    assert(c != NULL && c->up == u && u->send_off < c->upreq.len);
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_send(sqe, u->fd, c->upreq.ptr + u->send_off, c->upreq.len - u->send_off, MSG_NOSIGNAL);
    ib_set_data(sqe, u, IB_OP_USEND);
    u->ops++;
}

ib_upstream_t *ib_upstream_take(ib_worker_t *w, int replica)
{
    assert(replica >= 0 && replica < IB_MAX_REPLICAS);
    ib_upstream_t *u = w->idle[replica];
    uint32_t epoch = atomic_load_explicit(&w->px->replicas[replica].epoch, memory_order_relaxed);
    while (u != NULL && (u->closing || u->epoch != epoch)) {
        /* closed by the replica while idle, or connected to the slot's previous replica */
        w->idle[replica] = u->next_idle;
        if (!u->closing)
            ib_upstream_close(w, u);
        u = w->idle[replica];
    }
    if (u == NULL)
        return NULL;
    assert(u->state == IB_U_IDLE && u->client == NULL && u->replica == replica);
    w->idle[replica] = u->next_idle;
    u->next_idle = NULL;
    u->reused = 1;
    return u;
}

ib_upstream_t *ib_upstream_connect(ib_worker_t *w, int replica)
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
    u->state = IB_U_CONNECTING;
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_connect(sqe, u->fd, (struct sockaddr *)&w->px->replicas[replica].addr, sizeof(struct sockaddr_in));
    ib_set_data(sqe, u, IB_OP_UCONN);
    u->ops++;
    ib_counter_add(&w->m.upstream_conns_opened, 1);
    w->nupstreams++;
    return u;
}

void ib_upstream_pool_put(ib_worker_t *w, ib_upstream_t *u)
{
    assert(u->client == NULL && !u->closing && u->state != IB_U_CONNECTING);
    u->state = IB_U_IDLE;
    u->deadline_ns = ib_deadline(w->px->cfg.idle_timeout_ms);
    u->next_idle = w->idle[u->replica];
    w->idle[u->replica] = u;
    /* A receive stays armed while idle, so that a replica closing the connection is
     * noticed now rather than by the next request. */
    ib_upstream_arm_recv(w, u);
}

void ib_upstream_close(ib_worker_t *w, ib_upstream_t *u)
{
    if (u->closing)
        return;
    u->closing = 1;
    if (u->ops == 0)
        ib_upstream_free(w, u); /* nothing in flight will come back for it */
    else
        shutdown(u->fd, SHUT_RDWR); /* ends its receive; freed when the last op returns */
}

void ib_upstream_free(ib_worker_t *w, ib_upstream_t *u)
{
    assert(u->closing && u->ops == 0);
    /* Unlink from the idle pool if it is there. */
    for (ib_upstream_t **p = &w->idle[u->replica]; *p != NULL; p = &(*p)->next_idle)
        if (*p == u) {
            *p = u->next_idle;
            break;
        }
    close(u->fd);
    free(u);
    assert(w->nupstreams > 0);
    w->nupstreams--;
}

void ib_upstream_close_idle(ib_worker_t *w, uint64_t now, int all)
{
    for (uint32_t r = 0; r < atomic_load_explicit(&w->px->nslots, memory_order_acquire); r++)
        for (ib_upstream_t *u = w->idle[r], *next; u != NULL; u = next) {
            next = u->next_idle; /* ib_upstream_close may free u */
            if (!u->closing && (all || now > u->deadline_ns))
                ib_upstream_close(w, u);
        }
}
