/* The orchestrator's state, shared by its REST thread (rest.c) and leader thread (leader.c). */
#ifndef IB_ORCH_INTERNAL_H
#define IB_ORCH_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "ibrain/cluster_client.h"
#include "ibrain/orchestrator.h"

enum { R_COLLECTION, R_ITEM, R_HEALTH, R_METRICS, R_OTHER, R__COUNT };
#define ORCH_CODES 12 /* 200 201 400 401 403 404 405 409 413 500 503 other */
#define ORCH_BUCKETS 9

typedef struct leader {
    pthread_t thread;
    int stop_pipe[2];
    int wake_fd;           /* eventfd: the REST thread changed a workload, poll now */
    /* read by the REST thread for /health and /metrics */
    atomic_int is_leader;
    atomic_int redis_up;
    atomic_int cluster_up;
    atomic_uint_fast64_t transitions_total;
    atomic_uint_fast64_t snapshot_writes_total;
    atomic_uint_fast64_t snapshot_errors_total;
    atomic_uint_fast64_t snapshot_version;
    atomic_uint_fast64_t lease_lost_total;
} leader_t;

typedef struct orch {
    const ib_orch_config_t *cfg;
    char instance_id[96];
    leader_t leader;
    /* REST thread only */
    uint64_t http[R__COUNT][ORCH_CODES];
    uint64_t latency_buckets[ORCH_BUCKETS + 1];
    double latency_sum;
    uint64_t auth_failures[2]; /* 401, 403 */
    uint64_t cluster_errors;
} orch_t;

/* leader.c */
int ib_leader_start(orch_t *o);
void ib_leader_stop(orch_t *o);
/** Makes the leader poll the cluster server now (after a create, update or delete). */
void ib_leader_wake(orch_t *o);

#endif
