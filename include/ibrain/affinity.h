/*
 * The affinity table: which replicas are believed to hold which prompt prefix blocks in
 * their KV cache. Bounded, lock-free, shared by every worker.
 *
 * A set-associative table of single 64-bit atomic slots:
 *     [ tag: 24 bits | replica: 8 bits | stamp: 32 bits ]
 * The set is picked by the block hash's low bits, the tag is its high bits (lowest tag bit
 * forced to 1, so 0 means an empty slot). A prefix held by several replicas has one slot
 * per replica.
 *
 * Each replica has an insertion counter, advanced by the blocks a routed prompt adds to
 * the replica's cache (those it is not believed to hold already: an LRU refreshes a hit
 * without evicting anything; at least 1, so that stamps also order inserts in time). The prompt's blocks get stamps from the new counter value
 * down (head blocks newest, as an engine refreshes its LRU tail-first). An entry is
 * believed only while
 *     counter_r - stamp < capacity_r          (the capacity model: r's LRU cache holds its
 *                                              most recent capacity_r new blocks)
 * and stamp > ttl_floor_r (blocks unused for longer than the cache TTL are gone).
 * ttl_floor_r is advanced by ib_affinity_tick() from checkpoints of the counter over time.
 *
 * Writers race benignly: a slot is replaced with one CAS, and a lost race loses one
 * insertion; every read returns a whole word some writer wrote. Without a TTL, an entry
 * younger than capacity / IB_AFF_REFRESH_DIV blocks is not rewritten by a refresh (a
 * shared prefix is not written by every request).
 *
 * Invariants, asserted in debug and sanitizer builds (affinity.c): a slot is empty (0) or
 * an entry with its tag's lowest bit set and a replica below nreplicas, where it is
 * written and wherever it is read; an insert's stamps lie in (counter before, counter
 * after]; a replica is in used[] before any of its entries is written, and no match is
 * longer than the prompt or credited to a replica not in used[]; a TTL floor is never
 * ahead of its counter; a believed entry's remaining life is at most the capacity.
 */
#ifndef IBRAIN_AFFINITY_H
#define IBRAIN_AFFINITY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "ibrain/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

#define IB_AFF_WAYS 8
#define IB_AFF_MAX_REPLICAS IB_MAX_REPLICAS
#define IB_AFF_CHECKPOINTS 64
#define IB_AFF_GAP 8 /* blocks a match may skip: entries lost to full sets */
#define IB_AFF_FACT 0u /* the stamp of a fact: an entry its engine's events put there */
#define IB_AFF_PENDING_DIV 8u /* a precise replica believes routing entries younger than capacity / this */
#define IB_AFF_REFRESH_DIV 256u /* no TTL: an entry younger than capacity / this is not rewritten by a refresh */
IB_STATIC_ASSERT(IB_AFF_MAX_REPLICAS <= 256, "a slot word holds the replica in 8 bits");

typedef struct ib_aff_replica {
    _Alignas(64) _Atomic uint32_t counter;   /* blocks inserted so far (wraps) */
    _Atomic uint32_t ttl_floor;              /* stamps older than this have expired */
    _Atomic uint32_t precise;                /* 1: routed on its engine's events (facts) */
    uint32_t capacity_blocks;
    /* counter checkpoints, written only by ib_affinity_tick()'s caller */
    uint64_t cp_time_ms[IB_AFF_CHECKPOINTS];
    uint32_t cp_counter[IB_AFF_CHECKPOINTS];
    uint32_t cp_next;
} ib_aff_replica_t;

typedef struct ib_affinity {
    _Atomic uint64_t *slots;                 /* nsets x IB_AFF_WAYS; 0 or SLOT(tag | 1, replica, stamp) */
    uint32_t set_mask;
    uint32_t nreplicas;
    uint64_t ttl_ms;                         /* 0: no TTL */
    _Atomic uint64_t used[IB_REPLICA_MASK_WORDS]; /* replicas ever inserted (bitmap): match walks only them */
    ib_aff_replica_t *replicas;
} ib_affinity_t;

/** 2^<sets_log2> sets of 8 slots; <capacity_blocks> per replica. 0, or -1 (OOM / bad args). */
int ib_affinity_init(ib_affinity_t *t, uint32_t sets_log2, uint32_t nreplicas, uint32_t capacity_blocks,
                     uint64_t ttl_ms);
void ib_affinity_destroy(ib_affinity_t *t);

/**
 * What a match saw, kept for the insert that follows it (a policy's pick, then its
 * commit), so that the insert does not walk the prompt's sets again. Valid for the same
 * h and n only; the table may have moved since, which costs at most a refresh skipped or
 * made in vain.
 */
typedef struct ib_aff_walk {
    const uint64_t *h;                   /* the prompt it walked (NULL: nothing recorded) */
    size_t n;
    uint32_t held[IB_AFF_MAX_REPLICAS];  /* per replica: blocks it holds, of those the walk met */
    uint32_t fresh[IB_AFF_MAX_REPLICAS]; /* per replica: its leading blocks held fresh (see insert) */
} ib_aff_walk_t;

/** Records that <replica> now holds the prefix h[0..n). Lock-free. */
void ib_affinity_insert(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica);
/** The same, from what ib_affinity_match recorded of h[0..n) in <walk> (NULL, or another
 * prompt's: as ib_affinity_insert). Blocks past those the walk met count as not held. */
void ib_affinity_insert_walked(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica,
                               const ib_aff_walk_t *walk);

/**
 * For every replica r: matched[r] = how many leading blocks of h[0..n) the table believes
 * r holds (0..n): the last block r holds, walking from the first and skipping up to
 * IB_AFF_GAP blocks in a row that r is not known to hold (entries lost to full sets).
 * Lock-free; O((matched + IB_AFF_GAP) x ways).
 */
void ib_affinity_match(const ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t *matched);
/** The same, recording in <walk> what ib_affinity_insert_walked needs (<walk> NULL: none). */
void ib_affinity_match_walk(const ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t *matched,
                            ib_aff_walk_t *walk);

/** Advances the TTL floors at <now_ms>; call periodically from one thread only. */
void ib_affinity_tick(ib_affinity_t *t, uint64_t now_ms);

/** Entries the table currently believes, per replica (a scan; for metrics and tests). */
uint64_t ib_affinity_count(const ib_affinity_t *t, uint32_t replica);

/*
 * Facts: what a replica's engine says it holds (its KV-cache events), written by one
 * events thread. A fact is an entry with stamp IB_AFF_FACT, believed until the engine says
 * the block left (no capacity or TTL model), and never overwritten by a routing insert. A
 * precise replica believes its facts, and of its model's entries only the pending ones:
 * routed within the last capacity / IB_AFF_PENDING_DIV blocks, whose BlockStored may not
 * have arrived yet (a conversation's next turn, or a second prompt with the same system
 * prompt, then follows the first instead of starting a copy elsewhere). Any other replica
 * believes its facts (none, or those learnt since its events' history was lost) and its
 * model's entries. Inserts from routing go on either way (ib_affinity_insert), so the model
 * is warm when a replica falls back to it, and the request path checks nothing new.
 */

/** <replica>'s engine now holds the blocks keyed h[0..n). Lock-free. */
void ib_affinity_fact_stored(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica);
/** <replica>'s engine no longer holds the block keyed <h>. */
void ib_affinity_fact_removed(ib_affinity_t *t, uint64_t h, uint32_t replica);
/** Drops every fact about <replica> (a scan); returns how many. */
uint64_t ib_affinity_forget_facts(ib_affinity_t *t, uint32_t replica);
/** Ages every model entry of <replica> past belief (its engine restarted: nothing it was
 * sent is cached any more). */
void ib_affinity_forget_model(ib_affinity_t *t, uint32_t replica);
/** Routes <replica> on its facts (1) or on the model (0). */
void ib_affinity_set_precise(ib_affinity_t *t, uint32_t replica, int precise);
int ib_affinity_is_precise(const ib_affinity_t *t, uint32_t replica);
/** Calls fn(set, tag) for each entry <replica> believes, or each of its facts (a scan; for
 * the debug page). */
int ib_affinity_each(const ib_affinity_t *t, uint32_t replica, int facts_only,
                     int (*fn)(void *ctx, uint32_t set, uint32_t tag), void *ctx);

#ifdef __cplusplus
}
#endif
#endif
