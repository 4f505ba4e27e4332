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

/** The commit of a policy that keeps no state about past requests. */
void ib_policy_commit_nothing(ib_router_t *rt, const ib_route_input_t *in, int replica);

#endif
