/*
 * Replica choice: the policies, selectable per workload, and the decision they return.
 *
 *  affinity (default): the replica holding the longest cached prefix (affinity table),
 *     counted only when it covers at least min_match of the prompt, or when another
 *     replica holds a shorter part of it (a shared system prompt) and the part only the
 *     holder has covers min_match / 2 (a conversation's own history), takes the request, the least loaded of several such
 *     holders, unless its load is over (1 + eps) x the mean + this prompt's blocks: bounded
 *     load. Load is prefill work: the prompt blocks of a replica's requests still waiting
 *     for their first byte (what time to first token depends on; a count of requests in
 *     flight is dominated by decoding ones). Otherwise the cheapest replica wins, cost =
 *     load + the blocks of this prompt it does not hold, and among equally cheap ones the
 *     one whose cache took in fewest blocks (so new conversations spread their cache
 *     footprint evenly), then one at random. Reasons: affinity (the holder
 *     took it), load_spill (a holder was over the bound), no_match (no holder). A session
 *     id (X-Session-Id or the body's session_id / user) sticks to the replica it last
 *     went to, within the same bound.
 *  least-load: the fewest requests in flight.
 *  round-robin: in turn.
 *  consistent-hash: rendezvous hashing of the first prefix block (the shared system
 *     prompt), so a prefix always maps to the same replica while the set is unchanged.
 *
 * Each policy is one file, dataplane/route/policy_<name>.c, defining an ib_policy_ops_t;
 * the registry in dataplane/route/policy.c lists them and finds them by name. A router
 * holds its policy's ops table and calls it: one indirect call per pick.
 *
 * The router keeps no per-request state; it is shared by all workers (the affinity table
 * and the round-robin counter are lock-free).
 */
#ifndef IBRAIN_ROUTE_H
#define IBRAIN_ROUTE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include "ibrain/affinity.h"

#ifdef __cplusplus
extern "C" {
#endif

/** A routing policy: its index in the registry (dataplane/route/policy.c), 0 .. ib_policy_count() - 1. */
typedef uint32_t ib_policy_t;

/** The default policy, first in the registry. */
#define IB_POLICY_AFFINITY ((ib_policy_t)0)

/** Room for policies in per-policy arrays (metrics); the registry asserts at compile time
 * that it holds no more. A bound, not the count: that is ib_policy_count(). */
#define IB_POLICY_MAX 8

typedef enum ib_route_reason {
    IB_REASON_AFFINITY = 0, /* longest cached prefix */
    IB_REASON_SESSION,      /* session stickiness */
    IB_REASON_LOAD_SPILL,   /* the prefix holder was over the load bound */
    IB_REASON_NO_MATCH,     /* no replica holds any prefix block */
    IB_REASON_LEAST_LOAD,
    IB_REASON_ROUND_ROBIN,
    IB_REASON_HASH,
    IB_REASON__COUNT
} ib_route_reason_t;

typedef struct ib_route_input {
    const uint64_t *hashes;       /* the prompt's prefix block hash chain */
    size_t nblocks;
    uint64_t session_key;         /* hash of the session id, 0 when none */
    const int64_t *load;          /* per replica: queued prefill work, in blocks (affinity) */
    const int64_t *inflight;      /* per replica: requests in flight (least-load) */
    const uint8_t *usable;        /* per replica: 1 when it may be chosen */
    uint32_t nreplicas;
    uint64_t random;              /* a random 64-bit value, for power of two choices */
    ib_aff_walk_t *walk;          /* the caller's scratch: what pick saw, for commit (NULL: none) */
} ib_route_input_t;

typedef struct ib_route_decision {
    int replica;                  /* -1 when no replica is usable */
    ib_route_reason_t reason;
    uint32_t matched;             /* prefix blocks the chosen replica is believed to hold */
} ib_route_decision_t;

typedef struct ib_router ib_router_t;

/**
 * A routing policy's operations. One file per policy (dataplane/route/policy_<name>.c)
 * defines one, with designated initializers; the registry lists it. Every member is
 * required. The calls are made by every worker at once: a policy keeps its state in the
 * router (<rt>), shared, so it must only touch it lock-free.
 */
typedef struct ib_policy_ops {
    /** Its name, as --policy and snapshots spell it. */
    const char *name;
    /** Chooses a replica for <in> into <out>, which arrives with replica -1 and matched 0;
     * leaves replica -1 when no replica is usable. On the request path: no allocation. */
    void (*pick)(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out);
    /** Records that <in> went to <replica> (>= 0), for later picks; may do nothing. */
    void (*commit)(ib_router_t *rt, const ib_route_input_t *in, int replica);
} ib_policy_ops_t;

/** A router: one per workload, shared by every worker. */
struct ib_router {
    ib_policy_t policy;
    const ib_policy_ops_t *ops;   /* the registry's entry for policy */
    ib_affinity_t table;
    double spill_eps;             /* bounded load: spill when load > (1+eps) x mean + c */
    double spill_c;
    double min_match;             /* matched / prompt blocks below this counts as no match */
    _Atomic uint64_t rr;          /* round-robin: picks so far */
    uint64_t replica_salt[IB_AFF_MAX_REPLICAS]; /* rendezvous hashing */
};

/** The number of policies in the registry (at most IB_POLICY_MAX). */
uint32_t ib_policy_count(void);

/** The ops table of policy <p>, or NULL when <p> is not in the registry. */
const ib_policy_ops_t *ib_policy_ops(ib_policy_t p);

/** Finds the policy called <name> ("affinity", "least-load", ...): 0 and *<out>, or -1
 * when no registered policy has that name (*<out> untouched). */
int ib_policy_parse(const char *name, ib_policy_t *out);

/** The name of <p>, or "unknown". */
const char *ib_policy_name(ib_policy_t p);

/** Writes the registered names, separated by <sep>, into <buf> (NUL-terminated, cut to
 * <size>); for usage and error messages. Returns what snprintf would. */
int ib_policy_list(char *buf, size_t size, const char *sep);

/** The name of <r>, or "?". */
const char *ib_route_reason_name(ib_route_reason_t r);

/** Sets up <rt> to route by <policy> among <nreplicas> with an affinity table of
 * 2^<sets_log2> sets. 0, or -1 (an unknown policy, bad arguments or out of memory). */
int ib_router_init(ib_router_t *rt, ib_policy_t policy, uint32_t nreplicas, uint32_t sets_log2,
                   uint32_t capacity_blocks, uint64_t ttl_ms);
/** Frees what ib_router_init allocated; <rt> may then be initialized again. */
void ib_router_destroy(ib_router_t *rt);

/** The usable replica (usable[r] != 0) with the least load[r] among n, ties chosen
 * uniformly from <random>; -1 when none is usable. */
int ib_route_least(const int64_t *load, const uint8_t *usable, uint32_t n, uint64_t random);

/** Chooses a replica for <in> by the router's policy. Does not record the choice (see
 * ib_router_commit). <out>->replica is -1 when no replica is usable. */
void ib_router_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out);

/** Records that the request <in> went to <replica> (its prefix and session now live there,
 * for policies that keep such state). Nothing when <replica> < 0. */
void ib_router_commit(ib_router_t *rt, const ib_route_input_t *in, int replica);

#ifdef __cplusplus
}
#endif
#endif
