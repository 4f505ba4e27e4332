/*
 * Active health: a thread that asks each replica for GET /health every --probe-ms, off
 * the request path. Passive health (a request's failure) cannot see a replica that hangs:
 * it accepts connections and answers nothing, and the requests it holds wait for the
 * upstream timeout (5 minutes by default). A replica that fails --eject-after probes in a
 * row is marked unresponsive: no new request goes to it. When those probes got no answer
 * at all within their time (a hang, not a refused connection: a draining engine refuses
 * new connections while its streams finish), it is also marked hung, and the workers end
 * the exchanges it holds: retried elsewhere before their first byte, a clean mid-stream
 * error after it. One answer marks it responsive again.
 */
#include "internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

uint32_t ib_replica_targets(ib_proxy_t *px, ib_replica_target_t *t)
{
    uint32_t n = 0;
    pthread_mutex_lock(&px->rtab_lock);
    uint32_t nslots = atomic_load(&px->nslots);
    for (uint32_t i = 0; i < nslots; i++) {
        ib_replica_t *r = &px->replicas[i];
        if (!atomic_load(&r->in_use))
            continue;
        t[n].slot = i;
        t[n].epoch = atomic_load(&r->epoch);
        memcpy(t[n].hostport, r->hostport, sizeof(t[n].hostport));
        memcpy(t[n].name, r->name, sizeof(t[n].name));
        n++;
    }
    pthread_mutex_unlock(&px->rtab_lock);
    return n;
}

typedef ib_replica_target_t target_t;

static void apply_result(ib_proxy_t *px, ib_replica_t *r, const target_t *t, int alive, int timed_out, int status);

static void probe_one(ib_proxy_t *px, const target_t *t, ib_buf_t *body)
{
    ib_replica_t *r = &px->replicas[t->slot];
    ib_buf_reset(body);
    uint64_t t0 = ib_now_ns();
    int status = ib_http_get(t->hostport, "/health", (int)px->cfg.probe_ms, body);
    /* No answer within the probe's time is a hang; a refused or closed connection is a
     * replica that is down or draining, whose streams may still be finishing. */
    int timed_out = status < 0 && ib_now_ns() - t0 >= (uint64_t)px->cfg.probe_ms * 900000ull;
    /* Any answer below 500 is a live server (an engine without /health answers 404);
     * a 5xx is an engine saying it is not well. */
    int alive = status >= 200 && status < 500;
    /* Applied under the table lock, so that a slot given to another replica meanwhile
     * (rtab.c, same lock) does not take this one's verdict. */
    pthread_mutex_lock(&px->rtab_lock);
    if (atomic_load(&r->epoch) == t->epoch)
        apply_result(px, r, t, alive, timed_out, status);
    pthread_mutex_unlock(&px->rtab_lock);
}

static void apply_result(ib_proxy_t *px, ib_replica_t *r, const target_t *t, int alive, int timed_out, int status)
{
    if (alive) {
        atomic_store_explicit(&r->probe_failures, 0, memory_order_relaxed);
        atomic_store_explicit(&r->probe_timeouts, 0, memory_order_relaxed);
        atomic_store(&r->hung, 0);
        if (atomic_exchange(&r->unresponsive, 0))
            fprintf(stderr, "ibrain: replica %s answers its health probe again\n", t->name);
        return;
    }
    uint32_t fails = atomic_fetch_add_explicit(&r->probe_failures, 1, memory_order_relaxed) + 1;
    uint32_t hangs = timed_out ? atomic_fetch_add_explicit(&r->probe_timeouts, 1, memory_order_relaxed) + 1 : 0;
    if (!timed_out)
        atomic_store_explicit(&r->probe_timeouts, 0, memory_order_relaxed);
    uint32_t limit = px->cfg.eject_after_failures;
    if (fails >= limit && !atomic_exchange(&r->unresponsive, 1))
        fprintf(stderr, "ibrain: replica %s failed %u health probes in a row (%s): unresponsive, new requests go "
                        "elsewhere\n", t->name, fails, timed_out ? "no answer" : status < 0 ? "refused" : "5xx");
    if (hangs >= limit && !atomic_exchange(&r->hung, 1))
        fprintf(stderr, "ibrain: replica %s hangs (%u probes unanswered): the requests it holds go elsewhere\n", t->name,
                hangs);
}

static void *reader_main(void *arg)
{
    ib_replica_reader_t *rd = arg;
    ib_proxy_t *px = rd->px;
    ib_replica_target_t targets[IB_MAX_REPLICAS];
    ib_buf_t body = {0};
    while (!atomic_load(&px->stopping) && !atomic_load(&rd->stop)) {
        uint64_t next = ib_now_ns() + (uint64_t)rd->period_ms * 1000000ull;
        uint32_t n = ib_replica_targets(px, targets);
        for (uint32_t i = 0; i < n && !atomic_load(&rd->stop); i++)
            rd->read_one(px, &targets[i], &body);
        while (!atomic_load(&rd->stop) && ib_now_ns() < next) {
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    ib_buf_free(&body);
    return NULL;
}

int ib_replica_reader_start(ib_replica_reader_t *r)
{
    atomic_store(&r->stop, 0);
    if (pthread_create(&r->thread, NULL, reader_main, r) != 0)
        return -1;
    pthread_setname_np(r->thread, r->name);
    r->running = 1;
    return 0;
}

void ib_replica_reader_stop(ib_replica_reader_t *r)
{
    if (!r->running)
        return;
    atomic_store(&r->stop, 1);
    pthread_join(r->thread, NULL);
    r->running = 0;
}

int ib_probe_start(ib_proxy_t *px)
{
    if (px->cfg.probe_ms == 0)
        return 0;
    px->prober = (ib_replica_reader_t){.name = "ib-probe", .period_ms = px->cfg.probe_ms, .read_one = probe_one, .px = px};
    return ib_replica_reader_start(&px->prober);
}

void ib_probe_stop(ib_proxy_t *px) { ib_replica_reader_stop(&px->prober); }
