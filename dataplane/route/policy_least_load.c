/* least-load: the usable replica with the fewest requests in flight (include/ibrain/route.h). */
#include "policy_impl.h"

int ib_route_least(const int64_t *load, const uint8_t *usable, uint32_t n, uint64_t random)
{
    int best = -1;
    ib_tiebreak_t tie = ib_tiebreak_start(random);
    for (uint32_t r = 0; r < n; r++) {
        if (!usable[r])
            continue;
        if (best < 0 || load[r] < load[best]) {
            best = (int)r;
            ib_tiebreak_reset(&tie);
        } else if (load[r] == load[best] && ib_tiebreak_take(&tie)) {
            best = (int)r;
        }
    }
    assert(best < 0 || usable[best]);
    return best;
}

static void least_load_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    (void)rt;
    out->reason = IB_REASON_LEAST_LOAD;
    out->replica = ib_route_least(in->inflight, in->usable, in->nreplicas, in->random);
}

const ib_policy_ops_t ib_policy_least_load = {
    .name = "least-load",
    .pick = least_load_pick,
    .commit = ib_policy_commit_nothing,
};
