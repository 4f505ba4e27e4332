/*
 * The orchestrator's leader loop (include/ibrain/orchestrator.h): every sync_ms it takes
 * or renews the lease; while it holds it, it asks the cluster server for every workload
 * (ListWorkloads: specs and replica statuses in one call) and writes the routing snapshot
 * (snapshot.proto) when its content changed, fenced by the lease. Ready replicas go in as
 * READY, retiring ones announced as draining as DRAINING; replicas not ready are left out.
 *
 * It polls every sync_ms, and every 50 ms (or sync_ms if less) while a workload is not
 * settled (replicas starting, a rolling update) and right after this orchestrator's REST
 * API changed one, so that new replicas reach the routers soon after they are ready.
 *
 * Versions: max(last written + 1, wall-clock ms), and a new leader starts from the stored
 * snapshot's version, so versions only grow across leaders. The snapshot is written again
 * when it disappears from Redis (a Redis restarted empty).
 */
#include <errno.h>
#include <hiredis.h>

#include "ibrain/net.h"
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <unistd.h>

#include "cluster.pb-c.h"
#include "ibrain/clock.h"
#include "ibrain/snapshot.h"
#include "ibrain/store.h"
#include "internal.h"

/* The snapshot for <l>'s workloads. Returns 0, -1 when out of memory. */
static int build_snapshot(const orch_t *o, const Ibrain__V1__WorkloadList *l, ib_snapshot_t *out)
{
    memset(out, 0, sizeof(*out));
    size_t nrep = 0;
    for (size_t i = 0; i < l->n_workloads; i++)
        nrep += l->workloads[i]->n_replicas;
    out->workloads = calloc(l->n_workloads ? l->n_workloads : 1, sizeof(*out->workloads));
    out->replicas = calloc(nrep ? nrep : 1, sizeof(*out->replicas));
    if (out->workloads == NULL || out->replicas == NULL) {
        ib_snapshot_free(out);
        return -1;
    }
    for (size_t i = 0; i < l->n_workloads; i++) {
        const Ibrain__V1__WorkloadStatus *st = l->workloads[i];
        const Ibrain__V1__WorkloadSpec *sp = st->spec;
        if (sp == NULL)
            continue;
        ib_snap_workload_t *w = &out->workloads[out->nworkloads++];
        snprintf(w->id, sizeof(w->id), "%s", sp->id);
        snprintf(w->model, sizeof(w->model), "%s", sp->model);
        snprintf(w->chat_template, sizeof(w->chat_template), "%s", sp->chat_template);
        snprintf(w->tokenizer, sizeof(w->tokenizer), "%s", sp->tokenizer);
        snprintf(w->policy, sizeof(w->policy), "%s", sp->policy);
        w->block_size = sp->block_size;
        w->context_length = sp->context_length;
        w->cache_ttl_ms = o->cfg->cache_ttl_ms;
        w->cache_blocks = o->cfg->cache_blocks;
        for (size_t k = 0; k < st->n_replicas; k++) {
            const Ibrain__V1__ReplicaStatus *r = st->replicas[k];
            if (r->phase != IBRAIN__V1__REPLICA_PHASE__REPLICA_PHASE_READY || r->address[0] == '\0')
                continue;
            ib_snap_replica_t *x = &out->replicas[out->nreplicas++];
            snprintf(x->id, sizeof(x->id), "%s", r->id);
            snprintf(x->workload, sizeof(x->workload), "%s", sp->id);
            snprintf(x->address, sizeof(x->address), "%s", r->address);
            x->draining = r->draining;
            x->generation = r->generation;
            /* a replay endpoint alone would make the snapshot invalid (ib_snapshot_check) */
            snprintf(x->kv_events, sizeof(x->kv_events), "%s", r->kv_events);
            snprintf(x->kv_events_replay, sizeof(x->kv_events_replay), "%s", r->kv_events[0] ? r->kv_events_replay : "");
        }
    }
    return 0;
}

typedef struct loop {
    orch_t *o;
    redisContext *redis;
    ib_cluster_client_t *cluster;
    ib_buf_t last;           /* the last snapshot written, encoded without version and time */
    uint64_t last_version;
    uint64_t next_lease_ms, next_exists_ms;
    int leading;
    int busy;                /* a workload is not settled: poll fast */
    int have_last;           /* <last> holds what was written (an empty snapshot encodes to 0 bytes) */
    char refused[300];       /* why the last snapshot built was not written ("" when it was fine) */
} loop_t;

/* Whether <snap> is within the limits ibrain holds (ib_snapshot_check). When not, it is
 * not written (the one in Redis stays): counted in snapshot_errors_total and logged when
 * the reason changes. Returns 0 when it may be written. */
static int refuse_over_limits(loop_t *L, const ib_snapshot_t *snap)
{
    char err[256];
    if (ib_snapshot_check(snap, err, sizeof(err)) == 0) {
        L->refused[0] = '\0';
        return 0;
    }
    atomic_fetch_add(&L->o->leader.snapshot_errors_total, 1);
    if (strcmp(err, L->refused) != 0)
        fprintf(stderr, "ib-orchestrator: snapshot not written, the last one stays: %s\n", err);
    snprintf(L->refused, sizeof(L->refused), "%s", err);
    return -1;
}

static void drop_redis(loop_t *L)
{
    if (L->redis != NULL)
        redisFree(L->redis);
    L->redis = NULL;
    atomic_store(&L->o->leader.redis_up, 0);
}

static void set_leading(loop_t *L, int on)
{
    leader_t *l = &L->o->leader;
    if (on && !L->leading) {
        atomic_fetch_add(&l->transitions_total, 1);
        fprintf(stderr, "ib-orchestrator: %s is the leader\n", L->o->instance_id);
        /* versions go on from the stored snapshot's; the first poll writes */
        ib_snapshot_t cur;
        char err[256];
        if (ib_snapshot_fetch(L->redis, &cur, err, sizeof(err)) == 1) {
            if (cur.version > L->last_version)
                L->last_version = cur.version;
            ib_snapshot_free(&cur);
        }
        ib_buf_free(&L->last);
        L->have_last = 0;
    } else if (!on && L->leading) {
        atomic_fetch_add(&l->lease_lost_total, 1);
        fprintf(stderr, "ib-orchestrator: %s is no longer the leader\n", L->o->instance_id);
    }
    L->leading = on;
    atomic_store(&l->is_leader, on);
}

static void tick(loop_t *L)
{
    const ib_orch_config_t *cfg = L->o->cfg;
    leader_t *l = &L->o->leader;
    uint64_t now = ib_wall_ms();
    if (L->redis == NULL) {
        char master[IB_HOSTPORT_MAX];
        const char *target = cfg->redis;
        if (cfg->nsentinels > 0) { /* asked again after every error: a failover moves it */
            if (ib_redis_sentinel_master(cfg->sentinels, cfg->nsentinels, cfg->redis_master, master,
                                         sizeof(master)) != 0) {
                set_leading(L, 0);
                return;
            }
            target = master;
        }
        L->redis = ib_redis_connect(target, 1000);
        if (L->redis == NULL) {
            set_leading(L, 0);
            return;
        }
        L->next_lease_ms = 0;
    }
    if (now >= L->next_lease_ms) {
        int rc = ib_lease_acquire(L->redis, IB_LEADER_KEY, L->o->instance_id, cfg->lease_ms);
        if (rc < 0) {
            drop_redis(L);
            set_leading(L, 0);
            return;
        }
        atomic_store(&l->redis_up, 1);
        set_leading(L, rc == 1);
        L->next_lease_ms = now + cfg->lease_ms / 3;
    }
    if (!L->leading)
        return;
    Ibrain__V1__ListWorkloadsRequest req = IBRAIN__V1__LIST_WORKLOADS_REQUEST__INIT;
    uint8_t buf[16];
    size_t len = ibrain__v1__list_workloads_request__pack(&req, buf);
    ib_rpc_result_t r;
    if (ib_cluster_call(L->cluster, "ListWorkloads", buf, len, 2000, &r) != 0) {
        if (atomic_exchange(&l->cluster_up, 0))
            fprintf(stderr, "ib-orchestrator: cluster server: %s %s; the last snapshot stays\n",
                    ib_rpc_code_name(r.code), r.message);
        return;
    }
    atomic_store(&l->cluster_up, 1);
    Ibrain__V1__WorkloadList *wl = ibrain__v1__workload_list__unpack(NULL, r.len, r.bytes);
    free(r.bytes);
    if (wl == NULL)
        return;
    L->busy = 0;
    for (size_t i = 0; i < wl->n_workloads; i++)
        L->busy |= wl->workloads[i]->phase != IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_READY &&
                   wl->workloads[i]->phase != IBRAIN__V1__WORKLOAD_PHASE__WORKLOAD_PHASE_DEGRADED;
    ib_snapshot_t snap;
    int built = build_snapshot(L->o, wl, &snap);
    ibrain__v1__workload_list__free_unpacked(wl, NULL);
    if (built != 0)
        return;
    if (refuse_over_limits(L, &snap) != 0) {
        ib_snapshot_free(&snap);
        return;
    }
    ib_buf_t enc = {0};
    int force = 0;
    if (now >= L->next_exists_ms) { /* a Redis restarted empty gets the snapshot again */
        redisReply *x = redisCommand(L->redis, "EXISTS %s", IB_SNAPSHOT_KEY);
        force = x != NULL && x->type == REDIS_REPLY_INTEGER && x->integer == 0;
        if (x == NULL) {
            ib_snapshot_free(&snap);
            drop_redis(L);
            set_leading(L, 0);
            return;
        }
        freeReplyObject(x);
        L->next_exists_ms = now + 1000;
    }
    if (ib_snapshot_encode(&snap, &enc) == 0 &&
        (force || !L->have_last || enc.len != L->last.len ||
         (enc.len > 0 && memcmp(enc.ptr, L->last.ptr, enc.len) != 0))) {
        snap.version = L->last_version + 1 > now ? L->last_version + 1 : now;
        char err[300];
        int rc = ib_snapshot_write(L->redis, &snap, IB_LEADER_KEY, L->o->instance_id, err, sizeof(err));
        if (rc == 1) {
            L->last_version = snap.version;
            ib_buf_free(&L->last);
            L->last = enc;
            L->have_last = 1;
            enc = (ib_buf_t){0};
            atomic_fetch_add(&l->snapshot_writes_total, 1);
            atomic_store(&l->snapshot_version, snap.version);
        } else if (rc == 0) {
            set_leading(L, 0); /* fenced: another orchestrator holds the lease */
        } else {
            atomic_fetch_add(&l->snapshot_errors_total, 1);
            fprintf(stderr, "ib-orchestrator: %s\n", err);
            drop_redis(L);
            set_leading(L, 0);
        }
    }
    ib_buf_free(&enc);
    ib_snapshot_free(&snap);
}

static void *leader_main(void *arg)
{
    orch_t *o = arg;
    loop_t L = {.o = o};
    L.cluster = ib_cluster_client_new(o->cfg->cluster);
    for (;;) {
        uint64_t t0 = ib_now_ns();
        if (L.cluster != NULL)
            tick(&L);
        uint64_t spent_ms = (ib_now_ns() - t0) / 1000000;
        uint32_t period = L.busy && o->cfg->sync_ms > 50 ? 50 : o->cfg->sync_ms;
        int wait = spent_ms >= period ? 0 : (int)(period - spent_ms);
        struct pollfd p[2] = {{o->leader.stop_pipe[0], POLLIN, 0}, {o->leader.wake_fd, POLLIN, 0}};
        if (poll(p, 2, wait) > 0 && p[0].revents)
            break;
        if (p[1].revents) {
            uint64_t x;
            (void)!read(o->leader.wake_fd, &x, sizeof(x));
            L.busy = 1;
        }
    }
    if (L.redis != NULL && L.leading)
        ib_lease_release(L.redis, IB_LEADER_KEY, o->instance_id); /* the next leader need not wait */
    if (L.redis != NULL)
        redisFree(L.redis);
    ib_buf_free(&L.last);
    ib_cluster_client_free(L.cluster);
    return NULL;
}

void ib_leader_wake(orch_t *o)
{
    uint64_t one = 1;
    if (o->leader.wake_fd > 0)
        (void)!write(o->leader.wake_fd, &one, sizeof(one));
}

int ib_leader_start(orch_t *o)
{
    o->leader.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (o->leader.wake_fd < 0)
        return -1;
    if (pipe(o->leader.stop_pipe) != 0)
        return -1;
    if (pthread_create(&o->leader.thread, NULL, leader_main, o) != 0) {
        close(o->leader.stop_pipe[0]);
        close(o->leader.stop_pipe[1]);
        return -1;
    }
    return 0;
}

void ib_leader_stop(orch_t *o)
{
    close(o->leader.stop_pipe[1]);
    pthread_join(o->leader.thread, NULL);
    close(o->leader.stop_pipe[0]);
    close(o->leader.wake_fd);
}
