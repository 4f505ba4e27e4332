/* ibrain's /metrics: every worker's counters summed at scrape time, plus replica gauges
 * read from the shared replica table. Prometheus text format 0.0.4. */
#include "internal.h"

#include "ibrain/clock.h"

#include <stdarg.h>
#include <stdio.h>

const double ib_metrics_buckets_s[IB_NBUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                  0.25,   0.5,   1,      2.5,   5,    10,    30,    120};
static const int status_codes[IB_NSTATUS - 1] = {200, 400, 404, 405, 408, 413, 417, 429, 431, 499, 500, 501, 502, 503, 504};
static const char *const route_names[IB_ROUTE__COUNT] = {"/v1/chat/completions", "/v1/completions", "/v1/other",
                                                         "/v1/models",           "/health",         "/ready",
                                                         "/metrics",             "/debug/affinity", "none"};
static const char *const uperr_names[IB_UPERR__COUNT] = {"connect", "io", "timeout", "midstream", "unresponsive"};

int ib_metrics_status_index(int status)
{
    for (int i = 0; i < IB_NSTATUS - 1; i++)
        if (status_codes[i] == status)
            return i;
    return IB_NSTATUS - 1; /* any other status */
}

void ib_metrics_observe(ib_counter_t *buckets, ib_counter_t *sum_us, ib_counter_t *count, uint64_t ns)
{
    double s = (double)ns / 1e9;
    int k = 0;
    while (k < IB_NBUCKETS && s > ib_metrics_buckets_s[k])
        k++;
    ib_counter_add(&buckets[k], 1);
    ib_counter_add(sum_us, ns / 1000);
    ib_counter_add(count, 1);
}

/* Sum of one counter over all workers; <off> is its offset in ib_worker_metrics_t. */
static uint64_t sum(const ib_proxy_t *px, size_t off)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < px->nworkers; i++)
        total += ib_counter_get((const ib_counter_t *)((const char *)&px->workers[i].m + off));
    return total;
}
#define SUM(field) sum(px, offsetof(ib_worker_metrics_t, field))

static int histogram(const ib_proxy_t *px, ib_buf_t *b, const char *name, const char *help, size_t buckets_off,
                     size_t sum_off, size_t count_off)
{
    int rc = ib_buf_try_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int k = 0; k <= IB_NBUCKETS && !rc; k++) {
        cum += sum(px, buckets_off + (size_t)k * sizeof(ib_counter_t));
        if (k < IB_NBUCKETS)
            rc = ib_buf_try_printf(b, "%s_bucket{le=\"%g\"} %llu\n", name, ib_metrics_buckets_s[k], (unsigned long long)cum);
        else
            rc = ib_buf_try_printf(b, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
    }
    return rc || ib_buf_try_printf(b, "%s_sum %.6f\n%s_count %llu\n", name, (double)sum(px, sum_off) / 1e6, name,
                         (unsigned long long)sum(px, count_off));
}

/* Requests by route and status, durations, time to first byte. */
static int render_requests(const ib_proxy_t *px, ib_buf_t *b)
{
    int rc = ib_buf_try_printf(b, "# HELP ibrain_requests_total HTTP requests answered, by route and status.\n"
                        "# TYPE ibrain_requests_total counter\n");
    for (int r = 0; r < IB_ROUTE__COUNT && !rc; r++)
        for (int s = 0; s < IB_NSTATUS && !rc; s++) {
            uint64_t v = SUM(requests[r][s]);
            if (v != 0)
                rc = s < IB_NSTATUS - 1
                         ? ib_buf_try_printf(b, "ibrain_requests_total{route=\"%s\",status=\"%d\"} %llu\n", route_names[r],
                                   status_codes[s], (unsigned long long)v)
                         : ib_buf_try_printf(b, "ibrain_requests_total{route=\"%s\",status=\"other\"} %llu\n", route_names[r],
                                   (unsigned long long)v);
        }
    rc = rc || histogram(px, b, "ibrain_request_duration_seconds", "Time from a complete request head to the end of the response.",
                         offsetof(ib_worker_metrics_t, duration_bucket), offsetof(ib_worker_metrics_t, duration_sum_us),
                         offsetof(ib_worker_metrics_t, duration_count));
    rc = rc || histogram(px, b, "ibrain_time_to_first_byte_seconds",
                         "Time from a complete request head to the replica's response head (proxied requests).",
                         offsetof(ib_worker_metrics_t, ttfb_bucket), offsetof(ib_worker_metrics_t, ttfb_sum_us),
                         offsetof(ib_worker_metrics_t, ttfb_count));
    return rc;
}

/* Per replica: upstream errors, in flight, health, ejections. */
/* The engines' own load as last read from their /metrics (engine_load.c). */
static int render_engine_load(const ib_proxy_t *px, ib_buf_t *b, uint32_t nslots, uint64_t now)
{
#define REP(r) ((ib_replica_t *)&px->replicas[r])
#define EACH for (uint32_t r = 0; r < nslots && !rc; r++) if (atomic_load(&REP(r)->in_use))
    int rc = ib_buf_try_printf(b, "# HELP ibrain_replica_engine_metrics_up 1 while the replica's engine's own load is "
                                  "read from its /metrics (--engine-metrics-ms); 0: routed on ibrain's counters alone.\n"
                                  "# TYPE ibrain_replica_engine_metrics_up gauge\n");
    EACH rc = ib_buf_try_printf(b, "ibrain_replica_engine_metrics_up{replica=\"%s\"} %d\n", REP(r)->name,
                                ib_engine_load_fresh(px, REP(r), now));
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_engine_requests Requests the engine reports, by state "
                                    "(running, waiting), as last read.\n# TYPE ibrain_replica_engine_requests gauge\n");
    EACH {
        if (!ib_engine_load_fresh(px, REP(r), now))
            continue;
        rc = ib_buf_try_printf(b, "ibrain_replica_engine_requests{replica=\"%s\",state=\"running\"} %lld\n"
                                  "ibrain_replica_engine_requests{replica=\"%s\",state=\"waiting\"} %lld\n",
                               REP(r)->name, (long long)atomic_load(&REP(r)->engine_running), REP(r)->name,
                               (long long)atomic_load(&REP(r)->engine_waiting));
    }
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_engine_kv_cache_usage The engine's KV cache in use (0..1), "
                                    "as last read.\n# TYPE ibrain_replica_engine_kv_cache_usage gauge\n");
    EACH {
        if (ib_engine_load_fresh(px, REP(r), now))
            rc = ib_buf_try_printf(b, "ibrain_replica_engine_kv_cache_usage{replica=\"%s\"} %.3f\n", REP(r)->name,
                                   atomic_load(&REP(r)->engine_kv_permille) / 1000.0);
    }
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_engine_metrics_errors_total Reads of the engine's /metrics "
                                    "that failed or held no load figures.\n"
                                    "# TYPE ibrain_replica_engine_metrics_errors_total counter\n");
    EACH rc = ib_buf_try_printf(b, "ibrain_replica_engine_metrics_errors_total{replica=\"%s\"} %llu\n", REP(r)->name,
                                (unsigned long long)atomic_load(&REP(r)->engine_scrape_errors));
#undef EACH
#undef REP
    return rc;
}

static int render_replicas(const ib_proxy_t *px, ib_buf_t *b)
{
    int rc = 0;
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_upstream_errors_total Failures talking to a replica, by kind.\n"
                          "# TYPE ibrain_upstream_errors_total counter\n");
    uint32_t nslots = atomic_load_explicit(&((ib_proxy_t *)px)->nslots, memory_order_acquire);
#define SLOT_SHOWN(r) atomic_load_explicit(&((ib_replica_t *)&px->replicas[r])->in_use, memory_order_acquire)
    for (uint32_t r = 0; r < nslots && !rc; r++)
        for (int k = 0; k < IB_UPERR__COUNT && SLOT_SHOWN(r) && !rc; k++)
            rc = ib_buf_try_printf(b, "ibrain_upstream_errors_total{replica=\"%s\",kind=\"%s\"} %llu\n", px->replicas[r].name,
                         uperr_names[k], (unsigned long long)SUM(upstream_errors[r][k]));
    uint64_t now = ib_now_ns();
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_in_flight Requests in flight to a replica.\n"
                          "# TYPE ibrain_replica_in_flight gauge\n");
    for (uint32_t r = 0; r < nslots && !rc; r++)
        rc = !SLOT_SHOWN(r) ? 0 : ib_buf_try_printf(b, "ibrain_replica_in_flight{replica=\"%s\"} %lld\n", px->replicas[r].name,
                     (long long)ib_replica_inflight(&px->replicas[r], px->nworkers));
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_healthy 1 when the replica is not ejected by passive health checks.\n"
                          "# TYPE ibrain_replica_healthy gauge\n");
    for (uint32_t r = 0; r < nslots && !rc; r++)
        rc = !SLOT_SHOWN(r) ? 0 : ib_buf_try_printf(b, "ibrain_replica_healthy{replica=\"%s\"} %d\n", px->replicas[r].name,
                     ib_replica_healthy(&px->replicas[r], now));
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_unresponsive 1 while the replica fails its health probes "
                                    "(--probe-ms).\n# TYPE ibrain_replica_unresponsive gauge\n");
    for (uint32_t r = 0; r < nslots && !rc; r++)
        rc = !SLOT_SHOWN(r) ? 0 : ib_buf_try_printf(b, "ibrain_replica_unresponsive{replica=\"%s\"} %d\n",
                                                    px->replicas[r].name,
                                                    atomic_load(&((ib_replica_t *)&px->replicas[r])->unresponsive));
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_replica_ejections_total Times a replica was ejected after repeated failures.\n"
                          "# TYPE ibrain_replica_ejections_total counter\n");
    for (uint32_t r = 0; r < nslots && !rc; r++)
        rc = !SLOT_SHOWN(r) ? 0 : ib_buf_try_printf(b, "ibrain_replica_ejections_total{replica=\"%s\"} %llu\n", px->replicas[r].name,
                     (unsigned long long)atomic_load_explicit(&((ib_replica_t *)&px->replicas[r])->ejections,
                                                              memory_order_relaxed));
    if (px->cfg.engine_metrics_ms > 0)
        rc = rc || render_engine_load(px, b, nslots, now);
    return rc;
}

/* Retries, aborts, connections, busy polling. */
static int render_counters(const ib_proxy_t *px, ib_buf_t *b)
{
    int rc = 0;
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_retries_total Requests retried on another replica after a failure before any response byte.\n"
                       "# TYPE ibrain_retries_total counter\nibrain_retries_total %llu\n",
                       (unsigned long long)SUM(retries));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_client_send_timeouts_total Clients closed for accepting no byte of their answer "
                       "for --send-timeout-ms.\n"
                       "# TYPE ibrain_client_send_timeouts_total counter\nibrain_client_send_timeouts_total %llu\n"
                       "# HELP ibrain_client_aborts_total Requests whose client left before the response ended.\n"
                       "# TYPE ibrain_client_aborts_total counter\nibrain_client_aborts_total %llu\n"
                       "# HELP ibrain_upstream_pauses_total Times a relay stopped reading its replica because its client "
                       "was more than the high-water mark behind (1 MiB; 64 KiB over the buffer budget).\n"
                       "# TYPE ibrain_upstream_pauses_total counter\nibrain_upstream_pauses_total %llu\n",
                       (unsigned long long)SUM(send_timeouts), (unsigned long long)SUM(client_aborts),
                       (unsigned long long)SUM(upstream_pauses));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_connections_accepted_total Client connections accepted.\n"
                       "# TYPE ibrain_connections_accepted_total counter\nibrain_connections_accepted_total %llu\n",
                       (unsigned long long)SUM(conns_accepted));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_connections_refused_total Connections closed at once: the cap "
                       "(--max-conns-per-worker) was reached and no connection was idle.\n"
                       "# TYPE ibrain_connections_refused_total counter\nibrain_connections_refused_total %llu\n"
                       "# HELP ibrain_connections_evicted_total Idle keep-alive connections closed to make room at the cap.\n"
                       "# TYPE ibrain_connections_evicted_total counter\nibrain_connections_evicted_total %llu\n",
                       (unsigned long long)SUM(conns_refused), (unsigned long long)SUM(conns_evicted));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_accept_errors_total Accepts failed for want of file descriptors or memory "
                       "(accepts then pause, backing off).\n"
                       "# TYPE ibrain_accept_errors_total counter\nibrain_accept_errors_total %llu\n",
                       (unsigned long long)SUM(accept_errors));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_connections_open Client connections open.\n"
                       "# TYPE ibrain_connections_open gauge\nibrain_connections_open %lld\n",
                       (long long)(SUM(conns_open) - SUM(conns_open_dec)));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_buffer_bytes What client connections' buffers hold (bodies, upstream requests, "
                       "unsent answers).\n"
                       "# TYPE ibrain_buffer_bytes gauge\nibrain_buffer_bytes %llu\n"
                       "# HELP ibrain_buffer_budget_bytes --max-buffer-mb (default: half the cgroup's memory limit); "
                       "-1 when unbounded.\n"
                       "# TYPE ibrain_buffer_budget_bytes gauge\nibrain_buffer_budget_bytes %lld\n"
                       "# HELP ibrain_requests_shed_total Requests refused with 503: their worker was over its buffer "
                       "budget.\n"
                       "# TYPE ibrain_requests_shed_total counter\nibrain_requests_shed_total %llu\n",
                       (unsigned long long)SUM(buf_bytes),
                       px->cfg.max_buffer_bytes == UINT64_MAX ? -1ll : (long long)px->cfg.max_buffer_bytes,
                       (unsigned long long)SUM(shed));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_busy_poll_seconds_total Time workers spent polling an empty ring before sleeping "
                       "(--busy-poll-us).\n"
                       "# TYPE ibrain_busy_poll_seconds_total counter\nibrain_busy_poll_seconds_total %.6f\n",
                       (double)SUM(busy_poll_ns) / 1e9);
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_upstream_connections_opened_total Connections opened to replicas.\n"
                       "# TYPE ibrain_upstream_connections_opened_total counter\n"
                       "ibrain_upstream_connections_opened_total %llu\n",
                       (unsigned long long)SUM(upstream_conns_opened));
    return rc;
}

/* Routing decisions, matched prefixes, prompt blocks and tokens. */
static int render_routing(const ib_proxy_t *px, ib_buf_t *b)
{
    int rc = 0;
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_route_decisions_total Routing decisions of chat and completion requests, by reason.\n"
                          "# TYPE ibrain_route_decisions_total counter\n");
    for (uint32_t p = 0; p < ib_policy_count() && !rc; p++)
        for (int k = 0; k < IB_REASON__COUNT && !rc; k++)
            if (SUM(route_reason[p][k]) > 0)
                rc = ib_buf_try_printf(b, "ibrain_route_decisions_total{policy=\"%s\",reason=\"%s\"} %llu\n",
                             ib_policy_name(p), ib_route_reason_name((ib_route_reason_t)k),
                             (unsigned long long)SUM(route_reason[p][k]));
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_route_matched_blocks Prefix blocks the chosen replica was believed to hold.\n"
                          "# TYPE ibrain_route_matched_blocks histogram\n");
    uint64_t cum = 0;
    for (int k = 0; k <= IB_NMATCHED && !rc; k++) {
        cum += SUM(matched_bucket[k]);
        if (k < IB_NMATCHED)
            rc = ib_buf_try_printf(b, "ibrain_route_matched_blocks_bucket{le=\"%u\"} %llu\n", k == 0 ? 0u : 1u << (k - 1),
                         (unsigned long long)cum);
        else
            rc = ib_buf_try_printf(b, "ibrain_route_matched_blocks_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)cum);
    }
    rc = rc || ib_buf_try_printf(b, "ibrain_route_matched_blocks_sum %llu\nibrain_route_matched_blocks_count %llu\n",
                       (unsigned long long)SUM(matched_sum), (unsigned long long)SUM(matched_count));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_route_prompt_blocks_total Prefix blocks hashed from routed prompts.\n"
                       "# TYPE ibrain_route_prompt_blocks_total counter\nibrain_route_prompt_blocks_total %llu\n",
                       (unsigned long long)SUM(prompt_blocks));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_prompt_tokens_total Prompt tokens of routed requests, counted by ibrain's "
                       "tokenizer (0 without --tokenizer).\n"
                       "# TYPE ibrain_prompt_tokens_total counter\nibrain_prompt_tokens_total %llu\n"
                       "# HELP ibrain_context_length_exceeded_total Requests refused because prompt tokens + "
                       "max_tokens exceed --context-length.\n"
                       "# TYPE ibrain_context_length_exceeded_total counter\n"
                       "ibrain_context_length_exceeded_total %llu\n",
                       (unsigned long long)SUM(prompt_tokens), (unsigned long long)SUM(context_exceeded));
    return rc;
}

/* Snapshot sync and write-back (with Redis only). */
static int render_sync(const ib_proxy_t *px, ib_buf_t *b)
{
    const ib_sync_status_t *st = &px->sync_status;
    int64_t written = atomic_load_explicit(&((ib_sync_status_t *)st)->written_unix_ms, memory_order_relaxed);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double age = written > 0 ? (double)ts.tv_sec + ts.tv_nsec / 1e9 - (double)written / 1e3 : 0;
    ib_sync_status_t *sst = (ib_sync_status_t *)st;
    int rc = ib_buf_try_printf(b,
                       "# HELP ibrain_redis_up 1 while the snapshot sync is connected to Redis.\n"
                       "# TYPE ibrain_redis_up gauge\nibrain_redis_up %d\n"
                       "# HELP ibrain_snapshot_version Version of the routing snapshot in force (0: none yet).\n"
                       "# TYPE ibrain_snapshot_version gauge\nibrain_snapshot_version %llu\n",
                       atomic_load(&sst->redis_up), (unsigned long long)atomic_load(&sst->version));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_snapshot_age_seconds Time since the snapshot in force was written.\n"
                       "# TYPE ibrain_snapshot_age_seconds gauge\nibrain_snapshot_age_seconds %.3f\n"
                       "# HELP ibrain_snapshot_updates_total Snapshots applied.\n"
                       "# TYPE ibrain_snapshot_updates_total counter\nibrain_snapshot_updates_total %llu\n",
                       age, (unsigned long long)atomic_load(&sst->updates));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_redis_errors_total Redis connect, command and snapshot decode failures.\n"
                       "# TYPE ibrain_redis_errors_total counter\nibrain_redis_errors_total %llu\n"
                       "# HELP ibrain_redis_connects_total Successful (re)connections to Redis.\n"
                       "# TYPE ibrain_redis_connects_total counter\nibrain_redis_connects_total %llu\n",
                       (unsigned long long)atomic_load(&sst->errors),
                       (unsigned long long)atomic_load(&sst->reconnects));
    ib_proxy_t *mpx = (ib_proxy_t *)px;
    uint64_t ring_drops = 0;
    for (uint32_t i = 0; i < px->nworkers; i++)
        ring_drops += atomic_load_explicit(&mpx->workers[i].wb.dropped, memory_order_relaxed);
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_writeback_sent_total Prefix insertions sent to other instances.\n"
                       "# TYPE ibrain_writeback_sent_total counter\nibrain_writeback_sent_total %llu\n"
                       "# HELP ibrain_writeback_applied_total Prefix insertions from other instances applied here.\n"
                       "# TYPE ibrain_writeback_applied_total counter\nibrain_writeback_applied_total %llu\n",
                       (unsigned long long)atomic_load(&mpx->wb_sent),
                       (unsigned long long)atomic_load(&mpx->wb_applied));
    rc = rc || ib_buf_try_printf(b,
                       "# HELP ibrain_writeback_batches_received_total Write-back batches read from other instances.\n"
                       "# TYPE ibrain_writeback_batches_received_total counter\n"
                       "ibrain_writeback_batches_received_total %llu\n"
                       "# HELP ibrain_writeback_dropped_total Prefix insertions not shared (queue full or batch limit).\n"
                       "# TYPE ibrain_writeback_dropped_total counter\nibrain_writeback_dropped_total %llu\n",
                       (unsigned long long)atomic_load(&mpx->wb_batches_in),
                       (unsigned long long)(atomic_load(&mpx->wb_dropped) + ring_drops));
    return rc;
}

int ib_metrics_render(const ib_proxy_t *px, ib_buf_t *b)
{
    int rc = render_requests(px, b) || render_replicas(px, b) || render_counters(px, b) || render_routing(px, b) ||
             ib_kv_render_metrics(px, b);
    if (px->cfg.redis != NULL || px->cfg.nredis_sentinels > 0)
        rc = rc || render_sync(px, b);
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_workers Worker threads.\n# TYPE ibrain_workers gauge\nibrain_workers %u\n",
                             px->nworkers);
    return rc ? -1 : 0;
}
