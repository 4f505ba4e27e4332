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
 *     load + the blocks of this prompt it does not hold. Reasons: affinity (the holder
 *     took it), load_spill (a holder was over the bound), no_match (no holder). A session
 *     id (X-Session-Id or the body's session_id / user) sticks to the replica it last
 *     went to, within the same bound.
 *  least-load: the fewest requests in flight.
 *  round-robin: in turn.
 *  consistent-hash: rendezvous hashing of the first prefix block (the shared system
 *     prompt), so a prefix always maps to the same replica while the set is unchanged.
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

typedef enum ib_policy {
    IB_POLICY_AFFINITY = 0,
    IB_POLICY_LEAST_LOAD,
    IB_POLICY_ROUND_ROBIN,
    IB_POLICY_CONSISTENT_HASH,
} ib_policy_t;

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

typedef struct ib_router {
    ib_policy_t policy;
    ib_affinity_t table;
    double spill_eps;             /* bounded load: spill when load > (1+eps) x mean + c */
    double spill_c;
    double min_match;             /* matched / prompt blocks below this counts as no match */
    _Atomic uint64_t rr;
    uint64_t replica_salt[IB_AFF_MAX_REPLICAS]; /* rendezvous hashing */
} ib_router_t;

typedef struct ib_route_input {
    const uint64_t *hashes;       /* the prompt's prefix block hash chain */
    size_t nblocks;
    uint64_t session_key;         /* hash of the session id, 0 when none */
    const int64_t *load;          /* per replica: queued prefill work, in blocks (affinity) */
    const int64_t *inflight;      /* per replica: requests in flight (least-load) */
    const uint8_t *usable;        /* per replica: 1 when it may be chosen */
    uint32_t nreplicas;
    uint64_t random;              /* a random 64-bit value, for power of two choices */
} ib_route_input_t;

typedef struct ib_route_decision {
    int replica;                  /* -1 when no replica is usable */
    ib_route_reason_t reason;
    uint32_t matched;             /* prefix blocks the chosen replica is believed to hold */
} ib_route_decision_t;

/** Parses "affinity" | "least-load" | "round-robin" | "consistent-hash"; -1 when unknown. */
int ib_policy_parse(const char *name, ib_policy_t *out);
const char *ib_policy_name(ib_policy_t p);
const char *ib_route_reason_name(ib_route_reason_t r);

/** 0, or -1 (bad arguments or out of memory). */
int ib_router_init(ib_router_t *rt, ib_policy_t policy, uint32_t nreplicas, uint32_t sets_log2,
                   uint32_t capacity_blocks, uint64_t ttl_ms);
void ib_router_destroy(ib_router_t *rt);

/** Chooses a replica for <in>. Does not record the choice (see ib_router_commit). */
void ib_router_pick(ib_router_t *rt, const ib_route_input_t *in, ib_route_decision_t *out);

/** Records that the request <in> went to <replica> (its prefix and session now live there). */
void ib_router_commit(ib_router_t *rt, const ib_route_input_t *in, int replica);

#ifdef __cplusplus
}
#endif
#endif
