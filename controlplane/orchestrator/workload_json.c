/* Workload bodies of the REST API (include/ibrain/orchestrator.h). */
#include <stdio.h>
#include <string.h>

#include "ibrain/orchestrator.h"

typedef struct field_def {
    const char *name;
    uint32_t bit;
    size_t off;   /* offset of the string or uint32 in ib_workload_spec_t */
    size_t cap;   /* string capacity; 0: an integer (a boolean when min > max) */
    int64_t min, max;
} field_def_t;

#define STR(n, bit, f) {n, bit, offsetof(ib_workload_spec_t, f), sizeof(((ib_workload_spec_t *)0)->f), 0, 0}
#define INT(n, bit, f, lo, hi) {n, bit, offsetof(ib_workload_spec_t, f), 0, lo, hi}
#define BOOL(n, bit, f) {n, bit, offsetof(ib_workload_spec_t, f), 0, 1, 0}

static const field_def_t fields[] = {
    STR("id", IB_WF_ID, id),
    STR("model", IB_WF_MODEL, model),
    INT("replicas", IB_WF_REPLICAS, replicas, 1, IB_MAX_WORKLOAD_REPLICAS),
    STR("weights", IB_WF_WEIGHTS, weights),
    STR("engine", IB_WF_ENGINE, engine),
    STR("engine_args", IB_WF_ENGINE_ARGS, engine_args),
    STR("engine_cmd", IB_WF_ENGINE_CMD, engine_cmd),
    STR("version", IB_WF_VERSION, version),
    STR("chat_template", IB_WF_TEMPLATE, chat_template),
    STR("tokenizer", IB_WF_TOKENIZER, tokenizer),
    INT("block_size", IB_WF_BLOCK, block_size, 0, 65536),
    INT("context_length", IB_WF_CONTEXT, context_length, 0, 1 << 24),
    STR("policy", IB_WF_POLICY, policy),
    STR("cpu", IB_WF_CPU, cpu),
    STR("memory", IB_WF_MEMORY, memory),
    INT("gpus", IB_WF_GPUS, gpus, 0, 64),
    BOOL("kv_events", IB_WF_KV_EVENTS, kv_events),
};

typedef struct walk {
    ib_workload_spec_t *spec;
    uint32_t present;
    ib_field_error_t *e;
} walk_t;

static int bad(walk_t *w, const char *field, const char *fmt, long long a, long long b)
{
    snprintf(w->e->field, sizeof(w->e->field), "%.31s", field);
    snprintf(w->e->message, sizeof(w->e->message), fmt, a, b);
    return 1;
}

static int on_field(void *ctx, const ib_json_field_t *f)
{
    walk_t *w = ctx;
    const field_def_t *d = NULL;
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (strlen(fields[i].name) == f->key.len && memcmp(fields[i].name, f->key.ptr, f->key.len) == 0)
            d = &fields[i];
    if (d == NULL) {
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(f->key.len < 31 ? f->key.len : 31), f->key.ptr);
        snprintf(w->e->field, sizeof(w->e->field), "%s", name);
        snprintf(w->e->message, sizeof(w->e->message), "unknown field '%s'", name);
        return 1;
    }
    if (w->present & d->bit)
        return bad(w, d->name, "given twice", 0, 0);
    char *base = (char *)w->spec;
    if (d->cap > 0) {
        if (f->type != IB_JSON_STRING)
            return bad(w, d->name, "must be a string", 0, 0);
        if (f->str.len >= d->cap)
            return bad(w, d->name, "too long (at most %lld bytes)", (long long)d->cap - 1, 0);
        if (memchr(f->str.ptr, '\0', f->str.len) != NULL)
            return bad(w, d->name, "must not contain NUL characters", 0, 0);
        memcpy(base + d->off, f->str.ptr, f->str.len);
        base[d->off + f->str.len] = '\0';
    } else if (d->min > d->max) {
        if (f->type != IB_JSON_BOOL)
            return bad(w, d->name, "must be true or false", 0, 0);
        uint32_t v = f->num != 0;
        memcpy(base + d->off, &v, sizeof(v));
    } else {
        if (f->type != IB_JSON_NUMBER || !f->int_ok)
            return bad(w, d->name, "must be an integer", 0, 0);
        if (f->num < d->min || f->num > d->max)
            return bad(w, d->name, "must be %lld..%lld", (long long)d->min, (long long)d->max);
        uint32_t v = (uint32_t)f->num;
        memcpy(base + d->off, &v, sizeof(v));
    }
    w->present |= d->bit;
    return 0;
}

int ib_workload_json_read(ib_json_parser_t *p, const char *body, size_t len, size_t capacity, ib_workload_spec_t *spec,
                          uint32_t *present, ib_field_error_t *e)
{
    memset(e, 0, sizeof(*e));
    ib_workload_spec_t copy = *spec; /* <spec> changes only on success */
    walk_t w = {&copy, 0, e};
    int rc = ib_json_object_fields(p, body, len, capacity, on_field, &w);
    if (rc < 0) {
        e->field[0] = '\0';
        snprintf(e->message, sizeof(e->message), "the body must be one JSON object");
    }
    if (rc != 0)
        return -1;
    *spec = copy;
    *present = w.present;
    return 0;
}
