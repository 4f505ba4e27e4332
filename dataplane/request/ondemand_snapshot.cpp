// ondemand_c, part three: the routing snapshot from JSON (include/ibrain/snapshot.h), for
// ib-snapshot and tests. Unknown keys are an error, so that a misspelt field is not lost.
#include "ibrain/snapshot.h"

#include <simdjson.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

using namespace simdjson;

namespace {

int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

int get_str(ondemand::value v, char *dst, size_t cap, const char *where, char *err, size_t errlen)
{
    std::string_view sv;
    if (v.get_string().get(sv) != SUCCESS)
        return fail(err, errlen, "%s: not a string", where);
    if (sv.size() >= cap)
        return fail(err, errlen, "%s: longer than %zu bytes", where, cap - 1);
    if (memchr(sv.data(), '\0', sv.size()) != nullptr)
        return fail(err, errlen, "%s: contains a NUL character", where);
    memset(dst, 0, cap); /* a repeated key leaves nothing of its earlier value */
    memcpy(dst, sv.data(), sv.size());
    return 0;
}

int get_u32(ondemand::value v, uint32_t *out, const char *where, char *err, size_t errlen)
{
    uint64_t x;
    if (v.get_uint64().get(x) != SUCCESS || x > UINT32_MAX)
        return fail(err, errlen, "%s: not an integer in 0..4294967295", where);
    *out = (uint32_t)x;
    return 0;
}

int read_workload(ondemand::object obj, ib_snap_workload_t *w, size_t i, char *err, size_t errlen)
{
    char where[96];
    for (auto field : obj) {
        std::string_view key;
        ondemand::value v;
        if (field.unescaped_key().get(key) != SUCCESS || field.value().get(v) != SUCCESS)
            return fail(err, errlen, "workloads[%zu]: invalid JSON", i);
        snprintf(where, sizeof(where), "workloads[%zu].%.*s", i, (int)key.size(), key.data());
        int rc;
        if (key == "id")
            rc = get_str(v, w->id, sizeof(w->id), where, err, errlen);
        else if (key == "model")
            rc = get_str(v, w->model, sizeof(w->model), where, err, errlen);
        else if (key == "chat_template")
            rc = get_str(v, w->chat_template, sizeof(w->chat_template), where, err, errlen);
        else if (key == "tokenizer")
            rc = get_str(v, w->tokenizer, sizeof(w->tokenizer), where, err, errlen);
        else if (key == "policy")
            rc = get_str(v, w->policy, sizeof(w->policy), where, err, errlen);
        else if (key == "block_size")
            rc = get_u32(v, &w->block_size, where, err, errlen);
        else if (key == "context_length")
            rc = get_u32(v, &w->context_length, where, err, errlen);
        else if (key == "cache_ttl_ms")
            rc = get_u32(v, &w->cache_ttl_ms, where, err, errlen);
        else if (key == "cache_blocks")
            rc = get_u32(v, &w->cache_blocks, where, err, errlen);
        else
            rc = fail(err, errlen, "%s: unknown field", where);
        if (rc != 0)
            return -1;
    }
    return 0;
}

int read_replica(ondemand::object obj, ib_snap_replica_t *r, size_t i, char *err, size_t errlen)
{
    char where[96];
    for (auto field : obj) {
        std::string_view key;
        ondemand::value v;
        if (field.unescaped_key().get(key) != SUCCESS || field.value().get(v) != SUCCESS)
            return fail(err, errlen, "replicas[%zu]: invalid JSON", i);
        snprintf(where, sizeof(where), "replicas[%zu].%.*s", i, (int)key.size(), key.data());
        int rc = 0;
        if (key == "id") {
            rc = get_str(v, r->id, sizeof(r->id), where, err, errlen);
        } else if (key == "workload") {
            rc = get_str(v, r->workload, sizeof(r->workload), where, err, errlen);
        } else if (key == "address") {
            rc = get_str(v, r->address, sizeof(r->address), where, err, errlen);
        } else if (key == "kv_events") {
            rc = get_str(v, r->kv_events, sizeof(r->kv_events), where, err, errlen);
        } else if (key == "kv_events_replay") {
            rc = get_str(v, r->kv_events_replay, sizeof(r->kv_events_replay), where, err, errlen);
        } else if (key == "kv_events_topic") {
            rc = get_str(v, r->kv_events_topic, sizeof(r->kv_events_topic), where, err, errlen);
        } else if (key == "state") {
            char state[16];
            rc = get_str(v, state, sizeof(state), where, err, errlen);
            if (rc == 0 && strcmp(state, "ready") != 0 && strcmp(state, "draining") != 0)
                rc = fail(err, errlen, "%s: '%s' is neither ready nor draining", where, state);
            r->draining = rc == 0 && strcmp(state, "draining") == 0;
        } else if (key == "generation") {
            if (v.get_uint64().get(r->generation) != SUCCESS)
                rc = fail(err, errlen, "%s: not a non-negative integer", where);
        } else {
            rc = fail(err, errlen, "%s: unknown field", where);
        }
        if (rc != 0)
            return -1;
    }
    return 0;
}

template <typename T, typename F>
int read_array(ondemand::value v, std::vector<T> &out, const char *name, F fn, char *err, size_t errlen)
{
    ondemand::array arr;
    if (v.get_array().get(arr) != SUCCESS)
        return fail(err, errlen, "%s: not an array", name);
    for (auto el : arr) {
        ondemand::object obj;
        if (el.get_object().get(obj) != SUCCESS)
            return fail(err, errlen, "%s[%zu]: not an object", name, out.size());
        T item{};
        if (fn(obj, &item, out.size(), err, errlen) != 0)
            return -1;
        out.push_back(item);
    }
    return 0;
}

} // namespace

extern "C" int ib_snapshot_from_json(const char *json, size_t len, ib_snapshot_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    padded_string doc_bytes(json, len);
    ondemand::parser parser;
    ondemand::document doc;
    ondemand::object top;
    if (parser.iterate(doc_bytes).get(doc) != SUCCESS || doc.get_object().get(top) != SUCCESS)
        return fail(err, errlen, "not a JSON object");
    std::vector<ib_snap_workload_t> workloads;
    std::vector<ib_snap_replica_t> replicas;
    for (auto field : top) {
        std::string_view key;
        ondemand::value v;
        if (field.unescaped_key().get(key) != SUCCESS || field.value().get(v) != SUCCESS)
            return fail(err, errlen, "invalid JSON");
        int rc = 0;
        if (key == "version") {
            if (v.get_uint64().get(out->version) != SUCCESS)
                rc = fail(err, errlen, "version: not a non-negative integer");
        } else if (key == "written_unix_ms") {
            if (v.get_int64().get(out->written_unix_ms) != SUCCESS)
                rc = fail(err, errlen, "written_unix_ms: not an integer");
        } else if (key == "workloads") {
            rc = read_array(v, workloads, "workloads", read_workload, err, errlen);
        } else if (key == "replicas") {
            rc = read_array(v, replicas, "replicas", read_replica, err, errlen);
        } else {
            rc = fail(err, errlen, "%.*s: unknown field", (int)key.size(), key.data());
        }
        if (rc != 0)
            return -1;
    }
    const char *trailing;
    if (doc.current_location().get(trailing) == SUCCESS)
        return fail(err, errlen, "trailing content after the JSON object");
    out->workloads = static_cast<ib_snap_workload_t *>(calloc(workloads.size() + 1, sizeof(ib_snap_workload_t)));
    out->replicas = static_cast<ib_snap_replica_t *>(calloc(replicas.size() + 1, sizeof(ib_snap_replica_t)));
    if (out->workloads == nullptr || out->replicas == nullptr) {
        ib_snapshot_free(out);
        return fail(err, errlen, "out of memory");
    }
    if (!workloads.empty())
        memcpy(out->workloads, workloads.data(), workloads.size() * sizeof(ib_snap_workload_t));
    if (!replicas.empty())
        memcpy(out->replicas, replicas.data(), replicas.size() * sizeof(ib_snap_replica_t));
    out->nworkloads = (uint32_t)workloads.size();
    out->nreplicas = (uint32_t)replicas.size();
    if (ib_snapshot_check(out, err, errlen) != 0) {
        ib_snapshot_free(out);
        return -1;
    }
    return 0;
}
