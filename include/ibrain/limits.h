/*
 * Limits shared by the control plane and the data plane. The cluster server, the
 * orchestrator and ib-snapshot (the writers of the routing snapshot) refuse what goes over
 * them, naming the limit; ib_snapshot_check() (dataplane/sync/snapshot.c) checks them on
 * both sides, so that ibrain (the reader) is never handed a snapshot its routing table
 * cannot hold.
 *
 *   IB_MAX_WORKLOADS           workloads in the cluster, in a snapshot, in ibrain's table
 *   IB_MAX_REPLICAS            replicas in a snapshot (ready and draining, every workload
 *                              together): ibrain's replica slots
 *   IB_MAX_WORKLOAD_REPLICAS   replicas a workload asks for (WorkloadSpec.replicas)
 *
 * Widths that hold them, each asserted below or beside its type:
 *   - a replica slot is 8 bits in the affinity table's slot word (include/ibrain/affinity.h),
 *     in the routing table's slot lists and in a write-back record's header
 *     (dataplane/proxy/internal.h);
 *   - a workload index is 8 bits in a write-back record's header;
 *   - replica bitmasks are IB_REPLICA_MASK_WORDS 64-bit words (ready sets, the affinity
 *     table's used set and its match walk, write-back's seen set, a request's retry
 *     candidates in dataplane/proxy/worker.c).
 */
#ifndef IBRAIN_LIMITS_H
#define IBRAIN_LIMITS_H

#define IB_MAX_WORKLOADS 64
#define IB_MAX_REPLICAS 128
#define IB_MAX_WORKLOAD_REPLICAS 32
#define IB_REPLICA_MASK_WORDS (IB_MAX_REPLICAS / 64)

#ifdef __cplusplus
#define IB_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define IB_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

IB_STATIC_ASSERT(IB_MAX_REPLICAS % 64 == 0, "replica bitmasks are whole 64-bit words");
IB_STATIC_ASSERT(IB_MAX_REPLICAS <= 256, "a replica slot is 8 bits (affinity slot word, write-back header)");
IB_STATIC_ASSERT(IB_MAX_WORKLOADS <= 256, "a workload index is 8 bits (write-back header)");
IB_STATIC_ASSERT(IB_MAX_WORKLOAD_REPLICAS <= IB_MAX_REPLICAS, "one workload's replicas fit ibrain's slots");

#endif
