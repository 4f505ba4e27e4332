/*
 * What the policy files (policy_<name>.c) share: not part of the public API
 * (include/ibrain/route.h).
 */
#ifndef IBRAIN_ROUTE_POLICY_IMPL_H
#define IBRAIN_ROUTE_POLICY_IMPL_H

#include <assert.h>
#include <stdint.h>

#include "ibrain/route.h"

/** splitmix64's finalizer: a well-mixed 64-bit value from any 64-bit value. */
static inline uint64_t ib_route_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/**
 * A uniform choice among equal candidates, seen one at a time (reservoir sampling of one):
 * the k-th tie replaces the choice with probability 1/k. Walking the replicas from a
 * rotating start instead gives an unusable replica's turns to its next neighbour.
 */
typedef struct ib_tiebreak {
    uint64_t state;
    uint32_t ties;
} ib_tiebreak_t;

static inline ib_tiebreak_t ib_tiebreak_start(uint64_t random) { return (ib_tiebreak_t){random, 0}; }

/** A new best: the ties start again from it. */
static inline void ib_tiebreak_reset(ib_tiebreak_t *t) { t->ties = 1; }

/** Another candidate equal to the best: 1 when it becomes the choice. */
static inline int ib_tiebreak_take(ib_tiebreak_t *t)
{
    t->state += 0x9e3779b97f4a7c15ull;
    return ib_route_mix64(t->state) % ++t->ties == 0;
}

/** The commit of a policy that keeps no state about past requests. */
void ib_policy_commit_nothing(ib_router_t *rt, const ib_route_input_t *in, int replica);

#endif
