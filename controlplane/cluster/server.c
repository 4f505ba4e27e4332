/*
 * ib-clusterd's gRPC server (gRPC core C API) and the cluster service's handlers.
 *
 * One completion queue, one thread. Each call is a small state machine: requested ->
 * (SEND_INITIAL_METADATA + RECV_MESSAGE) -> handled -> (SEND_MESSAGE + SEND_STATUS +
 * RECV_CLOSE_ON_SERVER) -> freed. The queue is polled with a 200 ms deadline so that the
 * driver's tick (reaping and restarting managers) and signals run on the same thread:
 * the workload table needs no lock.
 */
#include "ibrain/cluster.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cluster.pb-c.h"
#include "ibrain/net.h"

typedef struct workload {
    ib_workload_spec_t spec;
    char replica_ids[IB_CLUSTER_MAX_REPLICAS][80];
} workload_t;

typedef struct cluster {
    ib_driver_t *driver;
    workload_t workloads[IB_CLUSTER_MAX_WORKLOADS];
    uint32_t n;
    uint64_t next_generation;
} cluster_t;

typedef struct call {
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    grpc_byte_buffer *req;
    grpc_byte_buffer *resp;
    grpc_slice status_details;
    int cancelled;
    enum { CALL_REQUESTED, CALL_READ, CALL_DONE } state;
} call_t;

/* ---- handlers: request bytes in, response bytes (malloc'd) out, a gRPC status ---- */

typedef struct reply {
    grpc_status_code code;
    char message[256];
    uint8_t *bytes;
    size_t len;
} reply_t;

#define REPLY_PACK(r, type, msg)                                                                                     \
    do {                                                                                                           \
        (r)->len = type##__get_packed_size(msg);                                                                   \
        (r)->bytes = malloc((r)->len ? (r)->len : 1);                                                              \
        if ((r)->bytes != NULL)                                                                                    \
            type##__pack(msg, (r)->bytes);                                                                         \
    } while (0)

static void fail(reply_t *r, grpc_status_code code, const char *fmt, const char *a)
{
    r->code = code;
    snprintf(r->message, sizeof(r->message), fmt, a);
}

static workload_t *find(cluster_t *c, const char *id)
{
    for (uint32_t i = 0; i < c->n; i++)
        if (strcmp(c->workloads[i].spec.id, id) == 0)
            return &c->workloads[i];
    return NULL;
}

static int valid_id(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 48)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
            return 0;
    return 1;
}

/* Fills a WorkloadStatus message (and its arrays, freed by the caller) for <w>. */
typedef struct status_msg {
    Ibrain__V1__WorkloadStatus st;
    Ibrain__V1__WorkloadSpec spec;
    Ibrain__V1__ReplicaStatus reps[IB_CLUSTER_MAX_REPLICAS];
    Ibrain__V1__ReplicaStatus *rptrs[IB_CLUSTER_MAX_REPLICAS];
    ib_replica_status_t raw[IB_CLUSTER_MAX_REPLICAS];
} status_msg_t;

static void build_status(cluster_t *c, workload_t *w, status_msg_t *m)
{
    ibrain__v1__workload_status__init(&m->st);
    ibrain__v1__workload_spec__init(&m->spec);
    const ib_workload_spec_t *s = &w->spec;
    m->spec.id = (char *)s->id;
    m->spec.model = (char *)s->model;
    m->spec.replicas = s->replicas;
    m->spec.weights = (char *)s->weights;
    m->spec.engine_cmd = (char *)s->engine_cmd;
    m->spec.chat_template = (char *)s->chat_template;
    m->spec.tokenizer = (char *)s->tokenizer;
    m->spec.block_size = s->block_size;
    m->spec.context_length = s->context_length;
    m->spec.policy = (char *)s->policy;
    m->spec.generation = s->generation;
    m->st.spec = &m->spec;
    for (uint32_t i = 0; i < s->replicas; i++) {
        c->driver->status(c->driver->self, w->replica_ids[i], &m->raw[i]);
        ibrain__v1__replica_status__init(&m->reps[i]);
        m->reps[i].id = m->raw[i].id;
        m->reps[i].phase = m->raw[i].phase;
        m->reps[i].reason = m->raw[i].reason;
        m->reps[i].address = m->raw[i].address;
        m->reps[i].generation = m->raw[i].generation;
        m->reps[i].restarts = m->raw[i].restarts;
        m->rptrs[i] = &m->reps[i];
        if (strcmp(m->raw[i].phase, "ready") == 0)
            m->st.ready_replicas++;
    }
    m->st.n_replicas = s->replicas;
    m->st.replicas = m->rptrs;
}

static void reply_status(cluster_t *c, workload_t *w, reply_t *r)
{
    status_msg_t *m = calloc(1, sizeof(*m));
    if (m == NULL) {
        fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
        return;
    }
    build_status(c, w, m);
    REPLY_PACK(r, ibrain__v1__workload_status, &m->st);
    free(m);
}

#define COPY(dst, src, field)                                                                                      \
    do {                                                                                                           \
        if ((src) != NULL && strlen(src) >= sizeof(dst)) {                                                          \
            fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s: too long", field);                                           \
            goto out;                                                                                              \
        }                                                                                                          \
        snprintf(dst, sizeof(dst), "%s", (src) ? (src) : "");                                                        \
    } while (0)

static void create_workload(cluster_t *c, const uint8_t *in, size_t len, reply_t *r)
{
    Ibrain__V1__WorkloadSpec *m = ibrain__v1__workload_spec__unpack(NULL, len, in);
    if (m == NULL) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "not a WorkloadSpec");
        return;
    }
    ib_workload_spec_t s;
    memset(&s, 0, sizeof(s));
    if (!valid_id(m->id)) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "id: '%s' is not 1-48 characters of [a-z0-9-]", m->id ? m->id : "");
        goto out;
    }
    if (m->model == NULL || m->model[0] == '\0') {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "model: required");
        goto out;
    }
    if (m->replicas < 1 || m->replicas > IB_CLUSTER_MAX_REPLICAS) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "replicas: must be 1..32");
        goto out;
    }
    if (m->weights == NULL || m->weights[0] == '\0') {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "weights: required (a path the replicas' managers can read)");
        goto out;
    }
    if (find(c, m->id) != NULL) {
        fail(r, GRPC_STATUS_ALREADY_EXISTS, "workload '%s' exists", m->id);
        goto out;
    }
    if (c->n == IB_CLUSTER_MAX_WORKLOADS) {
        fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "too many workloads");
        goto out;
    }
    COPY(s.id, m->id, "id");
    COPY(s.model, m->model, "model");
    COPY(s.weights, m->weights, "weights");
    COPY(s.engine_cmd, m->engine_cmd, "engine_cmd");
    COPY(s.chat_template, m->chat_template, "chat_template");
    COPY(s.tokenizer, m->tokenizer, "tokenizer");
    COPY(s.policy, m->policy, "policy");
    s.replicas = m->replicas;
    s.block_size = m->block_size;
    s.context_length = m->context_length;
    s.generation = ++c->next_generation;
    workload_t *w = &c->workloads[c->n];
    memset(w, 0, sizeof(*w));
    w->spec = s;
    char err[160];
    for (uint32_t i = 0; i < s.replicas; i++) {
        if (c->driver->start(c->driver->self, &s, i, err, sizeof(err)) != 0) {
            for (uint32_t k = 0; k < i; k++) /* nothing half-created */
                c->driver->stop(c->driver->self, w->replica_ids[k]);
            fail(r, GRPC_STATUS_INTERNAL, "starting a replica: %s", err);
            goto out;
        }
        snprintf(w->replica_ids[i], sizeof(w->replica_ids[i]), "%s-g%llu-r%u", s.id, (unsigned long long)s.generation,
                 i);
    }
    c->n++;
    fprintf(stderr, "ib-clusterd: workload %s created: %u replicas of %s, generation %llu\n", s.id, s.replicas,
            s.model, (unsigned long long)s.generation);
    reply_status(c, w, r);
out:
    ibrain__v1__workload_spec__free_unpacked(m, NULL);
}

static void get_or_delete(cluster_t *c, const uint8_t *in, size_t len, reply_t *r, int delete)
{
    Ibrain__V1__WorkloadRef *m = ibrain__v1__workload_ref__unpack(NULL, len, in);
    if (m == NULL) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "not a WorkloadRef");
        return;
    }
    workload_t *w = find(c, m->id);
    if (w == NULL) {
        fail(r, GRPC_STATUS_NOT_FOUND, "workload '%s' does not exist", m->id);
    } else {
        reply_status(c, w, r);
        if (delete) {
            for (uint32_t i = 0; i < w->spec.replicas; i++)
                c->driver->stop(c->driver->self, w->replica_ids[i]);
            fprintf(stderr, "ib-clusterd: workload %s deleted\n", w->spec.id);
            *w = c->workloads[--c->n];
        }
    }
    ibrain__v1__workload_ref__free_unpacked(m, NULL);
}

static void list_workloads(cluster_t *c, reply_t *r)
{
    status_msg_t *ms = calloc(c->n ? c->n : 1, sizeof(*ms));
    Ibrain__V1__WorkloadStatus **ptrs = calloc(c->n ? c->n : 1, sizeof(*ptrs));
    if (ms != NULL && ptrs != NULL) {
        for (uint32_t i = 0; i < c->n; i++) {
            build_status(c, &c->workloads[i], &ms[i]);
            ptrs[i] = &ms[i].st;
        }
        Ibrain__V1__WorkloadList list = IBRAIN__V1__WORKLOAD_LIST__INIT;
        list.n_workloads = c->n;
        list.workloads = ptrs;
        REPLY_PACK(r, ibrain__v1__workload_list, &list);
    } else {
        fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
    }
    free(ms);
    free(ptrs);
}

static void list_endpoints(cluster_t *c, const uint8_t *in, size_t len, reply_t *r)
{
    Ibrain__V1__ListEndpointsRequest *m = ibrain__v1__list_endpoints_request__unpack(NULL, len, in);
    if (m == NULL) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "not a ListEndpointsRequest");
        return;
    }
    size_t cap = (size_t)c->n * IB_CLUSTER_MAX_REPLICAS + 1, n = 0;
    Ibrain__V1__Endpoint *eps = calloc(cap, sizeof(*eps));
    Ibrain__V1__Endpoint **ptrs = calloc(cap, sizeof(*ptrs));
    ib_replica_status_t *raw = calloc(cap, sizeof(*raw));
    if (eps == NULL || ptrs == NULL || raw == NULL) {
        fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < c->n; i++) {
        workload_t *w = &c->workloads[i];
        if (m->workload[0] != '\0' && strcmp(m->workload, w->spec.id) != 0)
            continue;
        for (uint32_t k = 0; k < w->spec.replicas; k++, n++) {
            c->driver->status(c->driver->self, w->replica_ids[k], &raw[n]);
            ibrain__v1__endpoint__init(&eps[n]);
            eps[n].workload = w->spec.id;
            eps[n].replica = raw[n].id;
            eps[n].address = raw[n].address;
            eps[n].ready = strcmp(raw[n].phase, "ready") == 0;
            eps[n].generation = w->spec.generation;
            ptrs[n] = &eps[n];
        }
    }
    Ibrain__V1__EndpointList list = IBRAIN__V1__ENDPOINT_LIST__INIT;
    list.n_endpoints = n;
    list.endpoints = ptrs;
    REPLY_PACK(r, ibrain__v1__endpoint_list, &list);
out:
    free(eps);
    free(ptrs);
    free(raw);
    ibrain__v1__list_endpoints_request__free_unpacked(m, NULL);
}

static void dispatch(cluster_t *c, const char *method, const uint8_t *in, size_t len, reply_t *r)
{
    r->code = GRPC_STATUS_OK;
    if (strcmp(method, "/ibrain.v1.Cluster/CreateWorkload") == 0)
        create_workload(c, in, len, r);
    else if (strcmp(method, "/ibrain.v1.Cluster/GetWorkload") == 0)
        get_or_delete(c, in, len, r, 0);
    else if (strcmp(method, "/ibrain.v1.Cluster/DeleteWorkload") == 0)
        get_or_delete(c, in, len, r, 1);
    else if (strcmp(method, "/ibrain.v1.Cluster/ListWorkloads") == 0)
        list_workloads(c, r);
    else if (strcmp(method, "/ibrain.v1.Cluster/ListEndpoints") == 0)
        list_endpoints(c, in, len, r);
    else if (strcmp(method, "/grpc.health.v1.Health/Check") == 0) {
        /* HealthCheckResponse{status: SERVING}: field 1, varint 1 */
        r->bytes = malloc(2);
        if (r->bytes != NULL) {
            r->bytes[0] = 0x08;
            r->bytes[1] = 0x01;
            r->len = 2;
        }
    } else
        fail(r, GRPC_STATUS_UNIMPLEMENTED, "method %s is not implemented", method);
}

/* ---- gRPC plumbing ---- */

static call_t *request_call(grpc_server *server, grpc_completion_queue *cq)
{
    call_t *k = calloc(1, sizeof(*k));
    if (k == NULL)
        return NULL;
    grpc_call_details_init(&k->details);
    grpc_metadata_array_init(&k->md);
    k->state = CALL_REQUESTED;
    if (grpc_server_request_call(server, &k->call, &k->details, &k->md, cq, cq, k) != GRPC_CALL_OK) {
        grpc_call_details_destroy(&k->details);
        grpc_metadata_array_destroy(&k->md);
        free(k);
        return NULL;
    }
    return k;
}

static void free_call(call_t *k)
{
    if (k->req != NULL)
        grpc_byte_buffer_destroy(k->req);
    if (k->resp != NULL)
        grpc_byte_buffer_destroy(k->resp);
    if (k->state == CALL_DONE)
        grpc_slice_unref(k->status_details);
    grpc_call_details_destroy(&k->details);
    grpc_metadata_array_destroy(&k->md);
    if (k->call != NULL)
        grpc_call_unref(k->call);
    free(k);
}

static void on_read(cluster_t *c, call_t *k)
{
    /* The request's bytes, flattened. */
    uint8_t *in = NULL;
    size_t len = 0;
    if (k->req != NULL) {
        grpc_byte_buffer_reader rd;
        if (grpc_byte_buffer_reader_init(&rd, k->req)) {
            grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
            len = GRPC_SLICE_LENGTH(all);
            in = malloc(len ? len : 1);
            if (in != NULL)
                memcpy(in, GRPC_SLICE_START_PTR(all), len);
            grpc_slice_unref(all);
            grpc_byte_buffer_reader_destroy(&rd);
        }
    }
    char *method = grpc_slice_to_c_string(k->details.method);
    reply_t r = {0};
    if (in == NULL && k->req != NULL)
        fail(&r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
    else
        dispatch(c, method, in ? in : (const uint8_t *)"", len, &r);
    gpr_free(method);
    free(in);
    grpc_op ops[3];
    memset(ops, 0, sizeof(ops));
    int nops = 0;
    if (r.code == GRPC_STATUS_OK && r.bytes != NULL) {
        grpc_slice s = grpc_slice_from_copied_buffer((const char *)r.bytes, r.len);
        k->resp = grpc_raw_byte_buffer_create(&s, 1);
        grpc_slice_unref(s);
        ops[nops].op = GRPC_OP_SEND_MESSAGE;
        ops[nops++].data.send_message.send_message = k->resp;
    } else if (r.code == GRPC_STATUS_OK) {
        fail(&r, GRPC_STATUS_INTERNAL, "%s", "no response");
    }
    free(r.bytes);
    k->status_details = grpc_slice_from_copied_string(r.code == GRPC_STATUS_OK ? "" : r.message);
    ops[nops].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[nops].data.send_status_from_server.status = r.code;
    ops[nops++].data.send_status_from_server.status_details = &k->status_details;
    ops[nops].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[nops++].data.recv_close_on_server.cancelled = &k->cancelled;
    k->state = CALL_DONE;
    if (grpc_call_start_batch(k->call, ops, (size_t)nops, k, NULL) != GRPC_CALL_OK)
        free_call(k);
}

int ib_cluster_run(const ib_cluster_config_t *cfg, ib_driver_t *driver)
{
    struct sockaddr_in sa;
    if (ib_parse_hostport(cfg->listen, &sa) != 0) {
        fprintf(stderr, "ib-clusterd: --listen wants IPV4:PORT, got '%s'\n", cfg->listen);
        return 2;
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    pthread_sigmask(SIG_BLOCK, &mask, NULL); /* gRPC's threads inherit it */
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    cluster_t *c = calloc(1, sizeof(*c));
    if (c == NULL || sfd < 0)
        return 1;
    c->driver = driver;
    grpc_init();
    grpc_server *server = grpc_server_create(NULL, NULL);
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(server, cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int port = grpc_server_add_http2_port(server, cfg->listen, creds);
    grpc_server_credentials_release(creds);
    int rc = 1;
    if (port <= 0) {
        fprintf(stderr, "ib-clusterd: cannot listen on %s\n", cfg->listen);
        goto out;
    }
    grpc_server_start(server);
    if (cfg->port_file != NULL && ib_write_port_file(cfg->port_file, (uint16_t)port) != 0) {
        fprintf(stderr, "ib-clusterd: cannot write %s\n", cfg->port_file);
        goto out;
    }
    fprintf(stderr, "ib-clusterd: gRPC on 127.0.0.1:%d, local driver, state in %s\n", port, cfg->state_dir);
    if (request_call(server, cq) == NULL)
        goto out;
    for (;;) {
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof(si)) == sizeof(si))
            break;
        driver->tick(driver->self);
        grpc_event ev = grpc_completion_queue_next(cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                                    gpr_time_from_millis(200, GPR_TIMESPAN)),
                                                   NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        call_t *k = ev.tag;
        if (k->state == CALL_REQUESTED) {
            request_call(server, cq); /* the next one */
            if (!ev.success) {
                free_call(k);
                continue;
            }
            grpc_op ops[2];
            memset(ops, 0, sizeof(ops));
            ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
            ops[1].op = GRPC_OP_RECV_MESSAGE;
            ops[1].data.recv_message.recv_message = &k->req;
            k->state = CALL_READ;
            if (grpc_call_start_batch(k->call, ops, 2, k, NULL) != GRPC_CALL_OK)
                free_call(k);
        } else if (k->state == CALL_READ) {
            if (ev.success)
                on_read(c, k);
            else
                free_call(k);
        } else {
            free_call(k);
        }
    }
    rc = 0;
    fprintf(stderr, "ib-clusterd: stopping: every replica's manager drains\n");
out:
    for (uint32_t i = 0; i < c->n; i++)
        for (uint32_t k = 0; k < c->workloads[i].spec.replicas; k++)
            driver->stop(driver->self, c->workloads[i].replica_ids[k]);
    for (int t = 0; t < 150; t++) { /* up to 15 s for the managers to drain and exit */
        driver->tick(driver->self);
        ib_replica_status_t st;
        int alive = 0;
        for (uint32_t i = 0; i < c->n; i++)
            for (uint32_t k = 0; k < c->workloads[i].spec.replicas; k++) {
                driver->status(driver->self, c->workloads[i].replica_ids[k], &st);
                alive += strcmp(st.phase, "gone") != 0;
            }
        if (alive == 0)
            break;
        usleep(100000);
    }
    grpc_server_shutdown_and_notify(server, cq, NULL);
    grpc_server_cancel_all_calls(server);
    for (;;) { /* drain the queue: the pending request_call and the shutdown tag */
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == NULL)
            break;
        if (ev.type == GRPC_OP_COMPLETE && ev.tag != NULL)
            free_call(ev.tag);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
    }
    grpc_server_destroy(server);
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    grpc_shutdown();
    close(sfd);
    free(c);
    return rc;
}
