/* round-robin: the usable replicas in turn (include/ibrain/route.h). */
#include "policy_impl.h"

#include <stdatomic.h>

/* The next usable replica after the router's shared turn counter (one relaxed atomic
 * add: workers racing each take a different turn). */
static void round_robin_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    out->reason = IB_REASON_ROUND_ROBIN;
    uint64_t start = atomic_fetch_add_explicit(&rt->rr, 1, memory_order_relaxed);
    for (uint32_t k = 0; k < in->nreplicas; k++) {
        uint32_t r = (uint32_t)((start + k) % in->nreplicas);
        if (in->usable[r]) {
            out->replica = (int)r;
            return;
        }
    }
}

const ib_policy_ops_t ib_policy_round_robin = {
    .name = "round-robin",
    .pick = round_robin_pick,
    .commit = ib_policy_commit_nothing,
};
