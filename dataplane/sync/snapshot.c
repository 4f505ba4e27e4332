/* The routing snapshot: protobuf-c encode/decode and validation (include/ibrain/snapshot.h). */
#include "ibrain/snapshot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibrain/chat.h"
#include "ibrain/json_write.h"
#include "ibrain/limits.h"
#include "ibrain/net.h"
#include "ibrain/route.h"
#include "snapshot.pb-c.h"

#define FAIL(...) (snprintf(err, errlen, __VA_ARGS__), -1)

static int copy_field(char *dst, size_t cap, const char *src, const char *what, const char *id, char *err,
                      size_t errlen)
{
    size_t n = src != NULL ? strlen(src) : 0;
    if (n >= cap)
        return FAIL("%s of '%.64s' is longer than %zu bytes", what, id, cap - 1);
    memcpy(dst, src != NULL ? src : "", n + 1);
    return 0;
}

int ib_snapshot_check(const ib_snapshot_t *s, char *err, size_t errlen)
{
    if (s->nworkloads > IB_MAX_WORKLOADS)
        return FAIL("%u workloads: over IB_MAX_WORKLOADS (%d)", s->nworkloads, IB_MAX_WORKLOADS);
    if (s->nreplicas > IB_MAX_REPLICAS)
        return FAIL("%u replicas: over IB_MAX_REPLICAS (%d), every workload's ready and draining replicas together",
                    s->nreplicas, IB_MAX_REPLICAS);
    for (uint32_t i = 0; i < s->nworkloads; i++) {
        const ib_snap_workload_t *w = &s->workloads[i];
        if (w->id[0] == '\0')
            return FAIL("workloads[%u].id is empty", i);
        if (w->model[0] == '\0')
            return FAIL("workloads[%u].model is empty", i);
        for (uint32_t j = 0; j < i; j++) {
            if (strcmp(s->workloads[j].id, w->id) == 0)
                return FAIL("workload id '%s' appears twice", w->id);
            if (strcmp(s->workloads[j].model, w->model) == 0)
                return FAIL("model '%s' is served by two workloads", w->model);
        }
        ib_chat_template_t t;
        if (w->chat_template[0] != '\0' && ib_chat_template_parse(w->chat_template, &t) != 0)
            return FAIL("workloads[%u].chat_template '%s' is not chatml, qwen3, llama3 or plain", i, w->chat_template);
        ib_policy_t p;
        if (w->policy[0] != '\0' && ib_policy_parse(w->policy, &p) != 0)
            return FAIL("workloads[%u].policy '%s' is not affinity, least-load, round-robin or consistent-hash", i,
                        w->policy);
        if (w->block_size > 1u << 16)
            return FAIL("workloads[%u].block_size %u is over 65536", i, w->block_size);
    }
    for (uint32_t i = 0; i < s->nreplicas; i++) {
        const ib_snap_replica_t *r = &s->replicas[i];
        if (r->id[0] == '\0')
            return FAIL("replicas[%u].id is empty", i);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(s->replicas[j].id, r->id) == 0)
                return FAIL("replica id '%s' appears twice", r->id);
        uint32_t k = 0;
        while (k < s->nworkloads && strcmp(s->workloads[k].id, r->workload) != 0)
            k++;
        if (k == s->nworkloads)
            return FAIL("replicas[%u] ('%s') names workload '%s', which does not exist", i, r->id, r->workload);
        struct sockaddr_in sa;
        if (ib_parse_hostport(r->address, &sa) != 0 || sa.sin_port == 0)
            return FAIL("replicas[%u].address '%s' is not IPV4:PORT", i, r->address);
        if ((r->kv_events[0] != '\0' && strstr(r->kv_events, "://") == NULL) ||
            (r->kv_events_replay[0] != '\0' && (r->kv_events[0] == '\0' || strstr(r->kv_events_replay, "://") == NULL)))
            return FAIL("replicas[%u].kv_events / kv_events_replay: ZMQ endpoints (tcp://HOST:PORT), the replay only "
                        "with the events", i);
    }
    return 0;
}

void ib_snapshot_free(ib_snapshot_t *s)
{
    free(s->workloads);
    free(s->replicas);
    memset(s, 0, sizeof(*s));
}

int ib_snapshot_decode(const void *buf, size_t len, ib_snapshot_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    Ibrain__V1__Snapshot *m = ibrain__v1__snapshot__unpack(NULL, len, buf);
    if (m == NULL)
        return FAIL("not an encoded ibrain.v1.Snapshot (%zu bytes)", len);
    int rc = -1;
    out->version = m->version;
    out->written_unix_ms = m->written_unix_ms;
    out->written_unix_us = m->written_unix_us;
    out->workloads = calloc(m->n_workloads ? m->n_workloads : 1, sizeof(*out->workloads));
    out->replicas = calloc(m->n_replicas ? m->n_replicas : 1, sizeof(*out->replicas));
    if (out->workloads == NULL || out->replicas == NULL) {
        (void)FAIL("out of memory");
        goto done;
    }
    for (size_t i = 0; i < m->n_workloads; i++) {
        const Ibrain__V1__Workload *w = m->workloads[i];
        ib_snap_workload_t *o = &out->workloads[i];
        const char *id = w->id;
        if (copy_field(o->id, sizeof(o->id), w->id, "id", id, err, errlen) ||
            copy_field(o->model, sizeof(o->model), w->model, "model", id, err, errlen) ||
            copy_field(o->chat_template, sizeof(o->chat_template), w->chat_template, "chat_template", id, err,
                       errlen) ||
            copy_field(o->tokenizer, sizeof(o->tokenizer), w->tokenizer, "tokenizer", id, err, errlen) ||
            copy_field(o->policy, sizeof(o->policy), w->policy, "policy", id, err, errlen))
            goto done;
        o->block_size = w->block_size;
        o->context_length = w->context_length;
        o->cache_ttl_ms = w->cache_ttl_ms;
        o->cache_blocks = w->cache_blocks;
        out->nworkloads++;
    }
    for (size_t i = 0; i < m->n_replicas; i++) {
        const Ibrain__V1__Replica *r = m->replicas[i];
        ib_snap_replica_t *o = &out->replicas[i];
        if (copy_field(o->id, sizeof(o->id), r->id, "id", r->id, err, errlen) ||
            copy_field(o->workload, sizeof(o->workload), r->workload, "workload", r->id, err, errlen) ||
            copy_field(o->address, sizeof(o->address), r->address, "address", r->id, err, errlen) ||
            copy_field(o->kv_events, sizeof(o->kv_events), r->kv_events, "kv_events", r->id, err, errlen) ||
            copy_field(o->kv_events_replay, sizeof(o->kv_events_replay), r->kv_events_replay, "kv_events_replay",
                       r->id, err, errlen) ||
            copy_field(o->kv_events_topic, sizeof(o->kv_events_topic), r->kv_events_topic, "kv_events_topic", r->id,
                       err, errlen))
            goto done;
        o->draining = r->state == IBRAIN__V1__REPLICA__STATE__DRAINING;
        o->generation = r->generation;
        out->nreplicas++;
    }
    rc = ib_snapshot_check(out, err, errlen);
done:
    ibrain__v1__snapshot__free_unpacked(m, NULL);
    if (rc != 0)
        ib_snapshot_free(out);
    return rc;
}

int ib_snapshot_encode(const ib_snapshot_t *s, ib_buf_t *out)
{
    Ibrain__V1__Snapshot m = IBRAIN__V1__SNAPSHOT__INIT;
    m.version = s->version;
    m.written_unix_ms = s->written_unix_ms;
    m.written_unix_us = s->written_unix_us;
    Ibrain__V1__Workload *ws = calloc(s->nworkloads + 1, sizeof(*ws));
    Ibrain__V1__Workload **wp = calloc(s->nworkloads + 1, sizeof(*wp));
    Ibrain__V1__Replica *rs = calloc(s->nreplicas + 1, sizeof(*rs));
    Ibrain__V1__Replica **rp = calloc(s->nreplicas + 1, sizeof(*rp));
    int rc = -1;
    if (ws == NULL || wp == NULL || rs == NULL || rp == NULL)
        goto done;
    for (uint32_t i = 0; i < s->nworkloads; i++) {
        const ib_snap_workload_t *w = &s->workloads[i];
        ibrain__v1__workload__init(&ws[i]);
        ws[i].id = (char *)w->id;
        ws[i].model = (char *)w->model;
        ws[i].chat_template = (char *)w->chat_template;
        ws[i].tokenizer = (char *)w->tokenizer;
        ws[i].policy = (char *)w->policy;
        ws[i].block_size = w->block_size;
        ws[i].context_length = w->context_length;
        ws[i].cache_ttl_ms = w->cache_ttl_ms;
        ws[i].cache_blocks = w->cache_blocks;
        wp[i] = &ws[i];
    }
    for (uint32_t i = 0; i < s->nreplicas; i++) {
        const ib_snap_replica_t *r = &s->replicas[i];
        ibrain__v1__replica__init(&rs[i]);
        rs[i].id = (char *)r->id;
        rs[i].workload = (char *)r->workload;
        rs[i].address = (char *)r->address;
        rs[i].kv_events = (char *)r->kv_events;
        rs[i].kv_events_replay = (char *)r->kv_events_replay;
        rs[i].kv_events_topic = (char *)r->kv_events_topic;
        rs[i].state = r->draining ? IBRAIN__V1__REPLICA__STATE__DRAINING : IBRAIN__V1__REPLICA__STATE__READY;
        rs[i].generation = r->generation;
        rp[i] = &rs[i];
    }
    m.n_workloads = s->nworkloads;
    m.workloads = wp;
    m.n_replicas = s->nreplicas;
    m.replicas = rp;
    size_t n = ibrain__v1__snapshot__get_packed_size(&m);
    if (n > 0) { /* an empty snapshot encodes to nothing */
        if (ib_buf_try_reserve(out, n) != 0)
            goto done;
        ibrain__v1__snapshot__pack(&m, (uint8_t *)out->ptr + out->len);
        out->len += n;
    }
    rc = 0;
done:
    free(ws);
    free(wp);
    free(rs);
    free(rp);
    return rc;
}

/* ---- JSON out ---- */

int ib_snapshot_to_json(const ib_snapshot_t *s, ib_buf_t *out)
{
    ib_buf_printf(out, "{\"version\":%llu,\"written_unix_ms\":%lld,\"workloads\":[", (unsigned long long)s->version,
                  (long long)s->written_unix_ms);
    for (uint32_t i = 0; i < s->nworkloads; i++) {
        const ib_snap_workload_t *w = &s->workloads[i];
        ib_buf_append(out, i ? ",{" : "{", i ? 2 : 1);
        ib_json_member_str(out, "id", w->id, 0);
        ib_json_member_str(out, "model", w->model, 1);
        ib_json_member_str(out, "chat_template", w->chat_template, 1);
        ib_json_member_str(out, "tokenizer", w->tokenizer, 1);
        ib_json_member_str(out, "policy", w->policy, 1);
        ib_json_member_u64(out, "block_size", w->block_size, 1);
        ib_json_member_u64(out, "context_length", w->context_length, 1);
        ib_json_member_u64(out, "cache_ttl_ms", w->cache_ttl_ms, 1);
        ib_json_member_u64(out, "cache_blocks", w->cache_blocks, 1);
        ib_buf_append(out, "}", 1);
    }
    ib_buf_append(out, "],\"replicas\":[", 14);
    for (uint32_t i = 0; i < s->nreplicas; i++) {
        const ib_snap_replica_t *r = &s->replicas[i];
        ib_buf_append(out, i ? ",{" : "{", i ? 2 : 1);
        ib_json_member_str(out, "id", r->id, 0);
        ib_json_member_str(out, "workload", r->workload, 1);
        ib_json_member_str(out, "address", r->address, 1);
        ib_json_member_str(out, "state", r->draining ? "draining" : "ready", 1);
        ib_json_member_u64(out, "generation", r->generation, 1);
        if (r->kv_events[0] != '\0') {
            ib_json_member_str(out, "kv_events", r->kv_events, 1);
            ib_json_member_str(out, "kv_events_replay", r->kv_events_replay, 1);
            ib_json_member_str(out, "kv_events_topic", r->kv_events_topic, 1);
        }
        ib_buf_append(out, "}", 1);
    }
    ib_buf_append(out, "]}\n", 3);
    return 0;
}
