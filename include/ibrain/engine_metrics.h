/*
 * An inference engine's own load, read from its Prometheus /metrics page: vLLM's
 * vllm:num_requests_running, vllm:num_requests_waiting and vllm:kv_cache_usage_perc, or
 * SGLang's sglang:num_running_reqs, sglang:num_queue_reqs and sglang:token_usage. Samples
 * of one name are summed over their label sets (several engines or data-parallel ranks
 * behind one server); the KV usage is their mean.
 */
#ifndef IBRAIN_ENGINE_METRICS_H
#define IBRAIN_ENGINE_METRICS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ib_engine_load {
    double running;          /* requests being computed */
    double waiting;          /* requests queued for the engine */
    double kv_usage;         /* KV cache in use, 0..1 */
    uint32_t found;          /* bit 0 running, 1 waiting, 2 kv_usage: which were on the page */
} ib_engine_load_t;

#define IB_ENGINE_LOAD_RUNNING 1u
#define IB_ENGINE_LOAD_WAITING 2u
#define IB_ENGINE_LOAD_KV 4u

/**
 * Reads <text>[0..len) (Prometheus text format; need not be NUL-terminated). Returns 0
 * with <out> set when running and waiting were both found, -1 otherwise (<out> still holds
 * what was found). Malformed lines are skipped; values must be finite and non-negative.
 */
int ib_engine_load_parse(const char *text, size_t len, ib_engine_load_t *out);

#ifdef __cplusplus
}
#endif
#endif
