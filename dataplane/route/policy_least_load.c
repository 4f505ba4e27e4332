/* least-load: the usable replica with the fewest requests in flight (include/ibrain/route.h). */
#include "policy_impl.h"

/* The usable replica with the least <load>, ties going to the first from <rotate> on, so
 * that equal replicas share the requests; -1 when none is usable. */
static int least_loaded(const ib_route_input_t *in, const int64_t *load, uint64_t rotate)
{
    int best = -1;
    for (uint32_t k = 0; k < in->nreplicas; k++) {
        uint32_t r = (uint32_t)((k + rotate) % in->nreplicas);
        if (in->usable[r] && (best < 0 || load[r] < load[best]))
            best = (int)r;
    }
    return best;
}

static void least_load_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    (void)rt;
    out->reason = IB_REASON_LEAST_LOAD;
    out->replica = least_loaded(in, in->inflight, ib_route_mix64(in->random));
}

const ib_policy_ops_t ib_policy_least_load = {
    .name = "least-load",
    .pick = least_load_pick,
    .commit = ib_policy_commit_nothing,
};
