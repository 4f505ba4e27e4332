/* An engine's load from its /metrics page (include/ibrain/engine_metrics.h). */
#include "ibrain/engine_metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { M_RUNNING, M_WAITING, M_KV, M__COUNT };

static const struct {
    const char *name;
    int which;
} names[] = {
    {"vllm:num_requests_running", M_RUNNING}, {"vllm:num_requests_waiting", M_WAITING},
    {"vllm:kv_cache_usage_perc", M_KV},       {"vllm:gpu_cache_usage_perc", M_KV}, /* vLLM before 0.10 */
    {"sglang:num_running_reqs", M_RUNNING},   {"sglang:num_queue_reqs", M_WAITING},
    {"sglang:token_usage", M_KV},
};

/* The value of one sample line <p>[0..n) whose name is known: after the labels (quoted
 * values may hold spaces, braces and escaped quotes) and the spaces, up to an optional
 * timestamp. 0, or -1 when malformed. */
static int sample_value(const char *p, size_t n, size_t name_len, double *out)
{
    size_t i = name_len;
    if (i < n && p[i] == '{') {
        int quoted = 0;
        for (i++; i < n; i++) {
            if (quoted && p[i] == '\\') {
                i++;
                continue;
            }
            if (p[i] == '"')
                quoted = !quoted;
            else if (!quoted && p[i] == '}')
                break;
        }
        if (i >= n)
            return -1;
        i++;
    }
    if (i >= n || (p[i] != ' ' && p[i] != '\t'))
        return -1;
    while (i < n && (p[i] == ' ' || p[i] == '\t'))
        i++;
    char num[64];
    size_t k = 0;
    while (i < n && p[i] != ' ' && p[i] != '\t' && k < sizeof(num) - 1)
        num[k++] = p[i++];
    num[k] = '\0';
    if (k == 0 || k == sizeof(num) - 1)
        return -1;
    char *end;
    double v = strtod(num, &end);
    if (*end != '\0' || !isfinite(v) || v < 0)
        return -1;
    *out = v;
    return 0;
}

int ib_engine_load_parse(const char *text, size_t len, ib_engine_load_t *out)
{
    double sum[M__COUNT] = {0};
    uint32_t count[M__COUNT] = {0};
    memset(out, 0, sizeof(*out));
    size_t pos = 0;
    while (pos < len) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + 1;
        if (n == 0 || line[0] == '#')
            continue;
        for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
            size_t nl2 = strlen(names[k].name);
            if (n <= nl2 || memcmp(line, names[k].name, nl2) != 0 || (line[nl2] != '{' && line[nl2] != ' '))
                continue;
            double v;
            if (sample_value(line, n, nl2, &v) == 0) {
                sum[names[k].which] += v;
                count[names[k].which]++;
            }
            break;
        }
    }
    out->running = sum[M_RUNNING];
    out->waiting = sum[M_WAITING];
    out->kv_usage = count[M_KV] ? sum[M_KV] / count[M_KV] : 0;
    out->found = (count[M_RUNNING] ? IB_ENGINE_LOAD_RUNNING : 0) | (count[M_WAITING] ? IB_ENGINE_LOAD_WAITING : 0) |
                 (count[M_KV] ? IB_ENGINE_LOAD_KV : 0);
    return count[M_RUNNING] && count[M_WAITING] ? 0 : -1;
}
