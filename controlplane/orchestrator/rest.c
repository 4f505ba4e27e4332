/*
 * ib-orchestrator's REST API on libh2o's evloop (include/ibrain/orchestrator.h).
 *
 * One thread. Each request is checked (route, method, JWT, body) and answered from one or
 * two blocking unary calls to the cluster server (about 60 us each on loopback; Create
 * and Update fork the replicas' managers and return at once, readiness is polled with
 * GET). A slow cluster server holds this thread for at most the call's 10 s deadline.
 */
#include <errno.h>
#include <h2o.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "cluster.pb-c.h"
#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/json_write.h"
#include "ibrain/net.h"
#include "ibrain/oai_error.h"
#include "ibrain/phase.h"
#include "internal.h"

#define RPC_TIMEOUT_MS 10000
#define MAX_BODY (64 * 1024)

typedef struct server {
    orch_t *o;
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    h2o_socket_t *listen_sock, *signal_sock;
    int stopping;
    ib_cluster_client_t *cluster;
    ib_json_parser_t *json;
    ib_buf_t out;
} server_t;

struct handler {
    h2o_handler_t super;
    server_t *s;
};

static const int codes[ORCH_CODES] = {200, 201, 400, 401, 403, 404, 405, 409, 413, 500, 503, 0};
static const double bucket_s[ORCH_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 5};

/* ---- responses ---- */

static void count(server_t *s, int route, int status, uint64_t start_ns)
{
    int k = ORCH_CODES - 1;
    for (int i = 0; i < ORCH_CODES - 1; i++)
        if (codes[i] == status)
            k = i;
    s->o->http[route][k]++;
    double d = (double)(ib_now_ns() - start_ns) / 1e9;
    int b = 0;
    while (b < ORCH_BUCKETS && d > bucket_s[b])
        b++;
    s->o->latency_buckets[b]++;
    s->o->latency_sum += d;
}

static void send_body(server_t *s, h2o_req_t *req, int route, uint64_t t0, int status, const char *ctype,
                      const char *body, size_t len)
{
    count(s, route, status, t0);
    req->res.status = status;
    req->res.reason = ib_http_reason(status);
    req->res.content_length = len;
    h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ctype, strlen(ctype));
    h2o_send_inline(req, body, len);
}

static void send_error(server_t *s, h2o_req_t *req, int route, uint64_t t0, int status, const char *msg,
                       const char *param, const char *code)
{
    const char *type = status == 401   ? "authentication_error"
                       : status == 403 ? "permission_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    ib_buf_reset(&s->out);
    ib_oai_error_json(&s->out, msg, type, param, code);
    send_body(s, req, route, t0, status, "application/json", s->out.ptr, s->out.len);
}

/* A cluster-server failure as an HTTP error: INVALID_ARGUMENT "field: why" -> 400 naming
 * the field; NOT_FOUND 404; ALREADY_EXISTS, FAILED_PRECONDITION 409; unreachable 503. */
static void send_rpc_error(server_t *s, h2o_req_t *req, int route, uint64_t t0, const ib_rpc_result_t *r)
{
    char param[40] = "";
    const char *colon = strchr(r->message, ':');
    int status;
    switch (r->code) {
    case 3: /* INVALID_ARGUMENT */
        status = 400;
        /* the cluster server's messages start with the field: "weights: ..." */
        if (colon != NULL && colon > r->message && colon - r->message < (long)sizeof(param) &&
            strspn(r->message, "abcdefghijklmnopqrstuvwxyz_") == (size_t)(colon - r->message))
            snprintf(param, sizeof(param), "%.*s", (int)(colon - r->message), r->message);
        break;
    case 5: status = 404; break;
    case 6: case 9: status = 409; break;
    case 4: case 14: status = 503; break;
    default: status = 500; break;
    }
    if (status >= 500)
        s->o->cluster_errors++;
    char msg[320];
    if (status == 503)
        snprintf(msg, sizeof(msg), "the cluster server is unavailable (%s: %s)", ib_rpc_code_name(r->code), r->message);
    else
        snprintf(msg, sizeof(msg), "%s", r->message);
    char code[32];
    snprintf(code, sizeof(code), "%s", ib_rpc_code_name(r->code));
    for (char *p = code; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    send_error(s, req, route, t0, status, msg, param[0] ? param : NULL, code);
}

/* ---- JSON rendering ---- */

static int jbool(ib_buf_t *b, const char *key, int v)
{
    return ib_buf_try_printf(b, ",\"%s\":%s", key, v ? "true" : "false");
}

static void render_workload(ib_buf_t *b, const Ibrain__V1__WorkloadStatus *st)
{
    const Ibrain__V1__WorkloadSpec *sp = st->spec;
    ib_buf_append(b, "{", 1);
    ib_json_member_str(b, "id", sp->id, 0);
    ib_json_member_str(b, "object", "workload", 1);
    ib_json_member_str(b, "model", sp->model, 1);
    ib_json_member_u64(b, "replicas", sp->replicas, 1);
    ib_json_member_str(b, "weights", sp->weights, 1);
    ib_json_member_str(b, "engine", sp->engine[0] ? sp->engine : sp->engine_cmd[0] ? "custom" : "mock", 1);
    ib_json_member_str(b, "engine_args", sp->engine_args, 1);
    ib_json_member_str(b, "cpu", sp->cpu, 1);
    ib_json_member_str(b, "memory", sp->memory, 1);
    ib_json_member_u64(b, "gpus", sp->gpus, 1);
    jbool(b, "kv_events", sp->kv_events);
    ib_json_member_str(b, "engine_cmd", sp->engine_cmd, 1);
    ib_json_member_str(b, "version", sp->version, 1);
    ib_json_member_str(b, "chat_template", sp->chat_template, 1);
    ib_json_member_str(b, "tokenizer", sp->tokenizer, 1);
    ib_json_member_u64(b, "block_size", sp->block_size, 1);
    ib_json_member_u64(b, "context_length", sp->context_length, 1);
    ib_json_member_str(b, "policy", sp->policy, 1);
    ib_json_member_u64(b, "generation", sp->generation, 1);
    ib_buf_append(b, ",\"status\":{", 11);
    ib_json_member_str(b, "phase", ib_workload_phase_name((ib_workload_phase_t)st->phase), 0);
    ib_json_member_str(b, "message", st->message, 1);
    ib_json_member_u64(b, "ready_replicas", st->ready_replicas, 1);
    ib_buf_append(b, ",\"replicas\":[", 13);
    for (size_t i = 0; i < st->n_replicas; i++) {
        const Ibrain__V1__ReplicaStatus *r = st->replicas[i];
        ib_buf_append(b, i ? ",{" : "{", i ? 2 : 1);
        ib_json_member_str(b, "id", r->id, 0);
        ib_json_member_str(b, "phase", ib_replica_phase_name((ib_replica_phase_t)r->phase), 1);
        jbool(b, "ready", r->phase == IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_READY);
        ib_json_member_str(b, "address", r->address, 1);
        ib_json_member_u64(b, "generation", r->generation, 1);
        ib_json_member_u64(b, "restarts", r->restarts, 1);
        jbool(b, "retiring", r->retiring);
        jbool(b, "draining", r->draining);
        ib_json_member_str(b, "kv_events", r->kv_events, 1);
        ib_json_member_str(b, "kv_events_replay", r->kv_events_replay, 1);
        ib_json_member_str(b, "reason", r->reason, 1);
        ib_buf_append(b, "}", 1);
    }
    ib_buf_append(b, "]}}", 3);
}

/* ---- handlers ---- */

/* Calls <method> and unpacks the WorkloadStatus it answers (free it with
 * ibrain__v1__workload_status__free_unpacked), or sends the error and returns NULL. */
static Ibrain__V1__WorkloadStatus *call_status(server_t *s, h2o_req_t *req, int route, uint64_t t0,
                                                const char *method, const uint8_t *in, size_t len)
{
    ib_rpc_result_t r;
    if (ib_cluster_call(s->cluster, method, in, len, RPC_TIMEOUT_MS, &r) != 0) {
        send_rpc_error(s, req, route, t0, &r);
        return NULL;
    }
    Ibrain__V1__WorkloadStatus *st = ibrain__v1__workload_status__unpack(NULL, r.len, r.bytes);
    free(r.bytes);
    if (st == NULL || st->spec == NULL) {
        if (st != NULL)
            ibrain__v1__workload_status__free_unpacked(st, NULL);
        send_error(s, req, route, t0, 500, "the cluster server sent an invalid WorkloadStatus", NULL, NULL);
        return NULL;
    }
    return st;
}

/* Calls <method> with the packed spec (or ref) and answers with the workload's status. */
static void call_and_reply(server_t *s, h2o_req_t *req, int route, uint64_t t0, const char *method,
                           const uint8_t *in, size_t len, int ok_status)
{
    Ibrain__V1__WorkloadStatus *st = call_status(s, req, route, t0, method, in, len);
    if (st == NULL)
        return;
    ib_buf_reset(&s->out);
    if (strcmp(method, "DeleteWorkload") == 0) {
        ib_buf_append(&s->out, "{", 1);
        ib_json_member_str(&s->out, "id", st->spec->id, 0);
        ib_json_member_str(&s->out, "object", "workload", 1);
        ib_buf_append(&s->out, ",\"deleted\":true}\n", 17);
    } else {
        render_workload(&s->out, st);
        ib_buf_append(&s->out, "\n", 1);
    }
    if (ok_status == 201) {
        char *loc = h2o_mem_alloc_pool(&req->pool, strlen(st->spec->id) + 16);
        int n = sprintf(loc, "/v1/workloads/%s", st->spec->id);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_LOCATION, NULL, loc, (size_t)n);
    }
    ibrain__v1__workload_status__free_unpacked(st, NULL);
    if (strcmp(method, "GetWorkload") != 0 && (s->o->cfg->redis != NULL || s->o->cfg->nsentinels > 0))
        ib_leader_wake(s->o);
    send_body(s, req, route, t0, ok_status, "application/json", s->out.ptr, s->out.len);
}

static int read_body(server_t *s, h2o_req_t *req, int route, uint64_t t0, ib_workload_spec_t *spec, uint32_t *present)
{
    ib_field_error_t e;
    if (ib_workload_json_read(s->json, req->entity.base ? req->entity.base : "", req->entity.len, req->entity.len, spec,
                              present, &e) != 0) {
        char msg[260];
        if (e.field[0])
            snprintf(msg, sizeof(msg), "%s: %s", e.field, e.message);
        else
            snprintf(msg, sizeof(msg), "%s", e.message);
        send_error(s, req, route, t0, 400, msg, e.field[0] ? e.field : NULL, "invalid_body");
        return -1;
    }
    return 0;
}

static void create(server_t *s, h2o_req_t *req, uint64_t t0)
{
    ib_workload_spec_t spec;
    memset(&spec, 0, sizeof(spec));
    spec.replicas = 1;
    uint32_t present = 0;
    if (read_body(s, req, R_COLLECTION, t0, &spec, &present) != 0)
        return;
    static const struct {
        uint32_t bit;
        const char *name;
    } required[] = {{IB_WF_ID, "id"}, {IB_WF_MODEL, "model"}, {IB_WF_WEIGHTS, "weights"}};
    for (size_t i = 0; i < 3; i++)
        if (!(present & required[i].bit)) {
            char msg[64];
            snprintf(msg, sizeof(msg), "%s: required", required[i].name);
            send_error(s, req, R_COLLECTION, t0, 400, msg, required[i].name, "invalid_body");
            return;
        }
    Ibrain__V1__WorkloadSpec m;
    ib_spec_to_msg(&spec, &m);
    uint8_t buf[4096];
    size_t len = ibrain__v1__workload_spec__pack(&m, buf);
    call_and_reply(s, req, R_COLLECTION, t0, "CreateWorkload", buf, len, 201);
}

static void list(server_t *s, h2o_req_t *req, uint64_t t0)
{
    ib_rpc_result_t r;
    Ibrain__V1__ListWorkloadsRequest m = IBRAIN__V1__LIST_WORKLOADS_REQUEST__INIT;
    uint8_t buf[16];
    size_t len = ibrain__v1__list_workloads_request__pack(&m, buf);
    if (ib_cluster_call(s->cluster, "ListWorkloads", buf, len, RPC_TIMEOUT_MS, &r) != 0) {
        send_rpc_error(s, req, R_COLLECTION, t0, &r);
        return;
    }
    Ibrain__V1__WorkloadList *l = ibrain__v1__workload_list__unpack(NULL, r.len, r.bytes);
    free(r.bytes);
    if (l == NULL) {
        send_error(s, req, R_COLLECTION, t0, 500, "the cluster server sent an invalid WorkloadList", NULL, NULL);
        return;
    }
    ib_buf_reset(&s->out);
    ib_buf_append(&s->out, "{\"object\":\"list\",\"data\":[", 25);
    for (size_t i = 0; i < l->n_workloads; i++) {
        if (i)
            ib_buf_append(&s->out, ",", 1);
        if (l->workloads[i]->spec != NULL)
            render_workload(&s->out, l->workloads[i]);
    }
    ib_buf_append(&s->out, "]}\n", 3);
    ibrain__v1__workload_list__free_unpacked(l, NULL);
    send_body(s, req, R_COLLECTION, t0, 200, "application/json", s->out.ptr, s->out.len);
}

static void item(server_t *s, h2o_req_t *req, uint64_t t0, const char *id, int method)
{
    Ibrain__V1__WorkloadRef ref = IBRAIN__V1__WORKLOAD_REF__INIT;
    ref.id = (char *)id;
    uint8_t buf[512];
    size_t len = ibrain__v1__workload_ref__pack(&ref, buf);
    if (method == 'G') {
        call_and_reply(s, req, R_ITEM, t0, "GetWorkload", buf, len, 200);
        return;
    }
    if (method == 'D') {
        call_and_reply(s, req, R_ITEM, t0, "DeleteWorkload", buf, len, 200);
        return;
    }
    /* PATCH: the body over the current spec */
    Ibrain__V1__WorkloadStatus *st = call_status(s, req, R_ITEM, t0, "GetWorkload", buf, len);
    if (st == NULL)
        return;
    ib_workload_spec_t spec;
    ib_spec_from_msg(st->spec, &spec);
    ibrain__v1__workload_status__free_unpacked(st, NULL);
    uint32_t present = 0;
    if (read_body(s, req, R_ITEM, t0, &spec, &present) != 0)
        return;
    if ((present & IB_WF_ID) && strcmp(spec.id, id) != 0) {
        send_error(s, req, R_ITEM, t0, 400, "id: cannot be changed", "id", "invalid_body");
        return;
    }
    if ((present & IB_WF_ENGINE) && strcmp(spec.engine, "custom") != 0 && !(present & IB_WF_ENGINE_CMD))
        spec.engine_cmd[0] = '\0'; /* a named engine replaces a custom command */
    Ibrain__V1__WorkloadSpec m;
    ib_spec_to_msg(&spec, &m);
    uint8_t out[4096];
    size_t n = ibrain__v1__workload_spec__pack(&m, out);
    call_and_reply(s, req, R_ITEM, t0, "UpdateWorkload", out, n, 200);
}

/* ---- metrics ---- */

static void render_metrics(server_t *s, ib_buf_t *b)
{
    orch_t *o = s->o;
    static const char *routes[R__COUNT] = {"/v1/workloads", "/v1/workloads/{id}", "/health", "/metrics", "other"};
    ib_buf_printf(b, "# HELP ib_orch_http_requests_total REST requests answered, by route and status.\n"
         "# TYPE ib_orch_http_requests_total counter\n");
    for (int r = 0; r < R__COUNT; r++)
        for (int k = 0; k < ORCH_CODES; k++)
            if (o->http[r][k] || (k == 0 && r != R_OTHER)) {
                if (codes[k])
                    ib_buf_printf(b, "ib_orch_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n", routes[r], codes[k],
                         (unsigned long long)o->http[r][k]);
                else
                    ib_buf_printf(b, "ib_orch_http_requests_total{route=\"%s\",code=\"other\"} %llu\n", routes[r],
                         (unsigned long long)o->http[r][k]);
            }
    ib_buf_printf(b, "# HELP ib_orch_http_request_duration_seconds REST request time, cluster-server calls included.\n"
         "# TYPE ib_orch_http_request_duration_seconds histogram\n");
    uint64_t cum = 0, total = 0;
    for (int i = 0; i <= ORCH_BUCKETS; i++)
        total += o->latency_buckets[i];
    for (int i = 0; i < ORCH_BUCKETS; i++) {
        cum += o->latency_buckets[i];
        ib_buf_printf(b, "ib_orch_http_request_duration_seconds_bucket{le=\"%g\"} %llu\n", bucket_s[i], (unsigned long long)cum);
    }
    ib_buf_printf(b, "ib_orch_http_request_duration_seconds_bucket{le=\"+Inf\"} %llu\n", (unsigned long long)total);
    ib_buf_printf(b, "ib_orch_http_request_duration_seconds_sum %.6f\nib_orch_http_request_duration_seconds_count %llu\n",
         o->latency_sum, (unsigned long long)total);
    ib_buf_printf(b, "# HELP ib_orch_auth_failures_total Requests refused by JWT authentication (401) or scope (403).\n"
         "# TYPE ib_orch_auth_failures_total counter\n"
         "ib_orch_auth_failures_total{code=\"401\"} %llu\nib_orch_auth_failures_total{code=\"403\"} %llu\n",
         (unsigned long long)o->auth_failures[0], (unsigned long long)o->auth_failures[1]);
    ib_buf_printf(b, "# HELP ib_orch_cluster_errors_total Cluster-server calls of the REST API that failed (unreachable or internal).\n"
         "# TYPE ib_orch_cluster_errors_total counter\nib_orch_cluster_errors_total %llu\n",
         (unsigned long long)o->cluster_errors);
    leader_t *l = &o->leader;
    ib_buf_printf(b, "# HELP ib_orch_leader 1 while this orchestrator holds the leader lease.\n# TYPE ib_orch_leader gauge\n"
         "ib_orch_leader %d\n", atomic_load(&l->is_leader));
    ib_buf_printf(b, "# HELP ib_orch_leader_transitions_total Times this orchestrator became the leader.\n"
         "# TYPE ib_orch_leader_transitions_total counter\nib_orch_leader_transitions_total %llu\n",
         (unsigned long long)atomic_load(&l->transitions_total));
    ib_buf_printf(b, "# HELP ib_orch_lease_lost_total Times this orchestrator lost the lease it held.\n"
         "# TYPE ib_orch_lease_lost_total counter\nib_orch_lease_lost_total %llu\n",
         (unsigned long long)atomic_load(&l->lease_lost_total));
    ib_buf_printf(b, "# HELP ib_orch_redis_up 1 when the last Redis command succeeded.\n# TYPE ib_orch_redis_up gauge\n"
         "ib_orch_redis_up %d\n", atomic_load(&l->redis_up));
    ib_buf_printf(b, "# HELP ib_orch_cluster_up 1 when the leader's last cluster-server poll succeeded.\n"
         "# TYPE ib_orch_cluster_up gauge\nib_orch_cluster_up %d\n", atomic_load(&l->cluster_up));
    ib_buf_printf(b, "# HELP ib_orch_snapshot_writes_total Routing snapshots written to Redis by this orchestrator.\n"
         "# TYPE ib_orch_snapshot_writes_total counter\nib_orch_snapshot_writes_total %llu\n",
         (unsigned long long)atomic_load(&l->snapshot_writes_total));
    ib_buf_printf(b, "# HELP ib_orch_snapshot_errors_total Snapshot writes that failed.\n"
         "# TYPE ib_orch_snapshot_errors_total counter\nib_orch_snapshot_errors_total %llu\n",
         (unsigned long long)atomic_load(&l->snapshot_errors_total));
    ib_buf_printf(b, "# HELP ib_orch_snapshot_version Version of the last snapshot this orchestrator wrote.\n"
         "# TYPE ib_orch_snapshot_version gauge\nib_orch_snapshot_version %llu\n",
         (unsigned long long)atomic_load(&l->snapshot_version));
}

/* ---- routing ---- */

static int authorize(server_t *s, h2o_req_t *req, int route, uint64_t t0, const char *scope)
{
    if (s->o->cfg->auth_off)
        return 0;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    const char *tok;
    size_t tlen;
    ib_jwt_result_t res;
    if (i < 0 || ib_jwt_from_header(req->headers.entries[i].value.base, req->headers.entries[i].value.len, &tok,
                                    &tlen) != 0) {
        s->o->auth_failures[0]++;
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL, H2O_STRLIT("Bearer"));
        send_error(s, req, route, t0, 401, "missing bearer token (Authorization: Bearer <JWT>)", NULL,
                   "missing_token");
        return -1;
    }
    if (ib_jwt_verify(&s->o->cfg->jwt, tok, tlen, scope, (int64_t)time(NULL), &res) != 0) {
        s->o->auth_failures[res.status == 403 ? 1 : 0]++;
        if (res.status == 401)
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                           H2O_STRLIT("Bearer error=\"invalid_token\""));
        send_error(s, req, route, t0, res.status, res.error, NULL,
                   res.status == 403 ? "insufficient_scope" : "invalid_token");
        return -1;
    }
    return 0;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    server_t *s = ((struct handler *)self)->s;
    uint64_t t0 = ib_now_ns();
    const char *p = req->path_normalized.base;
    size_t plen = req->path_normalized.len;
    int get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    int post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    int patch = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("PATCH"));
    int del = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("DELETE"));
    static const char prefix[] = "/v1/workloads";
    if (h2o_memis(p, plen, H2O_STRLIT("/health"))) {
        char body[160];
        int n = snprintf(body, sizeof(body), "{\"status\":\"ok\",\"leader\":%s,\"instance\":\"%s\"}\n",
                         atomic_load(&s->o->leader.is_leader) ? "true" : "false", s->o->instance_id);
        send_body(s, req, R_HEALTH, t0, 200, "application/json", body, (size_t)n);
    } else if (h2o_memis(p, plen, H2O_STRLIT("/metrics"))) {
        ib_buf_reset(&s->out);
        render_metrics(s, &s->out);
        send_body(s, req, R_METRICS, t0, 200, "text/plain; version=0.0.4", s->out.ptr, s->out.len);
    } else if (h2o_memis(p, plen, H2O_STRLIT("/v1/workloads")) || h2o_memis(p, plen, H2O_STRLIT("/v1/workloads/"))) {
        if (!get && !post) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET, POST"));
            send_error(s, req, R_COLLECTION, t0, 405, "method not allowed (GET, POST)", NULL, NULL);
        } else if (authorize(s, req, R_COLLECTION, t0, get ? "workloads:read" : "workloads:write") == 0) {
            if (get)
                list(s, req, t0);
            else
                create(s, req, t0);
        }
    } else if (plen > sizeof(prefix) && memcmp(p, prefix, sizeof(prefix) - 1) == 0 && p[sizeof(prefix) - 1] == '/') {
        const char *id = p + sizeof(prefix);
        size_t idlen = plen - sizeof(prefix);
        char idbuf[64];
        if (!ib_workload_id_valid(id, idlen)) {
            send_error(s, req, R_ITEM, t0, 404, "no such workload (ids are " IB_WORKLOAD_ID_RULE ")", NULL,
                       "workload_not_found");
        } else if (!get && !patch && !del) {
            h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_ALLOW, NULL, H2O_STRLIT("GET, PATCH, DELETE"));
            send_error(s, req, R_ITEM, t0, 405, "method not allowed (GET, PATCH, DELETE)", NULL, NULL);
        } else if (authorize(s, req, R_ITEM, t0, get ? "workloads:read" : "workloads:write") == 0) {
            memcpy(idbuf, id, idlen);
            idbuf[idlen] = '\0';
            item(s, req, t0, idbuf, get ? 'G' : del ? 'D' : 'P');
        }
    } else {
        send_error(s, req, R_OTHER, t0, 404, "no such route", NULL, NULL);
    }
    return 0;
}

/* ---- loop ---- */

static void on_accept(h2o_socket_t *listener, const char *err)
{
    server_t *s = listener->data;
    if (err != NULL)
        return;
    for (int i = 0; i < 64; i++) {
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            return;
        int one = 1;
        setsockopt(h2o_socket_get_fd(sock), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        h2o_accept(&s->accept_ctx, sock);
    }
}

static void on_signal(h2o_socket_t *sock, const char *err)
{
    server_t *s = sock->data;
    (void)err;
    h2o_buffer_consume(&sock->input, sock->input->size);
    if (!s->stopping) {
        s->stopping = 1;
        if (s->listen_sock != NULL) {
            h2o_socket_read_stop(s->listen_sock);
            h2o_socket_close(s->listen_sock);
            s->listen_sock = NULL;
        }
        h2o_context_request_shutdown(&s->ctx);
    }
}

/* A non-blocking listener on HOST:PORT (port 0: any free one), its address in <sa>; -1
 * with a message when it cannot be had. */
static int listen_on(const char *hostport, struct sockaddr_in *sa)
{
    int one = 1;
    socklen_t salen = sizeof(*sa);
    if (ib_parse_hostport(hostport, sa) != 0) {
        fprintf(stderr, "ib-orchestrator: --listen wants IPV4:PORT, got '%s'\n", hostport);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)sa, sizeof(*sa)) != 0 || listen(fd, 1024) != 0 ||
        getsockname(fd, (struct sockaddr *)sa, &salen) != 0) {
        fprintf(stderr, "ib-orchestrator: cannot listen on %s: %s\n", hostport, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* libh2o's configuration, context and event loop, reading the listener <lfd> and the
 * signalfd <sfd> (both owned by the loop from here). */
static void http_setup(server_t *s, int lfd, int sfd)
{
    h2o_config_init(&s->config);
    s->config.max_request_entity_size = MAX_BODY;
    h2o_hostconf_t *host = h2o_config_register_host(&s->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    struct handler *h = (struct handler *)h2o_create_handler(path, sizeof(*h));
    h->super.on_req = on_req;
    h->s = s;
    s->loop = h2o_evloop_create();
    h2o_context_init(&s->ctx, s->loop, &s->config);
    s->accept_ctx.ctx = &s->ctx;
    s->accept_ctx.hosts = s->config.hosts;
    s->listen_sock = h2o_evloop_socket_create(s->loop, lfd, H2O_SOCKET_FLAG_DONT_READ);
    s->listen_sock->data = s;
    h2o_socket_read_start(s->listen_sock, on_accept);
    s->signal_sock = h2o_evloop_socket_create(s->loop, sfd, 0);
    s->signal_sock->data = s;
    h2o_socket_read_start(s->signal_sock, on_signal);
}

/* Runs the loop until a signal, then lets open connections finish for at most 5 s. */
static void serve_until_stopped(server_t *s)
{
    uint64_t stop_deadline = 0;
    for (;;) {
        if (s->stopping) {
            if (stop_deadline == 0)
                stop_deadline = ib_now_ns() + 5000000000ull;
            if (h2o_linklist_is_empty(&s->ctx.http1._conns) || ib_now_ns() >= stop_deadline)
                break;
        }
        h2o_evloop_run(s->loop, s->stopping ? 50 : 1000);
    }
}

static void http_teardown(server_t *s)
{
    if (s->listen_sock != NULL)
        h2o_socket_close(s->listen_sock);
    h2o_socket_close(s->signal_sock);
    h2o_evloop_run(s->loop, 0);
    if (h2o_timeout_is_linked(&s->ctx.http2._graceful_shutdown_timeout))
        h2o_timeout_unlink(&s->ctx.http2._graceful_shutdown_timeout);
    h2o_context_dispose(&s->ctx);
    h2o_evloop_destroy(s->loop);
    h2o_config_dispose(&s->config);
}

int ib_orchestrator_run(const ib_orch_config_t *cfg)
{
    orch_t *o = calloc(1, sizeof(*o));
    server_t *s = calloc(1, sizeof(*s));
    int rc = 1, sfd = -1, lfd = -1, leader_started = 0;
    if (o == NULL || s == NULL)
        goto out;
    o->cfg = cfg;
    s->o = o;
    if (cfg->instance_id != NULL) {
        snprintf(o->instance_id, sizeof(o->instance_id), "%s", cfg->instance_id);
    } else {
        char host[64] = "host";
        gethostname(host, sizeof(host) - 1);
        snprintf(o->instance_id, sizeof(o->instance_id), "%s-%d", host, (int)getpid());
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, NULL); /* before any thread (gRPC starts its own): they inherit it */
    signal(SIGPIPE, SIG_IGN);
    sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    s->cluster = ib_cluster_client_new(cfg->cluster);
    s->json = ib_json_parser_new(MAX_BODY);
    if (s->cluster == NULL || s->json == NULL)
        goto out;

    struct sockaddr_in sa;
    if ((lfd = listen_on(cfg->listen, &sa)) < 0)
        goto out;
    unsigned port = ntohs(sa.sin_port);

    if (cfg->redis != NULL || cfg->nsentinels > 0) {
        if (ib_leader_start(o) != 0) {
            fprintf(stderr, "ib-orchestrator: cannot start the leader thread\n");
            goto out;
        }
        leader_started = 1;
    }

    http_setup(s, lfd, sfd);
    lfd = sfd = -1; /* the event loop's sockets now */

    if (cfg->port_file != NULL && ib_write_port_file(cfg->port_file, port) != 0) {
        fprintf(stderr, "ib-orchestrator: cannot write %s\n", cfg->port_file);
        goto dispose;
    }
    fprintf(stderr, "ib-orchestrator: %s REST on http://%s:%u, cluster server %s, %s, auth %s\n", o->instance_id,
            inet_ntoa(sa.sin_addr), port, cfg->cluster,
            cfg->redis || cfg->nsentinels ? "leader election in Redis" : "no Redis (REST only)",
            cfg->auth_off ? "OFF" : "JWT");
    serve_until_stopped(s);
    rc = 0;
dispose:
    http_teardown(s);
out:
    if (leader_started)
        ib_leader_stop(o);
    if (lfd >= 0)
        close(lfd);
    if (sfd >= 0)
        close(sfd);
    if (s != NULL) {
        ib_cluster_client_free(s->cluster);
        ib_json_parser_free(s->json);
        ib_buf_free(&s->out);
    }
    fprintf(stderr, "ib-orchestrator: stopped\n");
    free(s);
    free(o);
    return rc;
}
