/* Routing policies (include/ibrain/route.h). */
#include "ibrain/route.h"

#include <string.h>

static const char *const policy_names[] = {"affinity", "least-load", "round-robin", "consistent-hash"};
static const char *const reason_names[IB_REASON__COUNT] = {"affinity",   "session",     "load_spill", "no_match",
                                                          "least_load", "round_robin", "hash"};

int ib_policy_parse(const char *name, ib_policy_t *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(name, policy_names[i]) == 0) {
            *out = (ib_policy_t)i;
            return 0;
        }
    return -1;
}

const char *ib_policy_name(ib_policy_t p) { return (unsigned)p < 4 ? policy_names[p] : "unknown"; }
const char *ib_route_reason_name(ib_route_reason_t r) { return (unsigned)r < IB_REASON__COUNT ? reason_names[r] : "?"; }

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int ib_router_init(ib_router_t *rt, ib_policy_t policy, uint32_t nreplicas, uint32_t sets_log2,
                   uint32_t capacity_blocks, uint64_t ttl_ms)
{
    memset(rt, 0, sizeof(*rt));
    rt->policy = policy;
    rt->spill_eps = 0.5;
    rt->spill_c = 4;
    rt->min_match = 0.5;
    atomic_init(&rt->rr, 0);
    for (uint32_t r = 0; r < IB_AFF_MAX_REPLICAS; r++)
        rt->replica_salt[r] = mix64(0x5eed0000ull + r);
    return ib_affinity_init(&rt->table, sets_log2, nreplicas, capacity_blocks, ttl_ms);
}

void ib_router_destroy(ib_router_t *rt) { ib_affinity_destroy(&rt->table); }

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

/* A replica's cost for the request: its queued prefill work plus the prompt blocks it
 * would have to compute. A match shorter than <floor_blocks> (a system prompt every
 * request shares) earns no credit: following it would pile new conversations onto whoever
 * served the first one; below it, replicas compete on load alone, so they spread. */
static int64_t affinity_cost(const ib_route_input_t *in, uint32_t r, uint32_t matched, uint32_t floor_blocks)
{
    uint32_t credit = matched > 0 && matched >= floor_blocks ? matched : 0;
    return in->load[r] + (int64_t)(in->nblocks - credit);
}

static void pick_affinity(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    uint32_t matched[IB_AFF_MAX_REPLICAS];
    ib_affinity_match(&rt->table, in->hashes, in->nblocks, matched);
    uint32_t n = in->nreplicas, rot = (uint32_t)(mix64(in->random) % (n ? n : 1));
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
    uint32_t usable = 0;
    for (uint32_t k = 0; k < n; k++) {
        uint32_t r = (k + rot) % n;
        if (!in->usable[r])
            continue;
        usable++;
        sum += in->load[r];
        uint32_t m = matched[r] >= floor_blocks ? matched[r] : 0;
        if (m > top || (m == top && m > 0 && in->load[r] < in->load[holder]))
            top = m, holder = (int)r;
        int64_t cost = affinity_cost(in, r, matched[r], floor_blocks);
        if (best < 0 || cost < best_cost)
            best = (int)r, best_cost = cost;
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

void ib_router_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    out->replica = -1;
    out->matched = 0;
    switch (rt->policy) {
    case IB_POLICY_AFFINITY:
        pick_affinity(rt, in, out);
        return;
    case IB_POLICY_LEAST_LOAD:
        out->reason = IB_REASON_LEAST_LOAD;
        out->replica = least_loaded(in, in->inflight, mix64(in->random));
        return;
    case IB_POLICY_ROUND_ROBIN: {
        out->reason = IB_REASON_ROUND_ROBIN;
        uint64_t start = atomic_fetch_add_explicit(&rt->rr, 1, memory_order_relaxed);
        for (uint32_t k = 0; k < in->nreplicas; k++) {
            uint32_t r = (uint32_t)((start + k) % in->nreplicas);
            if (in->usable[r]) {
                out->replica = (int)r;
                return;
            }
        }
        return;
    }
    case IB_POLICY_CONSISTENT_HASH: {
        out->reason = IB_REASON_HASH;
        uint64_t key = in->nblocks ? in->hashes[0] : (in->session_key ? in->session_key : in->random);
        uint64_t best = 0;
        for (uint32_t r = 0; r < in->nreplicas; r++) {
            uint64_t score = mix64(key ^ rt->replica_salt[r]);
            if (in->usable[r] && (out->replica < 0 || score > best))
                best = score, out->replica = (int)r;
        }
        return;
    }
    }
}

void ib_router_commit(ib_router_t *rt, const ib_route_input_t *in, int replica)
{
    if (replica < 0 || rt->policy != IB_POLICY_AFFINITY)
        return;
    ib_affinity_insert(&rt->table, in->hashes, in->nblocks, (uint32_t)replica);
    if (in->session_key != 0)
        ib_affinity_insert(&rt->table, &in->session_key, 1, (uint32_t)replica);
}
