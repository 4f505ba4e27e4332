/*
 * ibrain's own endpoints, answered by the worker without a replica: /health (the process
 * serves), /ready (not draining, and: with the Redis snapshot, one has been applied, so the
 * router knows the fleet and answers for it, 404 for a model it lacks and 503 when none of
 * its replicas is up; with --replica flags, some replica is healthy), /metrics (Prometheus
 * text, metrics.c) and /v1/models (the models the routing table serves).
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "ibrain/oai_error.h"

static int render_ready(ib_worker_t *w, ib_buf_t *body, ib_local_resp_t *out)
{
    ib_proxy_t *px = w->px;
    uint64_t now = ib_now_ns();
    int healthy = 0;
    const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
    uint32_t nslots = atomic_load_explicit(&px->nslots, memory_order_acquire);
    assert(nslots <= IB_MAX_REPLICAS);
    for (uint32_t i = 0; i < nslots; i++)
        healthy += ib_mask_has(rt->all_ready, i) && ib_replica_healthy(&px->replicas[i], now);
    /* a router that knows the fleet is ready even when no replica is up: it answers with a
     * clear error, where a router taken out of its Service would refuse the connection */
    int from_snapshot = (px->cfg.redis != NULL && px->cfg.redis[0] != '\0') || px->cfg.nredis_sentinels > 0;
    int ready = (from_snapshot ? rt->version != 0 : healthy > 0) && !w->draining;
    out->status = ready ? 200 : 503;
    ib_buf_printf(body, "{\"status\":\"%s\",\"replicas_healthy\":%d}", ready ? "ready" : "not_ready", healthy);
    return 0;
}

static int render_models(ib_worker_t *w, ib_buf_t *b)
{
    ib_proxy_t *px = w->px;
    const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
    uint32_t nm = rt->version == 0 ? px->cfg.nmodels : rt->nworkloads;
    ib_buf_append(b, "{\"object\":\"list\",\"data\":[", 25);
    for (uint32_t i = 0; i < nm; i++) {
        const char *name = rt->version == 0 ? px->cfg.models[i] : rt->wl[i].model;
        ib_buf_append(b, i ? ",{\"id\":\"" : "{\"id\":\"", i ? 8 : 7);
        ib_json_escape(b, name, strlen(name));
        ib_buf_printf(b, "\",\"object\":\"model\",\"created\":%llu,\"owned_by\":\"ibrain\"}",
                      (unsigned long long)px->started_unix);
    }
    ib_buf_append(b, "]}", 2);
    return 0;
}

static int each_entry(void *ctx, uint32_t set, uint32_t tag)
{
    ib_buf_t *b = ctx;
    char tmp[48];
    int n = snprintf(tmp, sizeof(tmp), "\"%x:%x\",", set, tag);
    return ib_buf_try_append(b, tmp, (size_t)n);
}

/* GET /debug/affinity: what the table believes each replica holds ("believed"), and which
 * of those its engine's events said ("facts"), as "set:tag" of each entry (a block key k
 * is in set k & set_mask with tag (k >> 40) | 1), with its routing mode: for tests that
 * compare ibrain's belief with an engine's cache. A scan of every workload's table: not
 * for the request path. */
static int render_affinity(ib_worker_t *w, ib_buf_t *b)
{
    ib_proxy_t *px = w->px;
    const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
    int rc = ib_buf_try_printf(b, "{\"replicas\":[");
    int first = 1;
    for (uint32_t i = 0; i < rt->nworkloads && !rc; i++) {
        const ib_workload_rt_t *wl = &rt->wl[i];
        for (uint32_t k = 0; k < wl->nslots && !rc; k++) {
            uint32_t slot = wl->slots[k];
            const ib_kv_stats_t *st = &px->kv_stats[slot];
            rc = ib_buf_try_printf(b, "%s{\"name\":\"%s\",\"workload\":\"%s\",\"mode\":\"%s\",\"reason\":\"%s\","
                                      "\"set_mask\":%u,\"believed\":[",
                                   first ? "" : ",", px->replicas[slot].name, wl->id,
                                   ib_kv_mode_name(atomic_load(&st->mode)), ib_kv_reason_name(atomic_load(&st->reason)),
                                   wl->router->table.set_mask);
            for (int facts = 0; facts < 2 && !rc; facts++) {
                size_t before = b->len;
                rc = ib_affinity_each(&wl->router->table, slot, facts, each_entry, b);
                if (!rc && b->len > before)
                    b->len--; /* the last comma */
                rc = rc || ib_buf_try_printf(b, facts ? "]}" : "],\"facts\":[");
            }
            first = 0;
        }
    }
    return rc || ib_buf_try_printf(b, "]}") ? -1 : 0;
}

int ib_local_render(ib_worker_t *w, enum ib_route route, int is_get, ib_buf_t *body, ib_local_resp_t *out)
{
    assert(route == IB_ROUTE_MODELS || route == IB_ROUTE_HEALTH || route == IB_ROUTE_READY ||
           route == IB_ROUTE_METRICS || route == IB_ROUTE_DEBUG_AFFINITY);
    *out = (ib_local_resp_t){.status = 200, .ctype = "application/json", .extra_headers = NULL};
    if (!is_get) {
        out->status = 405;
        out->extra_headers = "Allow: GET";
        ib_oai_error_json(body, "method not allowed", "invalid_request_error", NULL, NULL);
        return 0;
    }
    switch (route) {
    case IB_ROUTE_HEALTH:
        ib_buf_append(body, "{\"status\":\"ok\"}", 15);
        return 0;
    case IB_ROUTE_READY:
        return render_ready(w, body, out);
    case IB_ROUTE_DEBUG_AFFINITY:
        return render_affinity(w, body);
    case IB_ROUTE_METRICS:
        out->ctype = "text/plain; version=0.0.4; charset=utf-8";
        return ib_metrics_render(w->px, body);
    default:
        return render_models(w, body);
    }
}

void ib_local_respond(ib_worker_t *w, ib_client_t *c)
{
    ib_local_resp_t r;
    ib_buf_reset(&w->scratch);
    if (ib_local_render(w, c->route, c->is_get, &w->scratch, &r) != 0) {
        ib_client_close(w, c); /* out of memory */
        return;
    }
    ib_respond(w, c, r.status, r.ctype, w->scratch.ptr, w->scratch.len, r.extra_headers);
}
