/* round-robin: the usable replicas in turn (include/ibrain/route.h). */
#include "policy_impl.h"

#include <stdatomic.h>

/* The usable replicas in turn, by the router's shared turn counter (one relaxed atomic
 * add: workers racing each take a different turn). The turn counts usable replicas only,
 * so that a lost replica's turns do not all fall to its neighbour. */
static void round_robin_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    out->reason = IB_REASON_ROUND_ROBIN;
    uint32_t usable = 0;
    for (uint32_t r = 0; r < in->nreplicas; r++)
        usable += in->usable[r] != 0;
    if (usable == 0)
        return;
    uint64_t turn = atomic_fetch_add_explicit(&rt->rr, 1, memory_order_relaxed) % usable;
    for (uint32_t r = 0; r < in->nreplicas; r++)
        if (in->usable[r] && turn-- == 0) {
            out->replica = (int)r;
            return;
        }
}

const ib_policy_ops_t ib_policy_round_robin = {
    .name = "round-robin",
    .pick = round_robin_pick,
    .commit = ib_policy_commit_nothing,
};
