/*
 * ib-mock-engine's Prometheus page, under vLLM's metric names, types, labels and buckets
 * (vllm/v1/metrics/loggers.py, PrometheusStatLogger), so that a router that reads a vLLM
 * worker's load (SMG's load monitor, ibrain's scraper) reads the mock's the same way.
 * What each series mirrors, and where the mock differs, is in docs/api.md. The mock's own
 * series (cache blocks, HTTP answers, disconnects) keep the ib_engine_ prefix.
 */
#include "ibrain/mock_engine.h"

#include <stdio.h>
#include <string.h>

/* vLLM's bucket boundaries (loggers.py). */
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
                                     1.0,   2.5,   5.0,  7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
static const double itl_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                    0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double e2e_bounds[] = {0.3,  0.5,  0.8,  1.0,  1.5,   2.0,   2.5,   5.0,   10.0,  15.0,  20.0,
                                    30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};

static const char *const route_names[IB_ER__COUNT] = {"/v1/chat/completions", "/v1/completions", "/v1/models",
                                                      "/health", "/metrics", "/version", "/load",
                                                      "/reset_prefix_cache", "/debug/kv_blocks", "/tokenize",
                                                      "other"};
static const int status_codes[IB_ENGINE_NSTATUS] = {200, 400, 404, 405, 413, 500, 503};

static void hist_init(ib_engine_hist_t *h, const double *bounds, size_t n)
{
    memset(h, 0, sizeof(*h));
    h->bounds = bounds;
    h->n = (uint32_t)n;
}

void ib_engine_metrics_init(ib_engine_metrics_t *m)
{
    memset(m, 0, sizeof(*m));
    hist_init(&m->ttft, ttft_bounds, sizeof(ttft_bounds) / sizeof(ttft_bounds[0]));
    hist_init(&m->itl, itl_bounds, sizeof(itl_bounds) / sizeof(itl_bounds[0]));
    hist_init(&m->e2e, e2e_bounds, sizeof(e2e_bounds) / sizeof(e2e_bounds[0]));
}

void ib_engine_hist_observe(ib_engine_hist_t *h, double seconds)
{
    uint32_t k = 0;
    while (k < h->n && seconds > h->bounds[k])
        k++;
    h->counts[k]++;
    h->sum += seconds;
    h->count++;
}

void ib_engine_metrics_http(ib_engine_metrics_t *m, ib_engine_route_t r, int status)
{
    size_t k = 0;
    while (k < IB_ENGINE_NSTATUS && status_codes[k] != status)
        k++;
    m->http[r][k]++;
}

/* vLLM's KV-cache usage: blocks referenced by the requests it is running, over all blocks
 * (cached blocks no request holds are free in vLLM's accounting). The mock's running
 * sequences hold their prompt and their output so far. */
static double kv_usage(const ib_sched_t *s)
{
    uint64_t blocks = 0;
    const ib_seq_fifo_t *lists[] = {&s->queued, &s->decoding};
    for (size_t i = 0; i < 2; i++)
        for (const ib_seq_t *q = lists[i]->head; q != NULL; q = q->_next)
            blocks += (q->prompt_tokens + q->generated + s->cfg.block_tokens - 1) / s->cfg.block_tokens;
    if (s->prefilling != NULL)
        blocks += (s->prefilling->prompt_tokens + s->cfg.block_tokens - 1) / s->cfg.block_tokens;
    double u = (double)blocks / (double)s->cfg.cache_blocks;
    return u > 1.0 ? 1.0 : u;
}

/* prometheus_client's order: labels sorted, so engine before le before model_name. */
static int hist(ib_buf_t *b, const char *name, const char *help, const ib_engine_hist_t *h, const char *model)
{
    int rc = ib_buf_try_printf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (uint32_t k = 0; k <= h->n && rc == 0; k++) {
        cum += h->counts[k];
        if (k < h->n)
            rc = ib_buf_try_printf(b, "%s_bucket{engine=\"0\",le=\"%g\",model_name=\"%s\"} %llu\n", name, h->bounds[k],
                                   model, (unsigned long long)cum);
        else
            rc = ib_buf_try_printf(b, "%s_bucket{engine=\"0\",le=\"+Inf\",model_name=\"%s\"} %llu\n", name, model,
                                   (unsigned long long)cum);
    }
    return rc || ib_buf_try_printf(b, "%s_count{engine=\"0\",model_name=\"%s\"} %llu\n%s_sum{engine=\"0\",model_name=\"%s\"} %.9g\n",
                                   name, model, (unsigned long long)h->count, name, model, h->sum);
}

static int http_counts(ib_buf_t *b, const ib_engine_metrics_t *m)
{
    int rc = ib_buf_try_printf(b, "# HELP ib_engine_http_requests_total HTTP requests answered, by route and status.\n"
                                  "# TYPE ib_engine_http_requests_total counter\n");
    for (int r = 0; r < IB_ER__COUNT && !rc; r++)
        for (size_t k = 0; k <= IB_ENGINE_NSTATUS && !rc; k++)
            if (m->http[r][k] != 0)
                rc = ib_buf_try_printf(b, "ib_engine_http_requests_total{route=\"%s\",status=\"%s%d\"} %llu\n",
                                       route_names[r], k < IB_ENGINE_NSTATUS ? "" : "other",
                                       k < IB_ENGINE_NSTATUS ? status_codes[k] : 0, (unsigned long long)m->http[r][k]);
    return rc;
}

int ib_engine_metrics_render(ib_buf_t *b, const ib_engine_metrics_t *m, const ib_sched_t *s, const char *model)
{
    int rc = 0;
#define HEAD(name, type, help) rc = rc || ib_buf_try_printf(b, "# HELP " name " " help "\n# TYPE " name " " type "\n")
#define SERIES(name, fmt, v) rc = rc || ib_buf_try_printf(b, name "{engine=\"0\",model_name=\"%s\"} " fmt "\n", model, v)
#define GAUGE(name, help, v) HEAD(name, "gauge", help); SERIES(name, "%llu", (unsigned long long)(v))
#define COUNTER(name, help, v) HEAD(name, "counter", help); SERIES(name, "%llu", (unsigned long long)(v))
    GAUGE("vllm:num_requests_running", "Number of requests in model execution batches.", s->slots_used);
    GAUGE("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s->waiting.count);
    HEAD("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.");
    SERIES("vllm:kv_cache_usage_perc", "%.6g", kv_usage(s));
    COUNTER("vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.", s->query_tokens);
    COUNTER("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.", s->hit_tokens);
    COUNTER("vllm:prompt_tokens_total", "Number of prefill tokens processed.", s->prompt_tokens);
    COUNTER("vllm:generation_tokens_total", "Number of generation tokens processed.", s->generation_tokens);
    COUNTER("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", 0);
    HEAD("vllm:request_success_total", "counter", "Count of successfully processed requests.");
    rc = rc || ib_buf_try_printf(b,
                                 "vllm:request_success_total{engine=\"0\",finished_reason=\"stop\",model_name=\"%s\"} %llu\n"
                                 "vllm:request_success_total{engine=\"0\",finished_reason=\"length\",model_name=\"%s\"} %llu\n"
                                 "vllm:request_success_total{engine=\"0\",finished_reason=\"abort\",model_name=\"%s\"} %llu\n",
                                 model, (unsigned long long)m->finished_stop, model,
                                 (unsigned long long)m->finished_length, model, (unsigned long long)s->cancelled);
    HEAD("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
    rc = rc || ib_buf_try_printf(b,
                                 "vllm:cache_config_info{block_size=\"%u\",enable_prefix_caching=\"True\","
                                 "engine=\"0\",num_gpu_blocks=\"%u\"} 1\n",
                                 s->cfg.block_tokens, s->cfg.cache_blocks);
    rc = rc || hist(b, "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", &m->ttft, model);
    rc = rc || hist(b, "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", &m->itl, model);
    rc = rc || hist(b, "vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", &m->e2e, model);
    /* the mock's own */
    COUNTER("ib_engine_cache_evicted_blocks_total", "Prefix cache blocks evicted (LRU).", s->cache.evicted);
    COUNTER("ib_engine_cache_expired_blocks_total", "Prefix cache blocks dropped after their TTL.", s->cache.expired);
    GAUGE("ib_engine_cache_blocks_used", "Blocks held by the prefix cache.", s->cache.used);
    GAUGE("ib_engine_cache_blocks_capacity", "Prefix cache capacity in blocks.", s->cache.capacity);
    rc = rc || http_counts(b, m);
    HEAD("ib_engine_client_disconnects_total", "counter", "Streams whose client went away early.");
    rc = rc || ib_buf_try_printf(b, "ib_engine_client_disconnects_total %llu\n", (unsigned long long)m->disconnects);
#undef HEAD
#undef SERIES
#undef GAUGE
#undef COUNTER
    return rc;
}
