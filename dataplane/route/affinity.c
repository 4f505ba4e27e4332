/* The lock-free affinity table (include/ibrain/affinity.h). */
#include "ibrain/affinity.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define SLOT(tag, rep, stamp) (((uint64_t)(tag) << 40) | ((uint64_t)(rep) << 32) | (uint64_t)(stamp))
#define SLOT_TAG(w) ((uint32_t)((w) >> 40))
#define SLOT_REP(w) ((uint32_t)(((w) >> 32) & 0xff))
#define SLOT_STAMP(w) ((uint32_t)(w))
#define SLOT_KEY(w) ((uint32_t)((w) >> 32)) /* tag and replica: SLOT_KEY(SLOT(tag, rep, any)) */

_Static_assert(IB_AFF_MAX_REPLICAS <= 256, "a slot's replica field is 8 bits");
_Static_assert(IB_AFF_MAX_REPLICAS <= 64 * sizeof(((ib_affinity_t *)0)->used) / sizeof(uint64_t),
               "the used bitmap has a bit per replica");

static uint32_t tag_of(uint64_t h) { return (uint32_t)(h >> 40) | 1u; }

/* The set of IB_AFF_WAYS slots block hash <h> lives in. */
static _Atomic uint64_t *set_of(const ib_affinity_t *t, uint64_t h)
{
    return &t->slots[(size_t)(h & t->set_mask) * IB_AFF_WAYS];
}

/* Slot states: a word is empty (0) or an entry, whose tag has its lowest bit set (so an
 * entry is never 0) and whose replica is one of the table's. Checked where a slot is
 * written (insert) and wherever one is read. */
static void assert_slot_state(const ib_affinity_t *t, uint64_t w)
{
    (void)t, (void)w;
    assert(w == 0 || (SLOT_TAG(w) & 1u) == 1u);
    assert(w == 0 || SLOT_REP(w) < t->nreplicas);
}

int ib_affinity_init(ib_affinity_t *t, uint32_t sets_log2, uint32_t nreplicas, uint32_t capacity_blocks,
                     uint64_t ttl_ms)
{
    assert(t != NULL);
    memset(t, 0, sizeof(*t));
    if (sets_log2 > 28 || nreplicas == 0 || nreplicas > IB_AFF_MAX_REPLICAS || capacity_blocks == 0 ||
        capacity_blocks >= (1u << 31))
        return -1;
    size_t nslots = ((size_t)1 << sets_log2) * IB_AFF_WAYS;
    /* Megabytes of sets, each walk touching one per block anywhere in them: on huge pages
     * (where the system allows them), so that a walk does not also miss the TLB on every
     * block. 2 MiB-aligned when at least that large. */
    size_t bytes = nslots * sizeof(*t->slots), huge = (size_t)2 << 20;
    t->slots = bytes >= huge ? aligned_alloc(huge, (bytes + huge - 1) / huge * huge) : aligned_alloc(64, bytes);
    if (t->slots != NULL && bytes >= huge)
        madvise(t->slots, bytes, MADV_HUGEPAGE); /* advice: without THP, small pages */
    t->replicas = aligned_alloc(64, nreplicas * sizeof(*t->replicas));
    if (t->slots == NULL || t->replicas == NULL) {
        ib_affinity_destroy(t);
        return -1;
    }
    for (size_t i = 0; i < nslots; i++)
        atomic_init(&t->slots[i], 0);
    memset(t->replicas, 0, nreplicas * sizeof(*t->replicas));
    for (uint32_t r = 0; r < nreplicas; r++) {
        atomic_init(&t->replicas[r].counter, 0);
        atomic_init(&t->replicas[r].ttl_floor, 0);
        atomic_init(&t->replicas[r].precise, 0);
        t->replicas[r].capacity_blocks = capacity_blocks;
    }
    atomic_init(&t->used[0], 0);
    atomic_init(&t->used[1], 0);
    t->set_mask = (1u << sets_log2) - 1;
    t->nreplicas = nreplicas;
    t->ttl_ms = ttl_ms;
    assert((t->set_mask & (t->set_mask + 1)) == 0); /* sets: a power of two */
    assert(t->nreplicas > 0);
    assert(t->nreplicas <= IB_AFF_MAX_REPLICAS);
    return 0;
}

void ib_affinity_destroy(ib_affinity_t *t)
{
    free(t->slots);
    free(t->replicas);
    memset(t, 0, sizeof(*t));
}

/* What a slot's life depends on besides its stamp: its replica's clock, TTL floor, mode
 * and capacity, read once (relaxed) for a walk over many of the replica's slots. */
typedef struct rview {
    uint32_t now, floor, capacity;
    int precise, ttl; /* ttl: the table has a TTL, whose floor applies */
} rview_t;

static rview_t view_of(const ib_affinity_t *t, uint32_t rep)
{
    assert(rep < t->nreplicas);
    const ib_aff_replica_t *r = &t->replicas[rep];
    assert(r->capacity_blocks > 0);
    assert(r->capacity_blocks < (1u << 31));
    return (rview_t){
        .now = atomic_load_explicit((_Atomic uint32_t *)&r->counter, memory_order_relaxed),
        .floor = atomic_load_explicit((_Atomic uint32_t *)&r->ttl_floor, memory_order_relaxed),
        .capacity = r->capacity_blocks,
        .precise = atomic_load_explicit((_Atomic uint32_t *)&r->precise, memory_order_relaxed) != 0,
        .ttl = t->ttl_ms != 0,
    };
}

/* Remaining life in blocks of an entry stamped <stamp> of the replica seen as <v>: > 0
 * while believed. */
static inline __attribute__((always_inline)) int64_t life_at(const rview_t *v, uint32_t stamp)
{
    /* A fact (stamp 0) is what the engine said: believed until it says otherwise. A
     * replica routed on its engine's events believes nothing else; any other also
     * believes its model's entries. */
    if (stamp == IB_AFF_FACT)
        return (int64_t)1 << 40;
    /* Unsigned differences: counters wrap. Without a TTL there is no floor: a floor of 0
     * would read every stamp from 2^31 on as behind it. */
    if (v->ttl && (int32_t)(stamp - v->floor) <= 0)
        return -1; /* stamped at or before the TTL floor (stamps start at 1) */
    uint32_t age = v->now - stamp;
    if (age >= (1u << 31))
        return v->capacity; /* stamped by a concurrent insert ahead of our read */
    if (v->precise) /* only what was routed just now, whose BlockStored may still be on its way */
        return age < v->capacity / IB_AFF_PENDING_DIV ? (int64_t)(v->capacity / IB_AFF_PENDING_DIV - age) : -1;
    return (int64_t)v->capacity - (int64_t)age; /* never more than the capacity */
}

/* Remaining life of a slot word in blocks: > 0 while believed. */
static int64_t life(const ib_affinity_t *t, uint64_t w)
{
    assert_slot_state(t, w);
    if (w == 0)
        return -1;
    uint32_t rep = SLOT_REP(w);
    if (rep >= t->nreplicas)
        return -1;
    rview_t v = view_of(t, rep);
    return life_at(&v, SLOT_STAMP(w));
}

/* Whether the replica seen as <v> (<rep>) holds a believed entry for <h>: HELD_NOT, HELD,
 * or HELD_FRESH: without a TTL, one younger than capacity / IB_AFF_REFRESH_DIV blocks,
 * or a fact, which a refresh leaves as it is (see ib_affinity_insert). */
enum { HELD_NOT, HELD, HELD_FRESH };
static inline __attribute__((always_inline)) int held_state(const rview_t *v, uint32_t stamp)
{
    if (life_at(v, stamp) <= 0)
        return HELD_NOT;
    if (stamp == IB_AFF_FACT || (!v->ttl && v->now - stamp < v->capacity / IB_AFF_REFRESH_DIV))
        return HELD_FRESH;
    return HELD;
}
static int held(const ib_affinity_t *t, uint64_t h, uint32_t rep, const rview_t *v)
{
    uint32_t tag = tag_of(h);
    const _Atomic uint64_t *set = set_of(t, h);
    for (int k = 0; k < IB_AFF_WAYS; k++) {
        uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&set[k], memory_order_relaxed);
        assert_slot_state(t, w);
        if (w != 0 && SLOT_TAG(w) == tag && SLOT_REP(w) == rep)
            return held_state(v, SLOT_STAMP(w));
    }
    return HELD_NOT;
}

/* Writes (or refreshes) <replica>'s entry for <h> with <stamp>, replacing its own entry
 * or else the set's least believed word. */
static void put(ib_affinity_t *t, uint64_t h, uint32_t replica, uint32_t stamp)
{
    uint32_t tag = tag_of(h);
    _Atomic uint64_t *set = set_of(t, h);
    uint64_t want = SLOT(tag, replica, stamp);
    assert(want != 0); /* an entry is never the empty word */
    assert_slot_state(t, want);
    assert(SLOT_REP(want) == replica);
    assert(SLOT_STAMP(want) == stamp);
    int victim = -1;
    int64_t victim_life = INT64_MAX;
    uint64_t victim_word = 0;
    for (int k = 0; k < IB_AFF_WAYS; k++) {
        uint64_t w = atomic_load_explicit(&set[k], memory_order_relaxed);
        assert_slot_state(t, w);
        if (w != 0 && SLOT_TAG(w) == tag && SLOT_REP(w) == replica) {
            if (SLOT_STAMP(w) == IB_AFF_FACT && stamp != IB_AFF_FACT)
                return; /* the engine's word stands over the model's */
            victim = k, victim_word = w; /* refresh our own entry */
            break;
        }
        int64_t l = life(t, w);
        if (l < victim_life)
            victim = k, victim_life = l, victim_word = w;
    }
    /* Every word's life is below INT64_MAX (an empty one's is -1): a victim is found. */
    assert(victim >= 0);
    assert(victim < IB_AFF_WAYS);
    /* One attempt: a lost race means another writer just used this slot. */
    atomic_compare_exchange_strong_explicit(&set[victim], &victim_word, want, memory_order_relaxed,
                                            memory_order_relaxed);
}

/* Stamps h[0..n) as <replica>'s, the clock advanced by <adv>, skipping the blocks
 * <fresh> (a bitmap over the first <nfresh>) or held() says are fresh. */
static void stamp_blocks(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica, uint32_t adv,
                         const uint64_t *fresh, size_t nfresh, const rview_t *v);

void ib_affinity_insert(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica)
{
    assert(t->slots != NULL);
    assert(h != NULL || n == 0);
    if (n == 0 || replica >= t->nreplicas)
        return; /* a replica outside the table: write-back entries from an instance with more */
    /* The clock advances by the blocks the replica must newly cache: as in its LRU, blocks
     * it already holds are refreshed without evicting anything. At least by 1, so that
     * every insert's stamps are newer than any TTL checkpoint taken before it. */
    /* Held entries that are fresh are left as they are: a rewrite would lengthen their
     * life by less than 1/IB_AFF_REFRESH_DIV of the capacity, and a prefix every request
     * shares (a system prompt) is then not written, a locked CAS per block, by every
     * request on every worker. Not under a TTL, where the stamp also dates the entry for
     * the floor. The first FRESH_BITS blocks remember it here; later ones ask again. */
    enum { FRESH_BITS = 4096 };
    uint64_t fresh[FRESH_BITS / 64];
    uint32_t adv = 0;
    rview_t v = view_of(t, replica);
    for (size_t i = 0; i < n; i++) {
        int st = held(t, h[i], replica, &v);
        adv += st == HELD_NOT;
        if (i < FRESH_BITS) {
            if (i % 64 == 0)
                fresh[i / 64] = 0;
            fresh[i / 64] |= (uint64_t)(st == HELD_FRESH) << (i % 64);
        }
    }
    stamp_blocks(t, h, n, replica, adv, fresh, n < FRESH_BITS ? n : FRESH_BITS, &v);
}

void ib_affinity_insert_walked(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica,
                               const ib_aff_walk_t *walk)
{
    if (walk == NULL || walk->h != h || walk->n != n || n == 0 || replica >= t->nreplicas) {
        ib_affinity_insert(t, h, n, replica);
        return;
    }
    assert(walk->held[replica] <= n && walk->fresh[replica] <= walk->held[replica]);
    rview_t v = view_of(t, replica);
    stamp_blocks(t, h, n, replica, (uint32_t)(n - walk->held[replica]), NULL, walk->fresh[replica], &v);
}

static void stamp_blocks(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica, uint32_t adv,
                         const uint64_t *fresh, size_t nfresh, const rview_t *v)
{
    if (adv == 0)
        adv = 1;
    assert(adv <= n);
    uint32_t base = atomic_fetch_add_explicit(&t->replicas[replica].counter, adv, memory_order_relaxed);
    if (!(atomic_load_explicit(&t->used[replica >> 6], memory_order_relaxed) & (1ull << (replica & 63))))
        atomic_fetch_or_explicit(&t->used[replica >> 6], 1ull << (replica & 63), memory_order_relaxed);
    /* Before any of its slots is written, match will walk the replica. */
    assert(atomic_load_explicit(&t->used[replica >> 6], memory_order_relaxed) & (1ull << (replica & 63)));
    /* without a bitmap, the first nfresh blocks (a walk's leading fresh run) are skipped */
    for (size_t i = fresh == NULL ? nfresh : 0; i < n; i++) {
        /* head blocks newest (age 0), each later one a block older, at most adv - 1 older:
         * stamps stay in (base, base + adv] */
        uint32_t stamp = base + adv - (i < adv - 1 ? (uint32_t)i : adv - 1);
        assert(stamp - base - 1u < adv); /* in (base, base + adv], counters wrapping */
        if (stamp == IB_AFF_FACT) /* a wrapped counter's 0 is the facts' stamp: skip that block */
            continue;
        if (i < nfresh ? (fresh[i / 64] >> (i % 64)) & 1 : fresh != NULL && held(t, h[i], replica, v) == HELD_FRESH)
            continue;
        put(t, h[i], replica, stamp);
    }
}

/* ---- facts: a replica's engine events (include/ibrain/affinity.h) ---- */

void ib_affinity_fact_stored(ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t replica)
{
    if (replica >= t->nreplicas)
        return;
    if (!(atomic_load_explicit(&t->used[replica >> 6], memory_order_relaxed) & (1ull << (replica & 63))))
        atomic_fetch_or_explicit(&t->used[replica >> 6], 1ull << (replica & 63), memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        put(t, h[i], replica, IB_AFF_FACT);
}

void ib_affinity_fact_removed(ib_affinity_t *t, uint64_t h, uint32_t replica)
{
    uint32_t tag = tag_of(h);
    _Atomic uint64_t *set = set_of(t, h);
    for (int k = 0; k < IB_AFF_WAYS; k++) {
        uint64_t w = atomic_load_explicit(&set[k], memory_order_relaxed);
        assert_slot_state(t, w);
        if (w != 0 && SLOT_TAG(w) == tag && SLOT_REP(w) == replica && SLOT_STAMP(w) == IB_AFF_FACT) {
            /* one attempt: if a writer replaced it meanwhile, the fact is gone already */
            atomic_compare_exchange_strong_explicit(&set[k], &w, 0, memory_order_relaxed, memory_order_relaxed);
            return;
        }
    }
}

uint64_t ib_affinity_forget_facts(ib_affinity_t *t, uint32_t replica)
{
    uint64_t n = 0;
    size_t nslots = ((size_t)t->set_mask + 1) * IB_AFF_WAYS;
    for (size_t i = 0; i < nslots; i++) {
        uint64_t w = atomic_load_explicit(&t->slots[i], memory_order_relaxed);
        if (w != 0 && SLOT_REP(w) == replica && SLOT_STAMP(w) == IB_AFF_FACT)
            n += atomic_compare_exchange_strong_explicit(&t->slots[i], &w, 0, memory_order_relaxed,
                                                         memory_order_relaxed);
    }
    return n;
}

void ib_affinity_forget_model(ib_affinity_t *t, uint32_t replica)
{
    if (replica < t->nreplicas) /* every entry's age passes the capacity at once */
        atomic_fetch_add_explicit(&t->replicas[replica].counter, t->replicas[replica].capacity_blocks,
                                  memory_order_relaxed);
}

void ib_affinity_set_precise(ib_affinity_t *t, uint32_t replica, int precise)
{
    if (replica < t->nreplicas)
        atomic_store_explicit(&t->replicas[replica].precise, precise ? 1u : 0u, memory_order_relaxed);
}

int ib_affinity_is_precise(const ib_affinity_t *t, uint32_t replica)
{
    return replica < t->nreplicas &&
           atomic_load_explicit((_Atomic uint32_t *)&t->replicas[replica].precise, memory_order_relaxed) != 0;
}

int ib_affinity_each(const ib_affinity_t *t, uint32_t replica, int facts_only,
                     int (*fn)(void *ctx, uint32_t set, uint32_t tag), void *ctx)
{
    size_t nslots = ((size_t)t->set_mask + 1) * IB_AFF_WAYS;
    for (size_t i = 0; i < nslots; i++) {
        uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&t->slots[i], memory_order_relaxed);
        if (w != 0 && SLOT_REP(w) == replica && life(t, w) > 0 && (!facts_only || SLOT_STAMP(w) == IB_AFF_FACT)) {
            int rc = fn(ctx, (uint32_t)(i / IB_AFF_WAYS), SLOT_TAG(w));
            if (rc != 0)
                return rc;
        }
    }
    return 0;
}

/* The sets are scattered over the table (megabytes): a walk fetches each block's set
 * IB_AFF_PREFETCH blocks ahead, so that it does not wait on one miss at a time. */
enum { IB_AFF_PREFETCH = 8 };

/* The replica left alone in a walk (bitmap <alive>), or -1 when none or several are. */
static int lone_replica(const uint64_t *alive)
{
    int lone = -1;
    for (int q = 0; q < IB_REPLICA_MASK_WORDS; q++) {
        if (alive[q] == 0)
            continue;
        if (lone >= 0 || (alive[q] & (alive[q] - 1)) != 0)
            return -1;
        lone = q * 64 + __builtin_ctzll(alive[q]);
    }
    return lone;
}

/* The rest of a walk, from block <i>, once one replica <r> (seen as <v>) is left in it:
 * the usual case past a shared system prompt, and all of a returning conversation's
 * history. Its entry is found by one compare per way of the word's upper half (tag and
 * replica), and its counts stay in registers. Two racing inserts may leave two words
 * for one block and replica: as in the general loop, the best of them counts (the scan
 * ends at a fresh one). <in_run>: r's blocks so far were all held fresh (then
 * walk->fresh[r] == i). Leaves matched[r] and the walk as the general loop would. */
static void walk_alone(const ib_affinity_t *t, const uint64_t *h, size_t i, size_t n, uint32_t r, const rview_t *v,
                       uint32_t *matched, ib_aff_walk_t *walk, uint32_t in_run)
{
    assert(r < t->nreplicas);
    uint32_t m = matched[r], held_n = walk != NULL ? walk->held[r] : 0, fresh_n = walk != NULL ? walk->fresh[r] : 0;
    assert(walk == NULL || !in_run || fresh_n == i);
    for (; i < n; i++) {
        if (i + IB_AFF_PREFETCH < n)
            __builtin_prefetch(set_of(t, h[i + IB_AFF_PREFETCH]));
        uint32_t key = SLOT_KEY(SLOT(tag_of(h[i]), r, 0)); /* never an empty word's: a tag is odd */
        const _Atomic uint64_t *set = set_of(t, h[i]);
        int st = HELD_NOT;
        for (int k = 0; k < IB_AFF_WAYS; k++) {
            uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&set[k], memory_order_relaxed);
            assert_slot_state(t, w);
            if (SLOT_KEY(w) == key) {
                int sk = held_state(v, SLOT_STAMP(w));
                st = sk > st ? sk : st;
                if (st == HELD_FRESH) /* the best a word can say: the usual case ends here */
                    break;
            }
        }
        if (st != HELD_NOT)
            held_n++, m = (uint32_t)(i + 1);
        else if (i + 1 - m > IB_AFF_GAP)
            break; /* r leaves the walk: its last */
        in_run &= st == HELD_FRESH;
        fresh_n += in_run;
    }
    matched[r] = m;
    if (walk != NULL)
        walk->held[r] = held_n, walk->fresh[r] = fresh_n;
}

void ib_affinity_match(const ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t *matched)
{
    ib_affinity_match_walk(t, h, n, matched, NULL);
}

void ib_affinity_match_walk(const ib_affinity_t *t, const uint64_t *h, size_t n, uint32_t *matched,
                            ib_aff_walk_t *walk)
{
    assert(t->slots != NULL);
    assert(h != NULL || n == 0);
    assert(matched != NULL);
    uint32_t nr = t->nreplicas;
    /* alive: replicas still in the walk (bitmap over up to IB_AFF_MAX_REPLICAS). A replica's match
     * is the last block it holds; it leaves the walk after IB_AFF_GAP blocks in a row it is
     * not known to hold. A hash covers its whole prefix, so holding block i means the
     * prefix up to i was routed there: a gap is an entry lost to a full set (a block that
     * every replica holds fills its set's 8 ways), not a hole in the engine's cache. */
    uint64_t alive[IB_REPLICA_MASK_WORDS];
    for (int q = 0; q < IB_REPLICA_MASK_WORDS; q++)
        alive[q] = atomic_load_explicit((_Atomic uint64_t *)&t->used[q], memory_order_relaxed);
    for (uint32_t r = 0; r < nr; r++)
        matched[r] = 0;
    /* what the insert after it needs: per replica, the blocks held and the leading fresh run */
    uint64_t run[IB_REPLICA_MASK_WORDS]; /* replicas whose blocks so far were all held fresh */
    if (walk != NULL) {
        walk->h = h;
        walk->n = n;
        for (uint32_t r = 0; r < nr; r++)
            walk->held[r] = walk->fresh[r] = 0;
        for (int q = 0; q < IB_REPLICA_MASK_WORDS; q++)
            run[q] = alive[q]; /* a replica not yet inserted when the walk began holds nothing in it */
    }
    /* each replica's clock, read once when the walk first meets one of its entries */
    rview_t views[IB_AFF_MAX_REPLICAS];
    uint64_t viewed[IB_REPLICA_MASK_WORDS] = {0};
    for (size_t i = 0; i < n && i < IB_AFF_PREFETCH; i++)
        __builtin_prefetch(set_of(t, h[i]));
    for (size_t i = 0; i < n; i++) {
        int lone = lone_replica(alive);
        if (lone >= 0) {
            uint32_t r = (uint32_t)lone;
            if (!(viewed[r >> 6] & (1ull << (r & 63))))
                views[r] = view_of(t, r);
            walk_alone(t, h, i, n, r, &views[r], matched, walk,
                       walk != NULL ? (uint32_t)(run[r >> 6] >> (r & 63)) & 1u : 0u);
            break;
        }
        if (i + IB_AFF_PREFETCH < n)
            __builtin_prefetch(set_of(t, h[i + IB_AFF_PREFETCH]));
        uint32_t tag = tag_of(h[i]);
        const _Atomic uint64_t *set = set_of(t, h[i]);
        uint64_t here[IB_REPLICA_MASK_WORDS] = {0}, fresh[IB_REPLICA_MASK_WORDS] = {0};
        for (int k = 0; k < IB_AFF_WAYS; k++) {
            uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&set[k], memory_order_relaxed);
            assert_slot_state(t, w);
            if (w == 0 || SLOT_TAG(w) != tag)
                continue;
            uint32_t rep = SLOT_REP(w);
            if (rep >= nr)
                continue;
            if (!(viewed[rep >> 6] & (1ull << (rep & 63)))) {
                views[rep] = view_of(t, rep);
                viewed[rep >> 6] |= 1ull << (rep & 63);
            }
            int st = held_state(&views[rep], SLOT_STAMP(w));
            here[rep >> 6] |= (uint64_t)(st != HELD_NOT) << (rep & 63);
            fresh[rep >> 6] |= (uint64_t)(st == HELD_FRESH) << (rep & 63);
        }
        uint64_t any = 0;
        for (int q = 0; q < IB_REPLICA_MASK_WORDS; q++) {
            if (walk != NULL) {
                for (uint64_t m = here[q] & alive[q]; m != 0; m &= m - 1)
                    walk->held[q * 64 + (uint32_t)__builtin_ctzll(m)]++;
                run[q] &= fresh[q];
                for (uint64_t m = run[q]; m != 0; m &= m - 1)
                    walk->fresh[q * 64 + (uint32_t)__builtin_ctzll(m)] = (uint32_t)(i + 1);
            }
            for (uint64_t m = here[q] & alive[q]; m != 0; m &= m - 1)
                matched[q * 64 + (uint32_t)__builtin_ctzll(m)] = (uint32_t)(i + 1);
            for (uint64_t m = alive[q] & ~here[q]; m != 0; m &= m - 1) {
                uint32_t r = q * 64 + (uint32_t)__builtin_ctzll(m);
                if (i + 1 - matched[r] > IB_AFF_GAP)
                    alive[q] &= ~(1ull << (r & 63));
            }
            any |= alive[q];
        }
        if (any == 0)
            break;
    }
#ifndef NDEBUG
    /* The negative space: no match longer than the prompt, and none for a replica never
     * inserted (match walks only those in used[]). */
    for (uint32_t r = 0; r < nr; r++) {
        assert(matched[r] <= n);
        assert(matched[r] == 0 || (atomic_load_explicit((_Atomic uint64_t *)&t->used[r >> 6], memory_order_relaxed) &
                                   (1ull << (r & 63))));
    }
#endif
}

void ib_affinity_tick(ib_affinity_t *t, uint64_t now_ms)
{
    assert(t->replicas != NULL || t->nreplicas == 0);
    if (t->ttl_ms == 0)
        return;
    for (uint32_t r = 0; r < t->nreplicas; r++) {
        ib_aff_replica_t *rep = &t->replicas[r];
        /* Checkpoint the counter about every ttl/16 (at least every 10 ms). */
        uint64_t every = t->ttl_ms / 16 > 10 ? t->ttl_ms / 16 : 10;
        assert(rep->cp_next < IB_AFF_CHECKPOINTS);
        uint32_t last = (rep->cp_next + IB_AFF_CHECKPOINTS - 1) % IB_AFF_CHECKPOINTS;
        if (rep->cp_time_ms[last] == 0 || now_ms - rep->cp_time_ms[last] >= every) {
            rep->cp_time_ms[rep->cp_next] = now_ms;
            rep->cp_counter[rep->cp_next] = atomic_load_explicit(&rep->counter, memory_order_relaxed);
            rep->cp_next = (rep->cp_next + 1) % IB_AFF_CHECKPOINTS;
        }
        /* The floor: the counter at the newest checkpoint at least ttl old. Blocks stamped
         * before it were last routed more than ttl ago. */
        uint64_t best_time = 0;
        uint32_t floor = 0;
        int found = 0;
        for (uint32_t k = 0; k < IB_AFF_CHECKPOINTS; k++) {
            uint64_t ct = rep->cp_time_ms[k];
            if (ct != 0 && now_ms >= ct && now_ms - ct >= t->ttl_ms && ct >= best_time) {
                best_time = ct;
                floor = rep->cp_counter[k];
                found = 1;
            }
        }
        /* The floor is a value the counter had: never ahead of it (counters wrap, so as a
         * difference). */
        assert(!found || (int32_t)(atomic_load_explicit(&rep->counter, memory_order_relaxed) - floor) >= 0);
        if (found)
            atomic_store_explicit(&rep->ttl_floor, floor, memory_order_relaxed);
    }
}

uint64_t ib_affinity_count(const ib_affinity_t *t, uint32_t replica)
{
    uint64_t n = 0;
    size_t nslots = ((size_t)t->set_mask + 1) * IB_AFF_WAYS;
    for (size_t i = 0; i < nslots; i++) {
        uint64_t w = atomic_load_explicit((_Atomic uint64_t *)&t->slots[i], memory_order_relaxed);
        assert_slot_state(t, w);
        if (w != 0 && SLOT_REP(w) == replica && life(t, w) > 0)
            n++;
    }
    return n;
}
