/* consistent-hash: rendezvous hashing of the first prefix block (include/ibrain/route.h). */
#include "policy_impl.h"

/* The usable replica scoring highest for the key: the first prefix block (the shared
 * system prompt), else the session, else the request's random value. While the replica
 * set is unchanged a key always maps to the same replica; removing one moves only its
 * keys. */
static void consistent_hash_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    out->reason = IB_REASON_HASH;
    uint64_t key = in->nblocks ? in->hashes[0] : (in->session_key ? in->session_key : in->random);
    uint64_t best = 0;
    for (uint32_t r = 0; r < in->nreplicas; r++) {
        uint64_t score = ib_route_mix64(key ^ rt->replica_salt[r]);
        if (in->usable[r] && (out->replica < 0 || score > best))
            best = score, out->replica = (int)r;
    }
}

const ib_policy_ops_t ib_policy_consistent_hash = {
    .name = "consistent-hash",
    .pick = consistent_hash_pick,
    .commit = ib_policy_commit_nothing,
};
