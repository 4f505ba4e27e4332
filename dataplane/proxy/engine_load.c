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

/* A request count from an engine's page, within 0..2^20. */
static int64_t clamp_count(double v)
{
    return v > 0 ? (v < (double)(1 << 20) ? (int64_t)llround(v) : (int64_t)1 << 20) : 0;
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
            /* bounded: the router multiplies them by a request's blocks */
            atomic_store_explicit(&r->engine_running, clamp_count(l.running), memory_order_relaxed);
            atomic_store_explicit(&r->engine_waiting, clamp_count(l.waiting), memory_order_relaxed);
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

int ib_engine_load_start(ib_proxy_t *px)
{
    if (px->cfg.engine_metrics_ms == 0)
        return 0;
    px->engine_load = (ib_replica_reader_t){
        .name = "ib-engine-load", .period_ms = px->cfg.engine_metrics_ms, .read_one = read_one, .px = px};
    return ib_replica_reader_start(&px->engine_load);
}

void ib_engine_load_stop(ib_proxy_t *px) { ib_replica_reader_stop(&px->engine_load); }
