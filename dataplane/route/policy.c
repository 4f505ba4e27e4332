/* Routing: the policy registry and the router (include/ibrain/route.h). */
#include "policy_impl.h"

#include <stdio.h>
#include <string.h>

/* ---- the registry ---- */

/* The policies, one ops table each (dataplane/route/policy_<name>.c). Adding one: its
 * file, its declaration here and its line in policies[]. The first is the default
 * (IB_POLICY_AFFINITY); ib_policy_t is an index into policies[]. */
extern const ib_policy_ops_t ib_policy_affinity, ib_policy_least_load, ib_policy_round_robin,
    ib_policy_consistent_hash;

static const ib_policy_ops_t *const policies[] = {
    &ib_policy_affinity,
    &ib_policy_least_load,
    &ib_policy_round_robin,
    &ib_policy_consistent_hash,
};

#define NPOLICIES ((uint32_t)(sizeof(policies) / sizeof(policies[0])))
_Static_assert(sizeof(policies) / sizeof(policies[0]) <= IB_POLICY_MAX, "raise IB_POLICY_MAX");
_Static_assert(sizeof(policies) / sizeof(policies[0]) > IB_POLICY_AFFINITY, "the default is registered");

uint32_t ib_policy_count(void) { return NPOLICIES; }

const ib_policy_ops_t *ib_policy_ops(ib_policy_t p) { return p < NPOLICIES ? policies[p] : NULL; }

int ib_policy_parse(const char *name, ib_policy_t *out)
{
    assert(name != NULL);
    assert(out != NULL);
    for (uint32_t i = 0; i < NPOLICIES; i++)
        if (strcmp(name, policies[i]->name) == 0) {
            *out = i;
            return 0;
        }
    return -1;
}

const char *ib_policy_name(ib_policy_t p) { return p < NPOLICIES ? policies[p]->name : "unknown"; }

int ib_policy_list(char *buf, size_t size, const char *sep)
{
    assert(buf != NULL || size == 0);
    size_t len = 0;
    for (uint32_t i = 0; i < NPOLICIES; i++) {
        int k = snprintf(len < size ? buf + len : NULL, len < size ? size - len : 0, "%s%s", i ? sep : "",
                         policies[i]->name);
        if (k < 0)
            return k;
        len += (size_t)k;
    }
    return (int)len;
}

static const char *const reason_names[IB_REASON__COUNT] = {"affinity",   "session",     "load_spill", "no_match",
                                                          "least_load", "round_robin", "hash"};

const char *ib_route_reason_name(ib_route_reason_t r) { return (unsigned)r < IB_REASON__COUNT ? reason_names[r] : "?"; }

void ib_policy_commit_nothing(ib_router_t *rt, const ib_route_input_t *in, int replica)
{
    (void)rt, (void)in, (void)replica;
}

/* ---- the router ---- */

int ib_router_init(ib_router_t *rt, ib_policy_t policy, uint32_t nreplicas, uint32_t sets_log2,
                   uint32_t capacity_blocks, uint64_t ttl_ms)
{
    assert(rt != NULL);
    memset(rt, 0, sizeof(*rt));
    if (policy >= NPOLICIES)
        return -1;
    rt->policy = policy;
    rt->ops = policies[policy];
    rt->spill_eps = 0.5;
    rt->spill_c = 4;
    rt->min_match = 0.5;
    atomic_init(&rt->rr, 0);
    for (uint32_t r = 0; r < IB_AFF_MAX_REPLICAS; r++)
        rt->replica_salt[r] = ib_route_mix64(0x5eed0000ull + r);
    return ib_affinity_init(&rt->table, sets_log2, nreplicas, capacity_blocks, ttl_ms);
}

void ib_router_destroy(ib_router_t *rt) { ib_affinity_destroy(&rt->table); }

void ib_router_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out)
{
    assert(rt->ops == policies[rt->policy]);
    assert(in->nreplicas <= IB_AFF_MAX_REPLICAS);
    out->replica = -1;
    out->matched = 0;
    rt->ops->pick(rt, in, out);
    /* The negative space: never a replica the input did not offer, or one not usable. */
    assert(out->replica >= -1);
    assert(out->replica < (int)in->nreplicas);
    assert(out->replica < 0 || in->usable[out->replica]);
}

void ib_router_commit(ib_router_t *rt, const ib_route_input_t *in, int replica)
{
    assert(rt->ops == policies[rt->policy]);
    assert(replica < (int)in->nreplicas);
    if (replica < 0)
        return;
    rt->ops->commit(rt, in, replica);
}
