/*
 * The engines' own load: a thread that reads each replica's /metrics every
 * --engine-metrics-ms, off the request path (include/ibrain/engine_metrics.h names what it
 * reads). ibrain's own in-flight counters (and other instances', through write-back) only
 * see the traffic ibrain instances send; an engine also serving another router, batch
 * jobs or retries of its own queues work they cannot see. The router then takes, per
 * replica, the larger of ibrain's in-flight count and the engine's running + waiting
 * (routing.c, replica_view). A replica whose page cannot be read, or lacks those names,
 * is routed on ibrain's counters alone, and /metrics says so
 * (ibrain_replica_engine_metrics_up 0).
 */
#include "internal.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "ibrain/engine_metrics.h"

int ib_engine_load_fresh(const ib_proxy_t *px, const ib_replica_t *r, uint64_t now_ns)
{
    uint64_t at = atomic_load_explicit((_Atomic uint64_t *)&r->engine_scraped_ns, memory_order_acquire);
    uint64_t period = (uint64_t)px->cfg.engine_metrics_ms * 1000000ull;
    return at != 0 && period != 0 && now_ns - at < 3 * period;
}

static void read_one(ib_proxy_t *px, const ib_replica_target_t *t, ib_buf_t *body)
{
    ib_replica_t *r = &px->replicas[t->slot];
    ib_buf_reset(body);
    int status = ib_http_get(t->hostport, "/metrics", (int)px->cfg.engine_metrics_ms, body);
    ib_engine_load_t l;
    int ok = status == 200 && ib_engine_load_parse(body->ptr, body->len, &l) == 0;
    /* under the table lock: a slot given to another replica meanwhile keeps its own */
    pthread_mutex_lock(&px->rtab_lock);
    if (atomic_load(&r->epoch) == t->epoch) {
        if (ok) {
            atomic_store_explicit(&r->engine_running, (int64_t)llround(l.running), memory_order_relaxed);
            atomic_store_explicit(&r->engine_waiting, (int64_t)llround(l.waiting), memory_order_relaxed);
            atomic_store_explicit(&r->engine_kv_permille, (uint32_t)lround(fmin(l.kv_usage, 1.0) * 1000),
                                  memory_order_relaxed);
            atomic_store_explicit(&r->engine_scraped_ns, ib_now_ns(), memory_order_release);
        } else {
            if (atomic_exchange(&r->engine_scraped_ns, 0) != 0)
                fprintf(stderr, "ibrain: replica %s: its engine's /metrics %s: routed on ibrain's own counters\n",
                        t->name, status == 200 ? "has no vLLM or SGLang load figures" : "cannot be read");
            atomic_fetch_add_explicit(&r->engine_scrape_errors, 1, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&px->rtab_lock);
}

static void *engine_load_main(void *arg)
{
    ib_proxy_t *px = arg;
    ib_replica_target_t targets[IB_MAX_REPLICAS];
    ib_buf_t body = {0};
    while (!atomic_load(&px->stopping) && !atomic_load(&px->engine_load_stop)) {
        uint64_t next = ib_now_ns() + (uint64_t)px->cfg.engine_metrics_ms * 1000000ull;
        uint32_t n = ib_replica_targets(px, targets);
        for (uint32_t i = 0; i < n && !atomic_load(&px->engine_load_stop); i++)
            read_one(px, &targets[i], &body);
        while (!atomic_load(&px->engine_load_stop) && ib_now_ns() < next) {
            struct timespec ts = {0, 10 * 1000000};
            nanosleep(&ts, NULL);
        }
    }
    ib_buf_free(&body);
    return NULL;
}

int ib_engine_load_start(ib_proxy_t *px)
{
    if (px->cfg.engine_metrics_ms == 0)
        return 0;
    atomic_store(&px->engine_load_stop, 0);
    if (pthread_create(&px->engine_load_thread, NULL, engine_load_main, px) != 0)
        return -1;
    pthread_setname_np(px->engine_load_thread, "ib-engine-load");
    px->engine_load_running = 1;
    return 0;
}

void ib_engine_load_stop(ib_proxy_t *px)
{
    if (!px->engine_load_running)
        return;
    atomic_store(&px->engine_load_stop, 1);
    pthread_join(px->engine_load_thread, NULL);
    px->engine_load_running = 0;
}
