/*
 * Workload and replica phases: C enums, one name table (controlplane/common/phase.c) for
 * every place that shows them as text (REST JSON, ibctl, /metrics labels, the manager's
 * GET /status), and the same numbers as the ReplicaPhase and WorkloadPhase enums of
 * controlplane/proto/cluster.proto (asserted in controlplane/cluster/server.c), so that a
 * phase crosses gRPC as a number and converts with a cast.
 */
#ifndef IBRAIN_PHASE_H
#define IBRAIN_PHASE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef enum ib_replica_phase {
    IB_REPLICA_UNKNOWN = 0, /* "unknown": a name this build does not know */
    IB_REPLICA_PENDING,     /* the driver has not heard from the replica's manager yet */
    IB_REPLICA_COMPILING,   /* the manager's phases, as in its GET /status ... */
    IB_REPLICA_STARTING,
    IB_REPLICA_READY,
    IB_REPLICA_RESTARTING,
    IB_REPLICA_FAILED,
    IB_REPLICA_DRAINING,
    IB_REPLICA_STOPPED,     /* ... to here */
    IB_REPLICA_GONE,        /* the driver no longer knows the replica */
    IB_REPLICA__COUNT
} ib_replica_phase_t;

typedef enum ib_workload_phase {
    IB_WORKLOAD_UNKNOWN = 0,
    IB_WORKLOAD_PROGRESSING, /* replicas starting */
    IB_WORKLOAD_READY,       /* every replica of the current generation ready, nothing retiring */
    IB_WORKLOAD_ROLLING,     /* older replicas serving or draining */
    IB_WORKLOAD_DEGRADED,    /* a replica failed or restarts */
    IB_WORKLOAD__COUNT
} ib_workload_phase_t;

/* ---- functions ---- */

/** The phase's name ("ready"); "unknown" for a value out of range. */
const char *ib_replica_phase_name(ib_replica_phase_t p);
const char *ib_workload_phase_name(ib_workload_phase_t p);

/** The phase named by the <len> bytes at <s>; IB_*_UNKNOWN when none is. */
ib_replica_phase_t ib_replica_phase_parse(const char *s, size_t len);
ib_workload_phase_t ib_workload_phase_parse(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif
