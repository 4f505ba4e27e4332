/* Engine command lines for workload specs (include/ibrain/cluster.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ibrain/cluster.h"

/* Appends a formatted piece to out[*n..cap); -1 when it does not fit. */
static int add(char *out, size_t cap, size_t *n, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int add(char *out, size_t cap, size_t *n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= cap - *n)
        return -1;
    *n += (size_t)k;
    return 0;
}

static int has_space(const char *s)
{
    return strpbrk(s, " \t\n") != NULL;
}

int ib_engine_command(const ib_workload_spec_t *w, const char *mock, char *out, size_t cap, char *err, size_t errlen)
{
    const char *e = w->engine[0] ? w->engine : w->engine_cmd[0] ? "custom" : "mock";
    size_t n = 0;
    int rc = 0;
    out[0] = '\0';
    /* The manager splits the command line at spaces: paths with spaces cannot be passed. */
    if (has_space(w->weights) || has_space(w->tokenizer) || has_space(w->model)) {
        snprintf(err, errlen, "%s: must not contain spaces (engine command lines are split at spaces)",
                 has_space(w->weights) ? "weights" : has_space(w->tokenizer) ? "tokenizer" : "model");
        return -1;
    }
    if (strcmp(e, "mock") == 0) {
        rc |= add(out, cap, &n, "%s", mock);
        if (w->chat_template[0])
            rc |= add(out, cap, &n, " --template %s", w->chat_template);
        if (w->tokenizer[0])
            rc |= add(out, cap, &n, " --tokenizer %s", w->tokenizer);
        if (w->block_size)
            rc |= add(out, cap, &n, " --block-size %u", w->block_size);
        if (w->context_length)
            rc |= add(out, cap, &n, " --max-model-len %u", w->context_length);
    } else if (strcmp(e, "vllm") == 0) {
        rc |= add(out, cap, &n, "vllm serve {weights} --served-model-name {model} --host {host} --port {port}");
        if (w->block_size)
            rc |= add(out, cap, &n, " --block-size %u", w->block_size);
        if (w->context_length)
            rc |= add(out, cap, &n, " --max-model-len %u", w->context_length);
    } else if (strcmp(e, "sglang") == 0) {
        rc |= add(out, cap, &n,
                  "python3 -m sglang.launch_server --model-path {weights} --served-model-name {model} "
                  "--host {host} --port {port}");
        if (w->context_length)
            rc |= add(out, cap, &n, " --context-length %u", w->context_length);
    } else if (strcmp(e, "custom") == 0) {
        if (w->engine_cmd[0] == '\0') {
            snprintf(err, errlen, "engine_cmd: required when engine is \"custom\"");
            return -1;
        }
        rc |= add(out, cap, &n, "%s", w->engine_cmd);
    } else {
        snprintf(err, errlen, "engine: unknown engine '%s' (mock, vllm, sglang, custom)", e);
        return -1;
    }
    /* KV-cache events, as vLLM takes them (SGLang reads the same JSON): the PUB and the
     * replay ROUTER bind every interface (vLLM binds an endpoint with '*', connects any
     * other), on the ports the replica's manager substitutes and announces. */
    if (w->kv_events) {
        if (w->tokenizer[0] == '\0') {
            snprintf(err, errlen, "kv_events: needs tokenizer (routers key the engines' blocks by their token ids)");
            return -1;
        }
        if (strcmp(e, "custom") == 0) {
            if (strstr(w->engine_cmd, "{kv_port}") == NULL) {
                snprintf(err, errlen, "kv_events: engine_cmd must publish on {kv_port} (and may replay on "
                         "{kv_replay_port})");
                return -1;
            }
        } else {
            rc |= add(out, cap, &n, " --kv-events-config {\"enable_kv_cache_events\":true,\"publisher\":\"zmq\","
                      "\"endpoint\":\"tcp://*:{kv_port}\",\"replay_endpoint\":\"tcp://*:{kv_replay_port}\"}");
        }
    }
    if (strcmp(e, "custom") != 0 && w->engine_cmd[0] != '\0') {
        snprintf(err, errlen, "engine_cmd: only with engine \"custom\" (got engine \"%s\")", e);
        return -1;
    }
    if (w->engine_args[0])
        rc |= add(out, cap, &n, " %s", w->engine_args);
    if (rc != 0) {
        snprintf(err, errlen, "engine_args: the engine command line is too long");
        return -1;
    }
    return 0;
}
