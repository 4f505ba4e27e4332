/* Phase names (include/ibrain/phase.h): the one table between the enums and their text. */
#include "ibrain/phase.h"

#include <string.h>

static const char *const replica_names[IB_REPLICA__COUNT] = {
    [IB_REPLICA_UNKNOWN] = "unknown",       [IB_REPLICA_PENDING] = "pending", [IB_REPLICA_COMPILING] = "compiling",
    [IB_REPLICA_STARTING] = "starting",     [IB_REPLICA_READY] = "ready",     [IB_REPLICA_RESTARTING] = "restarting",
    [IB_REPLICA_FAILED] = "failed",         [IB_REPLICA_DRAINING] = "draining", [IB_REPLICA_STOPPED] = "stopped",
    [IB_REPLICA_GONE] = "gone",
};

static const char *const workload_names[IB_WORKLOAD__COUNT] = {
    [IB_WORKLOAD_UNKNOWN] = "unknown", [IB_WORKLOAD_PROGRESSING] = "progressing", [IB_WORKLOAD_READY] = "ready",
    [IB_WORKLOAD_ROLLING] = "rolling", [IB_WORKLOAD_DEGRADED] = "degraded",
};

static int find_name(const char *const *names, int n, const char *s, size_t len)
{
    for (int i = 1; i < n; i++)
        if (strlen(names[i]) == len && memcmp(names[i], s, len) == 0)
            return i;
    return 0;
}

const char *ib_replica_phase_name(ib_replica_phase_t p)
{
    return (unsigned)p < IB_REPLICA__COUNT ? replica_names[p] : replica_names[IB_REPLICA_UNKNOWN];
}

const char *ib_workload_phase_name(ib_workload_phase_t p)
{
    return (unsigned)p < IB_WORKLOAD__COUNT ? workload_names[p] : workload_names[IB_WORKLOAD_UNKNOWN];
}

ib_replica_phase_t ib_replica_phase_parse(const char *s, size_t len)
{
    return (ib_replica_phase_t)find_name(replica_names, IB_REPLICA__COUNT, s, len);
}

ib_workload_phase_t ib_workload_phase_parse(const char *s, size_t len)
{
    return (ib_workload_phase_t)find_name(workload_names, IB_WORKLOAD__COUNT, s, len);
}
