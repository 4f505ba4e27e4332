/*
 * ib-clusterd's gRPC server (gRPC core C API) and the cluster service's handlers.
 *
 * One completion queue, one thread. Each call is a small state machine: requested ->
 * (SEND_INITIAL_METADATA + RECV_MESSAGE) -> handled -> (SEND_MESSAGE + SEND_STATUS +
 * RECV_CLOSE_ON_SERVER) -> freed. The queue is polled with a 100 ms deadline so that the
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
#include <dirent.h>
#include <pthread.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluster.pb-c.h"
#include "ibrain/admin_http.h"
#include "ibrain/chat.h"
#include "ibrain/clock.h"
#include "ibrain/cluster_client.h"
#include "ibrain/net.h"
#include "ibrain/route.h"

/* A replica on its way out: an older generation after an update, or one scaled away. It
 * serves until every replica of the current generation is ready, is then announced as
 * draining (ListEndpoints) for the drain grace, so that routers stop sending to it, and
 * is then stopped: its manager drains the engine. Kept in STATE_DIR/workloads/ID.retiring. */
typedef struct retiring {
    char id[80];
    int draining;
    int stopped;
    uint64_t stop_at_ns;
} retiring_t;

/* Phases cross gRPC as numbers: cluster.proto's enums are include/ibrain/phase.h's. */
_Static_assert(IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_UNKNOWN == (int)IB_REPLICA_UNKNOWN &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_PENDING == (int)IB_REPLICA_PENDING &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_COMPILING == (int)IB_REPLICA_COMPILING &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_STARTING == (int)IB_REPLICA_STARTING &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_READY == (int)IB_REPLICA_READY &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_RESTARTING == (int)IB_REPLICA_RESTARTING &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_FAILED == (int)IB_REPLICA_FAILED &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_DRAINING == (int)IB_REPLICA_DRAINING &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_STOPPED == (int)IB_REPLICA_STOPPED &&
                   IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_GONE == (int)IB_REPLICA_GONE && IB_REPLICA__COUNT == 10,
               "cluster.proto ReplicaPhase matches ib_replica_phase_t");
_Static_assert(IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_UNKNOWN == (int)IB_WORKLOAD_UNKNOWN &&
                   IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_PROGRESSING == (int)IB_WORKLOAD_PROGRESSING &&
                   IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_READY == (int)IB_WORKLOAD_READY &&
                   IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_ROLLING == (int)IB_WORKLOAD_ROLLING &&
                   IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_DEGRADED == (int)IB_WORKLOAD_DEGRADED &&
                   IB_WORKLOAD__COUNT == 5,
               "cluster.proto WorkloadPhase matches ib_workload_phase_t");

#define MAX_RETIRING (2 * IB_MAX_WORKLOAD_REPLICAS)
#define MAX_LISTED (IB_MAX_WORKLOAD_REPLICAS + MAX_RETIRING)

typedef struct workload {
    ib_workload_spec_t spec;
    char replica_ids[IB_MAX_WORKLOAD_REPLICAS][80];
    retiring_t old[MAX_RETIRING];
    uint32_t nold;
} workload_t;

enum { M_CREATE, M_UPDATE, M_GET, M_LIST, M_DELETE, M_ENDPOINTS, M_HEALTH, M_OTHER, M__COUNT };
static const char *method_names[M__COUNT] = {"CreateWorkload", "UpdateWorkload", "GetWorkload", "ListWorkloads",
                                             "DeleteWorkload", "ListEndpoints",  "Health/Check", "other"};

typedef struct cluster {
    ib_driver_t *driver;
    const ib_cluster_config_t *cfg;
    const char *state_dir;
    workload_t workloads[IB_MAX_WORKLOADS];
    uint32_t n;
    uint64_t next_generation;
    /* metrics: counted on the main thread, rendered into <metrics> about once a second
     * for the status thread, which only copies it under <lock> */
    uint64_t calls[M__COUNT][17];
    uint64_t rolling_updates_total, scale_total, replicas_retired_total;
    uint64_t metrics_at_ns;
    pthread_mutex_t lock;
    ib_buf_t metrics;
    /* workload drivers: whether the workloads were read back from the platform yet (until
     * then, changes are refused as UNAVAILABLE), and when to try again */
    int restored;
    uint64_t restore_at_ns;
    uint64_t records_version; /* the driver's version when last listed */
    int ever_restored;
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

/* Whether the workloads, with <s> replacing (or added as) the one of its id, ask for more
 * replicas than a routing snapshot holds (IB_MAX_REPLICAS). 0, or -1 with <r> set to
 * RESOURCE_EXHAUSTED naming the limit. */
static int check_total_replicas(cluster_t *c, const ib_workload_spec_t *s, reply_t *r)
{
    uint32_t total = s->replicas;
    for (uint32_t i = 0; i < c->n; i++)
        if (strcmp(c->workloads[i].spec.id, s->id) != 0)
            total += c->workloads[i].spec.replicas;
    if (total <= IB_MAX_REPLICAS)
        return 0;
    char msg[200];
    snprintf(msg, sizeof(msg), "replicas: the workloads would ask for %u replicas, over IB_MAX_REPLICAS (%d), what a "
             "routing snapshot holds", total, IB_MAX_REPLICAS);
    fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", msg);
    return -1;
}

/* Fills a WorkloadStatus message (and its arrays, freed by the caller) for <w>. */
typedef struct status_msg {
    Ibrain__V1__WorkloadStatus st;
    Ibrain__V1__WorkloadSpec spec;
    Ibrain__V1__ReplicaStatus reps[MAX_LISTED];
    Ibrain__V1__ReplicaStatus *rptrs[MAX_LISTED];
    ib_replica_status_t raw[MAX_LISTED];
    char message[300];
    ib_workload_view_t view; /* workload drivers */
} status_msg_t;

/* Every replica of <w>, current generation first, then the retiring ones. */
static uint32_t replica_statuses(cluster_t *c, workload_t *w, ib_replica_status_t *out)
{
    if (c->driver->workloads != NULL) {
        ib_workload_view_t *v = calloc(1, sizeof(*v));
        if (v == NULL)
            return 0;
        c->driver->workloads->view(c->driver->self, &w->spec, v);
        uint32_t n = v->n < MAX_LISTED ? v->n : MAX_LISTED;
        memcpy(out, v->replicas, n * sizeof(*out));
        free(v);
        return n;
    }
    uint32_t n = 0;
    for (uint32_t i = 0; i < w->spec.replicas; i++)
        c->driver->status(c->driver->self, w->replica_ids[i], &out[n++]);
    for (uint32_t i = 0; i < w->nold; i++, n++) {
        c->driver->status(c->driver->self, w->old[i].id, &out[n]);
        out[n].retiring = 1;
        out[n].draining = w->old[i].draining;
    }
    return n;
}

/* The workload's phase and why, from its replicas' statuses. Returns the ready replicas
 * of the current generation. */
static uint32_t workload_phase(const workload_t *w, const ib_replica_status_t *raw, ib_workload_phase_t *phase,
                               char *msg, size_t mcap)
{
    uint32_t ready = 0, failed = 0, draining = 0;
    const char *reason = "";
    for (uint32_t i = 0; i < w->spec.replicas; i++) {
        if (raw[i].phase == IB_REPLICA_READY)
            ready++;
        else if (raw[i].phase == IB_REPLICA_FAILED || raw[i].phase == IB_REPLICA_RESTARTING) {
            failed++;
            if (reason[0] == '\0')
                reason = raw[i].reason;
        }
    }
    for (uint32_t i = 0; i < w->nold; i++)
        draining += w->old[i].draining;
    msg[0] = '\0';
    if (w->nold > draining) {
        *phase = IB_WORKLOAD_ROLLING;
        snprintf(msg, mcap, "generation %llu: %u of %u replicas ready; %u older replicas serve until then%s%s",
                 (unsigned long long)w->spec.generation, ready, w->spec.replicas, w->nold - draining,
                 failed ? "; " : "", failed ? reason : "");
    } else if (draining > 0) {
        *phase = IB_WORKLOAD_ROLLING;
        snprintf(msg, mcap, "%u retiring replicas draining", draining);
    } else if (ready == w->spec.replicas) {
        *phase = IB_WORKLOAD_READY;
    } else if (failed > 0) {
        *phase = IB_WORKLOAD_DEGRADED;
        snprintf(msg, mcap, "%u of %u replicas ready; %s", ready, w->spec.replicas, reason);
    } else {
        *phase = IB_WORKLOAD_PROGRESSING;
        snprintf(msg, mcap, "%u of %u replicas ready", ready, w->spec.replicas);
    }
    return ready;
}


static void replica_id(char *out, size_t cap, const ib_workload_spec_t *s, uint32_t index)
{
    char id[80]; /* <out> may be inside the workload that holds <s> */
    snprintf(id, sizeof(id), "%s-g%llu-r%u", s->id, (unsigned long long)s->generation, index);
    snprintf(out, cap, "%s", id);
}


_Static_assert(sizeof(((ib_workload_view_t *)0)->replicas) == sizeof(((status_msg_t *)0)->raw),
               "a workload driver's view fits a status message");

static void build_status(cluster_t *c, workload_t *w, status_msg_t *m)
{
    ibrain__v1__workload_status__init(&m->st);
    ib_spec_to_msg(&w->spec, &m->spec);
    m->st.spec = &m->spec;
    uint32_t n;
    if (c->driver->workloads != NULL) {
        c->driver->workloads->view(c->driver->self, &w->spec, &m->view);
        n = m->view.n < MAX_LISTED ? m->view.n : MAX_LISTED;
        memcpy(m->raw, m->view.replicas, n * sizeof(m->raw[0]));
    } else {
        n = replica_statuses(c, w, m->raw);
    }
    for (uint32_t i = 0; i < n; i++) {
        ibrain__v1__replica_status__init(&m->reps[i]);
        m->reps[i].id = m->raw[i].id;
        m->reps[i].phase = (Ibrain__V1__ReplicaPhase)m->raw[i].phase;
        m->reps[i].reason = m->raw[i].reason;
        m->reps[i].address = m->raw[i].address;
        m->reps[i].generation = m->raw[i].generation;
        m->reps[i].restarts = m->raw[i].restarts;
        m->reps[i].retiring = m->raw[i].retiring;
        m->reps[i].draining = m->raw[i].draining;
        m->reps[i].kv_events = m->raw[i].kv_events;
        m->reps[i].kv_events_replay = m->raw[i].kv_events_replay;
        m->rptrs[i] = &m->reps[i];
    }
    ib_workload_phase_t phase = IB_WORKLOAD_UNKNOWN;
    if (c->driver->workloads != NULL) {
        phase = m->view.phase;
        m->st.ready_replicas = m->view.ready;
        snprintf(m->message, sizeof(m->message), "%s", m->view.message);
    } else {
        m->st.ready_replicas = workload_phase(w, m->raw, &phase, m->message, sizeof(m->message));
    }
    m->st.phase = (Ibrain__V1__WorkloadPhase)phase;
    m->st.message = m->message;
    m->st.n_replicas = n;
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

/* Checks a WorkloadSpec message and copies it into <s>. 0, or -1 with <r> set. */
static int spec_from_msg(const Ibrain__V1__WorkloadSpec *m, ib_workload_spec_t *s, reply_t *r)
{
    memset(s, 0, sizeof(*s));
    if (!ib_workload_id_valid(m->id, m->id ? strlen(m->id) : 0)) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "id: '%s' is not " IB_WORKLOAD_ID_RULE, m->id ? m->id : "");
        return -1;
    }
    if (m->model == NULL || m->model[0] == '\0') {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "model: required");
        return -1;
    }
    if (m->replicas < 1 || m->replicas > IB_MAX_WORKLOAD_REPLICAS) {
        char msg[64];
        snprintf(msg, sizeof(msg), "replicas: must be 1..%d", IB_MAX_WORKLOAD_REPLICAS);
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", msg);
        return -1;
    }
    if (m->weights == NULL || m->weights[0] == '\0') {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "weights: required (a path the replicas' managers can read)");
        return -1;
    }
    COPY(s->id, m->id, "id");
    COPY(s->model, m->model, "model");
    COPY(s->weights, m->weights, "weights");
    COPY(s->engine_cmd, m->engine_cmd, "engine_cmd");
    COPY(s->chat_template, m->chat_template, "chat_template");
    COPY(s->tokenizer, m->tokenizer, "tokenizer");
    COPY(s->policy, m->policy, "policy");
    COPY(s->engine, m->engine, "engine");
    COPY(s->engine_args, m->engine_args, "engine_args");
    COPY(s->version, m->version, "version");
    COPY(s->cpu, m->cpu, "cpu");
    COPY(s->memory, m->memory, "memory");
    if ((s->cpu[0] && !ib_quantity_valid(s->cpu)) || (s->memory[0] && !ib_quantity_valid(s->memory))) {
        int cpu = s->cpu[0] && !ib_quantity_valid(s->cpu);
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s: not a quantity (\"4\", \"500m\", \"16Gi\")", cpu ? "cpu" : "memory");
        return -1;
    }
    if (m->gpus > 64) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "gpus: must be 0..64");
        return -1;
    }
    s->gpus = m->gpus;
    s->kv_events = m->kv_events;
    ib_chat_template_t tpl;
    if (s->chat_template[0] != '\0' && ib_chat_template_parse(s->chat_template, &tpl) != 0) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "chat_template: unknown template '%s' (chatml, qwen3, llama3, plain)",
             s->chat_template);
        return -1;
    }
    ib_policy_t pol;
    if (s->policy[0] != '\0' && ib_policy_parse(s->policy, &pol) != 0) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT,
             "policy: unknown policy '%s' (affinity, least-load, round-robin, consistent-hash)", s->policy);
        return -1;
    }
    if (m->block_size > 65536) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "block_size: must be 0..65536");
        return -1;
    }
    s->replicas = m->replicas;
    s->block_size = m->block_size;
    s->context_length = m->context_length;
    s->generation = m->generation;
    return 0;
out:
    return -1;
}

/* STATE_DIR/workloads/ID.spec holds each workload's spec (a WorkloadSpec message), so that
 * a restarted cluster server knows its workloads. Written to a temporary file, renamed. */
static void spec_path(const cluster_t *c, const char *id, char *out, size_t cap, const char *suffix)
{
    snprintf(out, cap, "%s/workloads/%s.spec%s", c->state_dir, id, suffix);
}

static int save_spec(const cluster_t *c, const ib_workload_spec_t *s)
{
    Ibrain__V1__WorkloadSpec m;
    ib_spec_to_msg(s, &m);
    size_t len = ibrain__v1__workload_spec__get_packed_size(&m);
    uint8_t *buf = malloc(len ? len : 1);
    char tmp[600], path[600];
    spec_path(c, s->id, tmp, sizeof(tmp), ".tmp");
    spec_path(c, s->id, path, sizeof(path), "");
    int rc = -1;
    FILE *f = buf ? fopen(tmp, "wb") : NULL;
    if (f != NULL) {
        ibrain__v1__workload_spec__pack(&m, buf);
        rc = fwrite(buf, 1, len, f) == len ? 0 : -1;
        if (fclose(f) != 0)
            rc = -1;
        if (rc == 0)
            rc = rename(tmp, path);
    }
    free(buf);
    return rc;
}

/* A workload driver's apply of <s>. 0, or -1 with <r> set to the driver's code and words. */
static int driver_apply(cluster_t *c, const ib_workload_spec_t *s, int create, reply_t *r)
{
    Ibrain__V1__WorkloadSpec m;
    ib_spec_to_msg(s, &m);
    size_t len = ibrain__v1__workload_spec__get_packed_size(&m);
    uint8_t *record = malloc(len ? len : 1);
    if (record == NULL) {
        fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", "out of memory");
        return -1;
    }
    ibrain__v1__workload_spec__pack(&m, record);
    char err[sizeof(r->message)];
    int code = c->driver->workloads->apply(c->driver->self, s, record, len, create, err, sizeof(err));
    free(record);
    if (code != 0)
        fail(r, (grpc_status_code)code, "%s", err);
    return code != 0 ? -1 : 0;
}

/* Workload drivers: changes wait until the workloads were read back from the platform. */
static int restored(cluster_t *c, reply_t *r)
{
    if (c->driver->workloads == NULL || c->restored)
        return 1;
    fail(r, GRPC_STATUS_UNAVAILABLE, "%s", "the cluster server has not read its workloads back from the platform "
         "yet (is the API server reachable?): retry");
    return 0;
}

static int driver_validate(cluster_t *c, const ib_workload_spec_t *s, reply_t *r)
{
    char err[200];
    if (c->driver->validate(c->driver->self, s, err, sizeof(err)) == 0)
        return 0;
    fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", err);
    return -1;
}

static void create_workload(cluster_t *c, const uint8_t *in, size_t len, reply_t *r)
{
    Ibrain__V1__WorkloadSpec *m = ibrain__v1__workload_spec__unpack(NULL, len, in);
    if (m == NULL) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "not a WorkloadSpec");
        return;
    }
    ib_workload_spec_t s;
    if (spec_from_msg(m, &s, r) != 0 || !restored(c, r))
        goto out;
    if (find(c, s.id) != NULL) {
        fail(r, GRPC_STATUS_ALREADY_EXISTS, "workload '%s' exists", s.id);
        goto out;
    }
    if (driver_validate(c, &s, r) != 0)
        goto out;
    if (c->n == IB_MAX_WORKLOADS) {
        char msg[120];
        snprintf(msg, sizeof(msg), "too many workloads: IB_MAX_WORKLOADS is %d", IB_MAX_WORKLOADS);
        fail(r, GRPC_STATUS_RESOURCE_EXHAUSTED, "%s", msg);
        goto out;
    }
    if (check_total_replicas(c, &s, r) != 0)
        goto out;
    s.generation = ++c->next_generation;
    if (c->driver->workloads != NULL) { /* the platform keeps the workload and rolls it out */
        if (driver_apply(c, &s, 1, r) != 0)
            goto out;
        workload_t *w = &c->workloads[c->n++];
        memset(w, 0, sizeof(*w));
        w->spec = s;
        fprintf(stderr, "ib-clusterd: workload %s created on %s: %u replicas of %s, generation %llu\n", s.id,
                c->driver->name, s.replicas, s.model, (unsigned long long)s.generation);
        reply_status(c, w, r);
        goto out;
    }
    if (save_spec(c, &s) != 0) {
        fail(r, GRPC_STATUS_INTERNAL, "%s", "cannot write the workload to the state directory");
        goto out;
    }
    workload_t *w = &c->workloads[c->n];
    memset(w, 0, sizeof(*w));
    w->spec = s;
    char err[160];
    for (uint32_t i = 0; i < s.replicas; i++) {
        if (c->driver->start(c->driver->self, &s, i, err, sizeof(err)) != 0) {
            for (uint32_t k = 0; k < i; k++) /* nothing half-created */
                c->driver->stop(c->driver->self, w->replica_ids[k]);
            char path[600];
            spec_path(c, s.id, path, sizeof(path), "");
            unlink(path);
            fail(r, GRPC_STATUS_INTERNAL, "starting a replica: %s", err);
            goto out;
        }
        replica_id(w->replica_ids[i], sizeof(w->replica_ids[i]), &s, i);
    }
    c->n++;
    fprintf(stderr, "ib-clusterd: workload %s created: %u replicas of %s, generation %llu\n", s.id, s.replicas,
            s.model, (unsigned long long)s.generation);
    reply_status(c, w, r);
out:
    ibrain__v1__workload_spec__free_unpacked(m, NULL);
}

/* STATE_DIR/workloads/ID.retiring: one line per retiring replica, "ID DRAINING". */
static void save_retiring(const cluster_t *c, const workload_t *w)
{
    char tmp[600], path[600];
    snprintf(tmp, sizeof(tmp), "%s/workloads/%s.retiring.tmp", c->state_dir, w->spec.id);
    snprintf(path, sizeof(path), "%s/workloads/%s.retiring", c->state_dir, w->spec.id);
    if (w->nold == 0) {
        unlink(path);
        return;
    }
    FILE *f = fopen(tmp, "w");
    if (f == NULL)
        return;
    for (uint32_t i = 0; i < w->nold; i++)
        fprintf(f, "%s %d\n", w->old[i].id, w->old[i].draining);
    if (fclose(f) == 0)
        rename(tmp, path);
}

/* After a restart: the retiring replicas' managers adopted (a manager that is gone is
 * started again, then retired with the rest: the driver knows no other way to find it). */
static void load_retiring(cluster_t *c, workload_t *w)
{
    char path[600];
    snprintf(path, sizeof(path), "%s/workloads/%s.retiring", c->state_dir, w->spec.id);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return;
    char id[80];
    int draining;
    uint64_t now = ib_now_ns();
    while (w->nold < MAX_RETIRING && fscanf(f, "%79s %d", id, &draining) == 2) {
        ib_workload_spec_t old = w->spec;
        unsigned long long gen;
        unsigned index;
        const char *g = strrchr(id, 'g');
        if (strncmp(id, w->spec.id, strlen(w->spec.id)) != 0 || g == NULL || sscanf(g, "g%llu-r%u", &gen, &index) != 2)
            continue;
        old.generation = gen;
        char err[160];
        if (c->driver->adopt(c->driver->self, &old, index, err, sizeof(err)) < 0)
            continue;
        retiring_t *o = &w->old[w->nold++];
        memset(o, 0, sizeof(*o));
        snprintf(o->id, sizeof(o->id), "%s", id);
        o->draining = draining;
        o->stop_at_ns = now + (uint64_t)c->cfg->drain_grace_ms * 1000000ull;
    }
    fclose(f);
}

static int retire(workload_t *w, const char *id, int draining, uint64_t stop_at_ns)
{
    if (w->nold == MAX_RETIRING)
        return -1;
    retiring_t *o = &w->old[w->nold++];
    size_t l = strnlen(id, sizeof(o->id) - 1); /* <id> is another field of <w> */
    memset(o, 0, sizeof(*o));
    memcpy(o->id, id, l);
    o->draining = draining;
    o->stop_at_ns = stop_at_ns;
    return 0;
}

static int same_but_replicas(const ib_workload_spec_t *a, const ib_workload_spec_t *b)
{
    ib_workload_spec_t x = *a, y = *b;
    x.replicas = y.replicas = 0;
    x.generation = y.generation = 0;
    return memcmp(&x, &y, sizeof(x)) == 0;
}

/* UpdateWorkload: scale in place when only the replica count changed, else a rolling
 * update to a new generation. Nothing changes when a replica cannot be started. */
static void update_workload(cluster_t *c, const uint8_t *in, size_t len, reply_t *r)
{
    Ibrain__V1__WorkloadSpec *m = ibrain__v1__workload_spec__unpack(NULL, len, in);
    if (m == NULL) {
        fail(r, GRPC_STATUS_INVALID_ARGUMENT, "%s", "not a WorkloadSpec");
        return;
    }
    ib_workload_spec_t s;
    workload_t *w;
    char err[160];
    if (spec_from_msg(m, &s, r) != 0 || !restored(c, r))
        goto out;
    if ((w = find(c, s.id)) == NULL) {
        fail(r, GRPC_STATUS_NOT_FOUND, "workload '%s' does not exist", s.id);
        goto out;
    }
    if (driver_validate(c, &s, r) != 0 || check_total_replicas(c, &s, r) != 0)
        goto out;
    if (c->driver->workloads != NULL) { /* the platform scales or rolls */
        int scale = same_but_replicas(&s, &w->spec);
        s.generation = scale ? w->spec.generation : c->next_generation + 1;
        if (driver_apply(c, &s, 0, r) != 0)
            goto out;
        if (!scale) {
            c->next_generation++;
            c->rolling_updates_total++;
        } else if (s.replicas != w->spec.replicas) {
            c->scale_total++;
        }
        fprintf(stderr, "ib-clusterd: workload %s %s on %s (%u replicas, generation %llu)\n", s.id,
                scale ? "scaled" : "rolling out", c->driver->name, s.replicas, (unsigned long long)s.generation);
        w->spec = s;
        reply_status(c, w, r);
        goto out;
    }
    uint64_t now = ib_now_ns(), grace = (uint64_t)c->cfg->drain_grace_ms * 1000000ull;
    if (same_but_replicas(&s, &w->spec)) { /* scale */
        s.generation = w->spec.generation;
        uint32_t had = w->spec.replicas;
        if (s.replicas < had && w->nold + (had - s.replicas) > MAX_RETIRING) {
            fail(r, GRPC_STATUS_FAILED_PRECONDITION, "%s", "too many replicas still retiring: retry when they are gone");
            goto out;
        }
        for (uint32_t i = had; i < s.replicas; i++) {
            if (c->driver->start(c->driver->self, &s, i, err, sizeof(err)) != 0) {
                for (uint32_t k = had; k < i; k++)
                    c->driver->stop(c->driver->self, w->replica_ids[k]);
                fail(r, GRPC_STATUS_INTERNAL, "starting a replica: %s", err);
                goto out;
            }
            replica_id(w->replica_ids[i], sizeof(w->replica_ids[i]), &s, i);
        }
        for (uint32_t i = s.replicas; i < had; i++) /* the highest indexes go, draining at once */
            retire(w, w->replica_ids[i], 1, now + grace);
        if (s.replicas != had)
            c->scale_total++;
        fprintf(stderr, "ib-clusterd: workload %s scaled from %u to %u replicas\n", s.id, had, s.replicas);
    } else { /* rolling update: a new generation beside the old one */
        if (w->nold + w->spec.replicas > MAX_RETIRING) {
            fail(r, GRPC_STATUS_FAILED_PRECONDITION, "%s", "a rolling update is still retiring replicas: retry when it is done");
            goto out;
        }
        s.generation = c->next_generation + 1;
        char ids[IB_MAX_WORKLOAD_REPLICAS][80];
        for (uint32_t i = 0; i < s.replicas; i++) {
            if (c->driver->start(c->driver->self, &s, i, err, sizeof(err)) != 0) {
                for (uint32_t k = 0; k < i; k++)
                    c->driver->stop(c->driver->self, ids[k]);
                fail(r, GRPC_STATUS_INTERNAL, "starting a replica: %s", err);
                goto out;
            }
            replica_id(ids[i], sizeof(ids[i]), &s, i);
        }
        c->next_generation++;
        for (uint32_t i = 0; i < w->spec.replicas; i++) /* they serve until the new ones are ready */
            retire(w, w->replica_ids[i], 0, 0);
        memcpy(w->replica_ids, ids, sizeof(ids));
        c->rolling_updates_total++;
        fprintf(stderr, "ib-clusterd: workload %s: rolling update to generation %llu (%u replicas)\n", s.id,
                (unsigned long long)s.generation, s.replicas);
    }
    w->spec = s;
    if (save_spec(c, &w->spec) != 0)
        fprintf(stderr, "ib-clusterd: cannot write %s's spec to the state directory\n", s.id);
    save_retiring(c, w);
    reply_status(c, w, r);
out:
    ibrain__v1__workload_spec__free_unpacked(m, NULL);
}

/* Moves rolling updates on: once every current replica is ready, the retiring ones are
 * announced as draining; after the grace they are stopped; once gone, forgotten. */
static void roll(cluster_t *c)
{
    uint64_t now = ib_now_ns(), grace = (uint64_t)c->cfg->drain_grace_ms * 1000000ull;
    for (uint32_t i = 0; i < c->n; i++) {
        workload_t *w = &c->workloads[i];
        if (w->nold == 0)
            continue;
        int changed = 0, waiting = 0;
        for (uint32_t k = 0; k < w->nold; k++)
            waiting += !w->old[k].draining;
        if (waiting) {
            uint32_t ready = 0;
            ib_replica_status_t st;
            for (uint32_t k = 0; k < w->spec.replicas; k++) {
                c->driver->status(c->driver->self, w->replica_ids[k], &st);
                ready += st.phase == IB_REPLICA_READY;
            }
            if (ready == w->spec.replicas) {
                for (uint32_t k = 0; k < w->nold; k++)
                    if (!w->old[k].draining) {
                        w->old[k].draining = 1;
                        w->old[k].stop_at_ns = now + grace;
                    }
                changed = 1;
                fprintf(stderr, "ib-clusterd: workload %s: generation %llu ready, %d older replicas draining\n",
                        w->spec.id, (unsigned long long)w->spec.generation, waiting);
            }
        }
        for (uint32_t k = 0; k < w->nold;) {
            retiring_t *o = &w->old[k];
            if (o->draining && !o->stopped && now >= o->stop_at_ns) {
                c->driver->stop(c->driver->self, o->id);
                o->stopped = 1;
            }
            if (o->stopped) {
                ib_replica_status_t st;
                c->driver->status(c->driver->self, o->id, &st);
                if (st.phase == IB_REPLICA_GONE) {
                    w->old[k] = w->old[--w->nold];
                    c->replicas_retired_total++;
                    changed = 1;
                    continue;
                }
            }
            k++;
        }
        if (changed)
            save_retiring(c, w);
    }
}

/* A workload driver's record of one workload, read back at start. */
static void on_record(void *ctx, const uint8_t *record, size_t len)
{
    cluster_t *c = ctx;
    Ibrain__V1__WorkloadSpec *m = ibrain__v1__workload_spec__unpack(NULL, len, record);
    reply_t r = {0};
    ib_workload_spec_t s;
    if (m == NULL || spec_from_msg(m, &s, &r) != 0) {
        fprintf(stderr, "ib-clusterd: ignoring a workload record on %s: %s\n", c->driver->name,
                m ? r.message : "not a WorkloadSpec");
    } else if (find(c, s.id) == NULL && c->n < IB_MAX_WORKLOADS) {
        workload_t *w = &c->workloads[c->n++];
        memset(w, 0, sizeof(*w));
        w->spec = s;
        if (s.generation > c->next_generation)
            c->next_generation = s.generation;
        if (!c->ever_restored)
            fprintf(stderr, "ib-clusterd: workload %s found on %s: %u replicas, generation %llu\n", s.id,
                c->driver->name, s.replicas, (unsigned long long)s.generation);
    }
    if (m != NULL)
        ibrain__v1__workload_spec__free_unpacked(m, NULL);
}

/* Workload drivers: the workloads read back from the platform (tried again every 2 s until
 * it answers). */
static void restore_workloads(cluster_t *c)
{
    uint64_t v = c->driver->workloads->version(c->driver->self);
    if (c->restored && v != c->records_version) /* changed on the platform: read them again */
        c->restored = 0;
    if (c->restored || ib_now_ns() < c->restore_at_ns)
        return;
    c->records_version = v;
    char err[256];
    c->n = 0;
    int code = c->driver->workloads->list(c->driver->self, on_record, c, err, sizeof(err));
    if (code == 0) {
        if (!c->ever_restored)
            fprintf(stderr, "ib-clusterd: %u workloads on %s\n", c->n, c->driver->name);
        c->restored = c->ever_restored = 1;
    } else {
        c->n = 0;
        c->restore_at_ns = ib_now_ns() + 2000000000ull;
        fprintf(stderr, "ib-clusterd: cannot list the workloads on %s yet: %s\n", c->driver->name, err);
    }
}

/* At start: every saved workload, its managers adopted when they still run. */
static void load_specs(cluster_t *c)
{
    char dir[600];
    snprintf(dir, sizeof(dir), "%s/workloads", c->state_dir);
    mkdir(dir, 0755);
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        size_t nl = strlen(name);
        if (nl > 5 && strcmp(name + nl - 5, ".spec") == 0 && c->n < IB_MAX_WORKLOADS) {
            char path[1200];
            snprintf(path, sizeof(path), "%s/%s", dir, name);
            FILE *f = fopen(path, "rb");
            uint8_t buf[4096];
            size_t len = f ? fread(buf, 1, sizeof(buf), f) : 0;
            if (f != NULL)
                fclose(f);
            Ibrain__V1__WorkloadSpec *m = len ? ibrain__v1__workload_spec__unpack(NULL, len, buf) : NULL;
            reply_t r = {0};
            workload_t *w = &c->workloads[c->n];
            if (m != NULL && spec_from_msg(m, &w->spec, &r) == 0) {
                int adopted = 0;
                char err[160];
                w->nold = 0;
                for (uint32_t k = 0; k < w->spec.replicas; k++) {
                    replica_id(w->replica_ids[k], sizeof(w->replica_ids[k]), &w->spec, k);
                    adopted += c->driver->adopt(c->driver->self, &w->spec, k, err, sizeof(err)) == 1;
                }
                load_retiring(c, w);
                if (w->spec.generation > c->next_generation)
                    c->next_generation = w->spec.generation;
                fprintf(stderr, "ib-clusterd: workload %s restored from the state directory: %d of %u replicas adopted\n",
                        w->spec.id, adopted, w->spec.replicas);
                c->n++;
            } else {
                fprintf(stderr, "ib-clusterd: ignoring %s: %s\n", path, m ? r.message : "not a WorkloadSpec");
            }
            if (m != NULL)
                ibrain__v1__workload_spec__free_unpacked(m, NULL);
        }
        free(names[i]);
    }
    if (n >= 0)
        free(names);
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
        char err[sizeof(r->message)];
        int code = 0;
        if (delete && c->driver->workloads != NULL && !restored(c, r)) {
            delete = 0;
        } else if (delete && c->driver->workloads != NULL &&
                   (code = c->driver->workloads->remove(c->driver->self, w->spec.id, err, sizeof(err))) != 0) {
            fail(r, (grpc_status_code)code, "%s", err);
            delete = 0;
        } else {
            reply_status(c, w, r);
        }
        if (delete && c->driver->workloads != NULL) {
            fprintf(stderr, "ib-clusterd: workload %s deleted on %s\n", w->spec.id, c->driver->name);
            *w = c->workloads[--c->n];
        } else if (delete) {
            for (uint32_t i = 0; i < w->spec.replicas; i++)
                c->driver->stop(c->driver->self, w->replica_ids[i]);
            for (uint32_t i = 0; i < w->nold; i++)
                c->driver->stop(c->driver->self, w->old[i].id);
            char path[600];
            spec_path(c, w->spec.id, path, sizeof(path), "");
            unlink(path);
            w->nold = 0;
            save_retiring(c, w); /* removes the file */
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
    size_t cap = (size_t)c->n * MAX_LISTED + 1, n = 0;
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
        uint32_t k = replica_statuses(c, w, &raw[n]);
        for (uint32_t j = 0; j < k; j++, n++) {
            ibrain__v1__endpoint__init(&eps[n]);
            eps[n].workload = w->spec.id;
            eps[n].replica = raw[n].id;
            eps[n].address = raw[n].address;
            eps[n].ready = raw[n].phase == IB_REPLICA_READY;
            eps[n].generation = raw[n].generation;
            eps[n].draining = raw[n].draining;
            eps[n].kv_events = raw[n].kv_events;
            eps[n].kv_events_replay = raw[n].kv_events_replay;
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
    int k = M_OTHER;
    if (strcmp(method, "/ibrain.v1.Cluster/CreateWorkload") == 0)
        create_workload(c, in, len, r), k = M_CREATE;
    else if (strcmp(method, "/ibrain.v1.Cluster/UpdateWorkload") == 0)
        update_workload(c, in, len, r), k = M_UPDATE;
    else if (strcmp(method, "/ibrain.v1.Cluster/GetWorkload") == 0)
        get_or_delete(c, in, len, r, 0), k = M_GET;
    else if (strcmp(method, "/ibrain.v1.Cluster/DeleteWorkload") == 0)
        get_or_delete(c, in, len, r, 1), k = M_DELETE;
    else if (strcmp(method, "/ibrain.v1.Cluster/ListWorkloads") == 0)
        list_workloads(c, r), k = M_LIST;
    else if (strcmp(method, "/ibrain.v1.Cluster/ListEndpoints") == 0)
        list_endpoints(c, in, len, r), k = M_ENDPOINTS;
    else if (strcmp(method, "/grpc.health.v1.Health/Check") == 0) {
        /* HealthCheckResponse{status: SERVING}: field 1, varint 1 */
        r->bytes = malloc(2);
        if (r->bytes != NULL) {
            r->bytes[0] = 0x08;
            r->bytes[1] = 0x01;
            r->len = 2;
        }
        k = M_HEALTH;
    } else
        fail(r, GRPC_STATUS_UNIMPLEMENTED, "method %s is not implemented", method);
    c->calls[k][(unsigned)r->code <= 16 ? (unsigned)r->code : 2]++;
}

/* ---- metrics (rendered on the main thread, served by the status thread) ---- */

static void render_metrics(cluster_t *c)
{
    ib_buf_t b = {0};
    ib_buf_printf(&b, "# HELP ib_cluster_rpc_total gRPC calls served, by method and status code.\n"
         "# TYPE ib_cluster_rpc_total counter\n");
    for (int m = 0; m < M__COUNT; m++)
        for (int code = 0; code <= 16; code++)
            if (c->calls[m][code] || (code == 0 && m != M_OTHER))
                ib_buf_printf(&b, "ib_cluster_rpc_total{method=\"%s\",code=\"%d\"} %llu\n", method_names[m], code,
                     (unsigned long long)c->calls[m][code]);
    uint32_t phases[8] = {0}, retiring = 0, rolling = 0, restarts = 0;
    /* the phases shown, in this order; every other one counts as "other" */
    static const ib_replica_phase_t shown[7] = {IB_REPLICA_READY,      IB_REPLICA_COMPILING, IB_REPLICA_STARTING,
                                                IB_REPLICA_RESTARTING, IB_REPLICA_FAILED,    IB_REPLICA_DRAINING,
                                                IB_REPLICA_PENDING};
    ib_replica_status_t *raw = calloc(MAX_LISTED, sizeof(*raw));
    for (uint32_t i = 0; raw != NULL && i < c->n; i++) {
        workload_t *w = &c->workloads[i];
        uint32_t k = replica_statuses(c, w, raw);
        for (uint32_t j = 0; j < k; j++) {
            int p = 7;
            for (int q = 0; q < 7; q++)
                if (raw[j].phase == shown[q])
                    p = q;
            phases[p]++;
            restarts += raw[j].restarts;
        }
        retiring += w->nold;
        rolling += w->nold > 0;
    }
    free(raw);
    ib_buf_printf(&b, "# HELP ib_cluster_workloads Workloads the cluster server runs.\n# TYPE ib_cluster_workloads gauge\n"
         "ib_cluster_workloads %u\n", c->n);
    ib_buf_printf(&b, "# HELP ib_cluster_workloads_rolling Workloads in a rolling update.\n"
         "# TYPE ib_cluster_workloads_rolling gauge\nib_cluster_workloads_rolling %u\n", rolling);
    ib_buf_printf(&b, "# HELP ib_cluster_replicas Replicas by their manager's phase.\n# TYPE ib_cluster_replicas gauge\n");
    for (int q = 0; q < 8; q++)
        ib_buf_printf(&b, "ib_cluster_replicas{phase=\"%s\"} %u\n", q < 7 ? ib_replica_phase_name(shown[q]) : "other",
                      phases[q]);
    ib_buf_printf(&b, "# HELP ib_cluster_replicas_retiring Replicas of older generations, or scaled away, not yet gone.\n"
         "# TYPE ib_cluster_replicas_retiring gauge\nib_cluster_replicas_retiring %u\n", retiring);
    ib_buf_printf(&b, "# HELP ib_cluster_replica_restarts Restarts of the current replicas (managers and engines).\n"
         "# TYPE ib_cluster_replica_restarts gauge\nib_cluster_replica_restarts %u\n", restarts);
    ib_buf_printf(&b, "# HELP ib_cluster_rolling_updates_total Rolling updates started.\n"
         "# TYPE ib_cluster_rolling_updates_total counter\nib_cluster_rolling_updates_total %llu\n",
         (unsigned long long)c->rolling_updates_total);
    ib_buf_printf(&b, "# HELP ib_cluster_scale_total Replica-count changes.\n"
         "# TYPE ib_cluster_scale_total counter\nib_cluster_scale_total %llu\n", (unsigned long long)c->scale_total);
    ib_buf_printf(&b, "# HELP ib_cluster_replicas_retired_total Retiring replicas stopped and gone.\n"
         "# TYPE ib_cluster_replicas_retired_total counter\nib_cluster_replicas_retired_total %llu\n",
         (unsigned long long)c->replicas_retired_total);
    if (c->driver->metrics != NULL)
        c->driver->metrics(c->driver->self, &b);
    pthread_mutex_lock(&c->lock);
    ib_buf_free(&c->metrics);
    c->metrics = b;
    pthread_mutex_unlock(&c->lock);
}

static int on_http(void *arg, const char *path, ib_buf_t *body, const char **ctype)
{
    cluster_t *c = arg;
    if (strcmp(path, "/health") == 0) {
        ib_buf_append(body, "{\"status\":\"ok\"}\n", 16);
        return 200;
    }
    if (strcmp(path, "/metrics") != 0)
        return 404;
    *ctype = IB_PROM_CTYPE;
    pthread_mutex_lock(&c->lock);
    ib_buf_append(body, c->metrics.ptr, c->metrics.len);
    pthread_mutex_unlock(&c->lock);
    return 200;
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

/* A completion on the server's queue: a new call (read its request) or its request read
 * (answer it); anything else ends the call. */
static void on_event(cluster_t *c, grpc_server *server, grpc_completion_queue *cq, call_t *k, int success)
{
    if (k->state == CALL_REQUESTED) {
        request_call(server, cq); /* the next one */
        if (!success) {
            free_call(k);
            return;
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
        if (success)
            on_read(c, k);
        else
            free_call(k);
    } else {
        free_call(k);
    }
}

/* On the way out: stops every replica and waits up to 15 s for the managers to drain and
 * exit (the driver reports them gone). */
static void stop_every_replica(cluster_t *c, ib_driver_t *driver)
{
    if (driver->workloads != NULL) /* the platform keeps running them: a restarted server finds them */
        return;
    for (uint32_t i = 0; i < c->n; i++) {
        for (uint32_t k = 0; k < c->workloads[i].spec.replicas; k++)
            driver->stop(driver->self, c->workloads[i].replica_ids[k]);
        for (uint32_t k = 0; k < c->workloads[i].nold; k++)
            driver->stop(driver->self, c->workloads[i].old[k].id);
    }
    for (int t = 0; t < 150; t++) {
        driver->tick(driver->self);
        ib_replica_status_t st;
        int alive = 0;
        for (uint32_t i = 0; i < c->n; i++)
            for (uint32_t k = 0; k < c->workloads[i].spec.replicas; k++) {
                driver->status(driver->self, c->workloads[i].replica_ids[k], &st);
                alive += st.phase != IB_REPLICA_GONE;
            }
        for (uint32_t i = 0; i < c->n; i++)
            for (uint32_t k = 0; k < c->workloads[i].nold; k++) {
                driver->status(driver->self, c->workloads[i].old[k].id, &st);
                alive += st.phase != IB_REPLICA_GONE;
            }
        if (alive == 0)
            return;
        usleep(100000);
    }
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
    c->cfg = cfg;
    c->state_dir = cfg->state_dir;
    pthread_mutex_init(&c->lock, NULL);
    if (driver->workloads != NULL)
        restore_workloads(c);
    else
        load_specs(c);
    ib_admin_t *admin = NULL;
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
    fprintf(stderr, "ib-clusterd: gRPC on 127.0.0.1:%d, %s driver, state in %s\n", port, driver->name, cfg->state_dir);
    if (cfg->http_listen != NULL) {
        char err[160];
        render_metrics(c);
        admin = ib_admin_start(cfg->http_listen, on_http, c, err, sizeof(err));
        if (admin == NULL || (cfg->http_port_file != NULL &&
                              ib_write_port_file(cfg->http_port_file, ib_admin_port(admin)) != 0)) {
            fprintf(stderr, "ib-clusterd: --http-listen: %s\n", admin ? "cannot write the port file" : err);
            goto out;
        }
        fprintf(stderr, "ib-clusterd: metrics on http://127.0.0.1:%u/metrics\n", ib_admin_port(admin));
    }
    if (request_call(server, cq) == NULL)
        goto out;
    for (;;) {
        struct signalfd_siginfo si;
        if (read(sfd, &si, sizeof(si)) == sizeof(si))
            break;
        driver->tick(driver->self);
        if (driver->workloads != NULL)
            restore_workloads(c);
        else
            roll(c);
        if (admin != NULL && ib_now_ns() >= c->metrics_at_ns) {
            render_metrics(c);
            c->metrics_at_ns = ib_now_ns() + 1000000000ull;
        }
        grpc_event ev = grpc_completion_queue_next(cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                                    gpr_time_from_millis(100, GPR_TIMESPAN)),
                                                   NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        on_event(c, server, cq, ev.tag, ev.success);
    }
    rc = 0;
    fprintf(stderr, "ib-clusterd: stopping: every replica's manager drains\n");
out:
    ib_admin_stop(admin);
    stop_every_replica(c, driver);
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
    ib_buf_free(&c->metrics);
    pthread_mutex_destroy(&c->lock);
    free(c);
    return rc;
}
