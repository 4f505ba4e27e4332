/* affinity: the replica holding the longest cached prefix, within a load bound
 * (include/ibrain/route.h). */
#include "policy_impl.h"

/* A replica's cost for the request: its queued prefill work plus the prompt blocks it
 * would have to compute. A match shorter than <floor_blocks> (a system prompt every
 * request shares) earns no credit: following it would pile new conversations onto whoever
 * served the first one; below it, replicas compete on load alone, so they spread. */
static int64_t affinity_cost(const ib_route_input_t *in, uint32_t r, uint32_t matched, uint32_t floor_blocks)
{
    uint32_t credit = matched > 0 && matched >= floor_blocks ? matched : 0;
    return in->load[r] + (int64_t)(in->nblocks - credit);
}

/* Blocks the replica's cache has taken in so far (its insertion counter): among equally
 * cheap replicas, the one with the least is where a new conversation evicts least, so new
 * conversations spread their cache footprint evenly (a uniformly random pick put 8 of 48
 * conversations on one replica and 2 on another, whose caches then thrashed and idled). */
static uint32_t churn(const ib_router_t *rt, uint32_t r)
{
    return atomic_load_explicit(&rt->table.replicas[r].counter, memory_order_relaxed);
}

/* The longest credited match's least loaded holder, unless over the load bound; the
 * session's replica first, within the same bound; else the cheapest replica, the one whose
 * cache took in least among equals. Leaves <out> as it came (replica -1, reason unset)
 * when no replica is usable. */
static void affinity_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    uint32_t matched[IB_AFF_MAX_REPLICAS];
    ib_affinity_match_walk(&rt->table, in->hashes, in->nblocks, matched, in->walk);
    uint32_t n = in->nreplicas;
    /* A match earns credit when it covers min_match of the prompt, or when another replica
     * also holds a shorter part of it (that part is a shared prefix such as a system
     * prompt, so what only the holder has is a conversation's own history) and the part
     * only the holder has covers min_match / 2. A prefix held by one replica alone and
     * shorter than min_match may be a system prompt the first conversations happened to
     * bring there: following it would pile new conversations onto that replica. */
    uint32_t top_raw = 0, second = 0;
    for (uint32_t r = 0; r < n; r++) {
        if (!in->usable[r])
            continue;
        if (matched[r] > top_raw)
            second = top_raw, top_raw = matched[r];
        else if (matched[r] > second)
            second = matched[r];
    }
    uint32_t floor_blocks = (uint32_t)(rt->min_match * (double)in->nblocks);
    if (second > 0 && top_raw - second >= (uint32_t)(rt->min_match / 2 * (double)in->nblocks) && top_raw > second &&
        top_raw < floor_blocks)
        floor_blocks = top_raw; /* credit the distinctive holder */
    uint32_t top = 0;   /* the longest credited match among usable replicas */
    int holder = -1;    /* the least loaded replica with that match */
    int best = -1;      /* the cheapest: queued prefill plus the blocks it must compute */
    int64_t best_cost = 0, sum = 0;
    uint32_t best_churn = 0;
    uint32_t usable = 0;
    ib_tiebreak_t tie_holder = ib_tiebreak_start(in->random), tie_best = ib_tiebreak_start(~in->random);
    for (uint32_t r = 0; r < n; r++) {
        if (!in->usable[r])
            continue;
        usable++;
        sum += in->load[r];
        uint32_t m = matched[r] >= floor_blocks ? matched[r] : 0;
        if (m > top || (m == top && m > 0 && in->load[r] < in->load[holder])) {
            top = m, holder = (int)r;
            ib_tiebreak_reset(&tie_holder);
        } else if (m == top && m > 0 && in->load[r] == in->load[holder] && ib_tiebreak_take(&tie_holder)) {
            holder = (int)r;
        }
        int64_t cost = affinity_cost(in, r, matched[r], floor_blocks);
        uint32_t c = churn(rt, r);
        /* counters wrap: compared as a difference */
        if (best < 0 || cost < best_cost || (cost == best_cost && (int32_t)(c - best_churn) < 0)) {
            best = (int)r, best_cost = cost, best_churn = c;
            ib_tiebreak_reset(&tie_best);
        } else if (cost == best_cost && c == best_churn && ib_tiebreak_take(&tie_best)) {
            best = (int)r;
        }
    }
    if (best < 0)
        return;
    /* Bounded load: the holder of the longest match takes the request unless its queued
     * prefill is over (1 + eps) x the mean + c, c being this request's own size (the
     * holder may run one such request more than its share). Following the prefix even when
     * a colder replica would start sooner keeps the conversation's cache in one place; the
     * cost-based pick below would move it, and the next turn would recompute it. */
    double bound = (1.0 + rt->spill_eps) * ((double)sum / (double)usable) + (double)in->nblocks;
    /* Session stickiness, within the same bound. */
    if (in->session_key != 0) {
        uint32_t sm[IB_AFF_MAX_REPLICAS];
        ib_affinity_match(&rt->table, &in->session_key, 1, sm);
        for (uint32_t r = 0; r < n; r++) {
            if (sm[r] && in->usable[r] && (double)in->load[r] <= bound) {
                out->replica = (int)r;
                out->reason = IB_REASON_SESSION;
                out->matched = matched[r];
                return;
            }
        }
    }
    if (top > 0 && (double)in->load[holder] <= bound) {
        out->replica = holder;
        out->matched = matched[holder];
        out->reason = IB_REASON_AFFINITY;
        return;
    }
    out->replica = best;
    out->matched = matched[best];
    out->reason = top > 0 ? IB_REASON_LOAD_SPILL : IB_REASON_NO_MATCH;
}

/* Records the prompt's prefix blocks and its session (when it has one) as held by
 * <replica>, for the next picks: the affinity table is the policy's memory. */
static void affinity_commit(ib_router_t *rt, const ib_route_input_t *in, int replica)
{
    assert(replica >= 0);
    ib_affinity_insert_walked(&rt->table, in->hashes, in->nblocks, (uint32_t)replica, in->walk);
    if (in->session_key != 0)
        ib_affinity_insert(&rt->table, &in->session_key, 1, (uint32_t)replica);
}

const ib_policy_ops_t ib_policy_affinity = {
    .name = "affinity",
    .pick = affinity_pick,
    .commit = affinity_commit,
};
