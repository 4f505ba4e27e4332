/* The lock-free affinity table: insert/match, capacity model, TTL, eviction, and a
 * multi-threaded stress run (built under TSan by the suite's tsan phase). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/affinity.h"

static uint64_t H(uint64_t chain, uint64_t i)
{
    /* splitmix64 of (chain, i): well-spread 64-bit "block hashes" */
    uint64_t z = chain * 0x9e3779b97f4a7c15ull + i * 0xbf58476d1ce4e5b9ull + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void chain(uint64_t c, uint64_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = H(c, i);
}

static void test_insert_and_match(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 4, 1000, 0), 0);
    uint64_t a[6], b[6];
    chain(1, a, 6);
    chain(2, b, 6);
    uint32_t m[4];
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[0] + m[1] + m[2] + m[3], 0);
    ib_affinity_insert(&t, a, 4, 1); /* replica 1 holds the first 4 blocks of a */
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[1], 4);
    assert_int_equal(m[0] + m[2] + m[3], 0);
    /* Two holders: replica 3 holds the first 2. */
    ib_affinity_insert(&t, a, 2, 3);
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[1], 4);
    assert_int_equal(m[3], 2);
    /* A different prompt shares nothing. */
    ib_affinity_match(&t, b, 6, m);
    assert_int_equal(m[1] + m[3], 0);
    assert_int_equal(ib_affinity_count(&t, 1), 4);
    ib_affinity_destroy(&t);
}

/* Facts (engine events) are believed only while the replica is precise, the model's
 * entries only while it is not; a removal or a forget takes facts away; a fact outlives
 * the capacity model (the engine says when a block leaves). */
static void test_facts_and_precise_mode(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 4, 4, 0), 0);
    uint64_t a[6], b[6];
    chain(11, a, 6);
    chain(12, b, 6);
    uint32_t m[4];
    ib_affinity_insert(&t, b, 3, 2);            /* routed: the model believes b[0..3) on 2 */
    ib_affinity_fact_stored(&t, a, 6, 2);       /* the engine says it holds a[0..6) */
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[2], 6);                  /* not precise: facts and the model */
    ib_affinity_match(&t, b, 6, m);
    assert_int_equal(m[2], 3);
    ib_affinity_set_precise(&t, 2, 1);
    assert_true(ib_affinity_is_precise(&t, 2));
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[2], 6);                  /* six facts, beyond the model's capacity of 4 */
    ib_affinity_match(&t, b, 6, m);
    assert_int_equal(m[2], 0);                  /* the model's entries are not */
    assert_int_equal(ib_affinity_count(&t, 2), 6);
    /* routing goes on, unseen while precise, and never overwrites a fact */
    ib_affinity_insert(&t, b, 6, 2);
    ib_affinity_insert(&t, a, 6, 2);
    ib_affinity_match(&t, b, 6, m);
    assert_int_equal(m[2], 0);
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[2], 6);
    /* a removed tail block: the match ends before it */
    ib_affinity_fact_removed(&t, a[5], 2);
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[2], 5);
    ib_affinity_fact_removed(&t, a[5], 2);      /* twice: nothing more */
    ib_affinity_fact_removed(&t, a[0], 3);      /* another replica's: nothing */
    assert_int_equal(ib_affinity_count(&t, 2), 5);
    /* other replicas' facts are theirs */
    ib_affinity_fact_stored(&t, a, 2, 1);
    ib_affinity_set_precise(&t, 1, 1);
    assert_int_equal(ib_affinity_forget_facts(&t, 2), 5);
    ib_affinity_match(&t, a, 6, m);
    assert_int_equal(m[2], 0);
    assert_int_equal(m[1], 2);
    /* back to the model: its entries are believed again */
    ib_affinity_set_precise(&t, 2, 0);
    ib_affinity_match(&t, b, 6, m);
    assert_int_equal(m[2], 3);                  /* the capacity model: b's 6, then a's insert (all held:
                                                 * the clock moves by 1), leave 3 of b within 4 */
    ib_affinity_destroy(&t);
}

/* A precise replica also believes what was routed to it just now (its BlockStored may be
 * on its way), and nothing older; forget_model (an engine restart) takes even that away. */
static void test_precise_pending_window(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 2, 64, 0), 0); /* window: 64 / 8 = 8 blocks */
    uint64_t a[4], b[12];
    chain(21, a, 4);
    chain(22, b, 12);
    uint32_t m[2];
    ib_affinity_set_precise(&t, 1, 1);
    ib_affinity_insert(&t, a, 4, 1);
    ib_affinity_match(&t, a, 4, m);
    assert_int_equal(m[1], 4);      /* pending: believed */
    ib_affinity_insert(&t, b, 12, 1); /* 12 newer blocks: a's entries are out of the window */
    ib_affinity_match(&t, a, 4, m);
    assert_int_equal(m[1], 0);
    ib_affinity_match(&t, b, 12, m);
    assert_true(m[1] >= 7 && m[1] <= 8); /* b's head, the newest 8 (its tail is older) */
    ib_affinity_forget_model(&t, 1);
    ib_affinity_match(&t, b, 12, m);
    assert_int_equal(m[1], 0);
    ib_affinity_fact_stored(&t, a, 2, 1); /* facts stay */
    ib_affinity_forget_model(&t, 1);
    ib_affinity_match(&t, a, 4, m);
    assert_int_equal(m[1], 2);
    ib_affinity_destroy(&t);
}

static void test_capacity_model(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 2, 4, 0), 0); /* each replica holds 4 blocks */
    uint64_t p1[3], p2[3];
    chain(10, p1, 3);
    chain(20, p2, 3);
    uint32_t m[2];
    ib_affinity_insert(&t, p1, 3, 0);
    ib_affinity_insert(&t, p2, 3, 0);
    /* 6 blocks went to a 4-block LRU cache: p2 (newest) is believed whole; of p1 only its
     * head, refreshed last (tail-first), which an LRU of 4 still holds. */
    ib_affinity_match(&t, p2, 3, m);
    assert_int_equal(m[0], 3);
    ib_affinity_match(&t, p1, 3, m);
    assert_int_equal(m[0], 1);
    assert_true(ib_affinity_count(&t, 0) <= 4);
    /* One more new block pushes it out (the table does not believe more than the cache can
     * hold). */
    uint64_t p3[1];
    chain(30, p3, 1);
    ib_affinity_insert(&t, p3, 1, 0);
    ib_affinity_match(&t, p1, 3, m);
    assert_int_equal(m[0], 0);
    assert_true(ib_affinity_count(&t, 0) <= 4);
    /* Refreshing p1's head brings it back; replica 1 is unaffected by replica 0's load. */
    ib_affinity_insert(&t, p1, 1, 0);
    ib_affinity_match(&t, p1, 3, m);
    assert_int_equal(m[0], 1);
    ib_affinity_destroy(&t);
}

/* Prompts the replica already holds refresh its LRU without evicting: a conversation's
 * history sent again and again must not push other conversations out of the model (each
 * such insert ages the others by one block, not by the prompt's length). */
static void test_hits_do_not_age_others(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 1, 40, 0), 0);
    uint64_t a[8], b[8];
    chain(40, a, 8);
    chain(50, b, 8);
    uint32_t m[1];
    ib_affinity_insert(&t, a, 8, 0);
    ib_affinity_insert(&t, b, 8, 0);
    for (int i = 0; i < 20; i++) /* 160 blocks routed, all of them held already */
        ib_affinity_insert(&t, b, 8, 0);
    ib_affinity_match(&t, a, 8, m);
    assert_int_equal(m[0], 8);
    /* 40 new blocks do push it out */
    uint64_t c[40];
    chain(60, c, 40);
    ib_affinity_insert(&t, c, 40, 0);
    ib_affinity_match(&t, a, 8, m);
    assert_int_equal(m[0], 0);
    ib_affinity_destroy(&t);
}

/* The word of an entry for <h>, replica <rep>, or 0. */
static uint64_t word_of(const ib_affinity_t *t, uint64_t h, uint32_t rep)
{
    uint32_t tag = (uint32_t)(h >> 40) | 1u;
    for (int k = 0; k < IB_AFF_WAYS; k++) {
        uint64_t w = atomic_load(&t->slots[(size_t)(h & t->set_mask) * IB_AFF_WAYS + (size_t)k]);
        if (w != 0 && (uint32_t)(w >> 40) == tag && ((w >> 32) & 0xff) == rep)
            return w;
    }
    return 0;
}

/* Without a TTL, a refresh leaves an entry younger than capacity / IB_AFF_REFRESH_DIV as
 * it is (a shared prefix is not rewritten by every request) and rewrites an older one;
 * under a TTL every refresh rewrites (the stamp dates the entry for the TTL floor). */
static void test_fresh_entries_not_rewritten(void **state)
{
    (void)state;
    for (int ttl = 0; ttl <= 1; ttl++) {
        ib_affinity_t t;
        uint32_t cap = 64 * IB_AFF_REFRESH_DIV; /* entries younger than 64 blocks are fresh */
        assert_int_equal(ib_affinity_init(&t, 12, 1, cap, ttl ? 60000 : 0), 0);
        uint64_t a[4], b[40], c[40];
        chain(70, a, 4);
        chain(71, b, 40);
        chain(72, c, 40);
        ib_affinity_insert(&t, a, 4, 0);
        uint64_t before = word_of(&t, a[0], 0);
        assert_int_not_equal(before, 0);
        ib_affinity_insert(&t, b, 40, 0); /* a is 40 blocks old: fresh */
        ib_affinity_insert(&t, a, 4, 0);
        if (ttl)
            assert_int_not_equal(word_of(&t, a[0], 0), before);
        else
            assert_int_equal(word_of(&t, a[0], 0), before);
        uint32_t m[1];
        ib_affinity_match(&t, a, 4, m);
        assert_int_equal(m[0], 4);
        ib_affinity_insert(&t, c, 40, 0); /* now more than 64 blocks old: rewritten */
        before = word_of(&t, a[0], 0);
        ib_affinity_insert(&t, a, 4, 0);
        assert_int_not_equal(word_of(&t, a[0], 0), before);
        ib_affinity_match(&t, a, 4, m);
        assert_int_equal(m[0], 4);
        ib_affinity_destroy(&t);
    }
}

/* An insert from what the match before it recorded (a policy's pick, then its commit)
 * leaves the table as a plain insert does: conversations that grow turn by turn, routed
 * to one of four replicas, sometimes moved; the same matches and the same clocks. */
static void test_insert_walked_as_insert(void **state)
{
    (void)state;
    for (int ttl = 0; ttl <= 1; ttl++) {
        ib_affinity_t a, b;
        uint32_t cap = 40 * IB_AFF_REFRESH_DIV; /* entries younger than 40 blocks are fresh */
        assert_int_equal(ib_affinity_init(&a, 12, 4, cap, ttl ? 60000 : 0), 0);
        assert_int_equal(ib_affinity_init(&b, 12, 4, cap, ttl ? 60000 : 0), 0);
        static uint64_t h[16][96];
        for (int c = 0; c < 16; c++)
            chain(300 + (uint64_t)c, h[c], 96);
        ib_aff_walk_t walk;
        uint64_t x = 12345;
        int fresh_skipped = 0;
        for (int step = 0; step < 400; step++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int c = (int)(x >> 33) % 16;
            size_t n = 8 + (size_t)(step / 16 + c) % 88; /* the conversation's length so far */
            uint32_t rep = (uint32_t)((x >> 50) % 16 == 0 ? (x >> 20) % 4 : (uint64_t)c % 4); /* mostly its own */
            uint32_t ma[4], mb[4];
            ib_affinity_match(&a, h[c], n, ma);
            ib_affinity_match_walk(&b, h[c], n, mb, &walk);
            assert_memory_equal(ma, mb, sizeof(ma));
            assert_true(walk.h == h[c] && walk.n == n);
            assert_true(walk.fresh[rep] <= walk.held[rep] && walk.held[rep] <= n);
            fresh_skipped += walk.fresh[rep] > 0;
            ib_affinity_insert(&a, h[c], n, rep);
            ib_affinity_insert_walked(&b, h[c], n, rep, &walk);
            for (uint32_t r = 0; r < 4; r++)
                assert_int_equal(atomic_load(&a.replicas[r].counter), atomic_load(&b.replicas[r].counter));
        }
        for (int c = 0; c < 16; c++) {
            uint32_t ma[4], mb[4];
            ib_affinity_match(&a, h[c], 96, ma);
            ib_affinity_match(&b, h[c], 96, mb);
            assert_memory_equal(ma, mb, sizeof(ma));
        }
        if (!ttl)
            assert_true(fresh_skipped > 50); /* the walk's fresh runs were used */
        /* a walk of another prompt is not used: a plain insert */
        uint32_t m[4];
        ib_affinity_match_walk(&b, h[0], 20, m, &walk);
        uint32_t before = atomic_load(&b.replicas[3].counter);
        ib_affinity_insert_walked(&b, h[1], 20, 3, &walk);
        ib_affinity_match(&b, h[1], 20, m);
        assert_int_equal(m[3], 20);
        assert_true(atomic_load(&b.replicas[3].counter) != before);
        ib_affinity_destroy(&a);
        ib_affinity_destroy(&b);
    }
}

/* A walk over many blocks finds, per replica, what a walk of each block alone says of
 * it, put together by the rule: a match ends after IB_AFF_GAP blocks in a row not held,
 * and the leading fresh run ends at the first block not held fresh. Conversations share
 * a system prompt (several replicas alive at first, then one: the walk's lone-replica
 * loop), some turns skip blocks (gaps, short and too long), sets overflow (a small
 * table), entries expire (models forgotten), and replicas sit in both words of the
 * replica bitmaps. */
enum { WALK_NR = 70, WALK_USED = 6 };
static const uint32_t walk_reps[WALK_USED] = {0, 5, 63, 64, 65, 69};

static void walk_reference(ib_affinity_t *t, const uint64_t *h, size_t n, const int *used, uint32_t *matched,
                           uint32_t *held_n, uint32_t *fresh_n, int *expired_seen)
{
    memset(matched, 0, WALK_NR * sizeof(*matched));
    memset(held_n, 0, WALK_NR * sizeof(*held_n));
    memset(fresh_n, 0, WALK_NR * sizeof(*fresh_n));
    int alive[WALK_NR], run[WALK_NR];
    for (uint32_t r = 0; r < WALK_NR; r++)
        alive[r] = run[r] = used[r];
    for (size_t i = 0; i < n; i++) {
        uint32_t one[WALK_NR];
        ib_aff_walk_t w1;
        ib_affinity_match_walk(t, &h[i], 1, one, &w1); /* block i alone */
        for (uint32_t r = 0; r < WALK_NR; r++) {
            if (!alive[r])
                continue;
            if (one[r] == 1)
                held_n[r]++, matched[r] = (uint32_t)(i + 1);
            run[r] &= w1.fresh[r] == 1;
            if (run[r])
                fresh_n[r] = (uint32_t)(i + 1);
            if (one[r] == 0 && i + 1 - matched[r] > IB_AFF_GAP)
                alive[r] = 0;
            if (one[r] == 0) { /* a word for this block and replica that is no longer believed */
                const _Atomic uint64_t *set = &t->slots[(size_t)(h[i] & t->set_mask) * IB_AFF_WAYS];
                for (int k = 0; k < IB_AFF_WAYS; k++) {
                    uint64_t w = atomic_load(&set[k]);
                    *expired_seen += w != 0 && (w >> 40) == ((h[i] >> 40) | 1) && ((w >> 32) & 0xff) == r;
                }
            }
        }
    }
}

static void test_walk_matches_blockwise(void **state)
{
    (void)state;
    enum { NCONV = 24, LEN = 120 };
    for (int ttl = 0; ttl <= 1; ttl++) {
        ib_affinity_t t;
        /* 2^7 sets: 1,024 ways for up to 24 x 120 blocks, so sets overflow and entries are
         * lost */
        assert_int_equal(ib_affinity_init(&t, 7, WALK_NR, 4 * IB_AFF_REFRESH_DIV, ttl ? 60000 : 0), 0);
        static uint64_t h[NCONV][LEN];
        for (int c = 0; c < NCONV; c++) {
            chain(900 + (uint64_t)c, h[c], LEN);
            for (int i = 0; i < 10; i++) /* a 10-block system prompt shared by all */
                h[c][i] = H(899, (uint64_t)i);
        }
        int used[WALK_NR] = {0};
        uint64_t x = 777;
        int lone_seen = 0, multi_seen = 0, expired_seen = 0, fresh_seen = 0;
        for (int step = 0; step < 600; step++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            int c = (int)((x >> 33) % NCONV);
            size_t n = 4 + (size_t)((x >> 20) % (LEN - 4));
            uint32_t rep = walk_reps[(x >> 55) % 8 == 0 ? (x >> 12) % WALK_USED : (uint64_t)c % WALK_USED];
            uint32_t m[WALK_NR], m2[WALK_NR], rm[WALK_NR], rh[WALK_NR], rf[WALK_NR];
            ib_aff_walk_t walk;
            ib_affinity_match_walk(&t, h[c], n, m, &walk);
            ib_affinity_match(&t, h[c], n, m2); /* without a walk to record */
            walk_reference(&t, h[c], n, used, rm, rh, rf, &expired_seen);
            assert_memory_equal(m, rm, sizeof(m));
            assert_memory_equal(m2, rm, sizeof(m2));
            assert_memory_equal(walk.held, rh, sizeof(rh));
            assert_memory_equal(walk.fresh, rf, sizeof(rf));
            int holders = 0;
            for (int r = 0; r < WALK_NR; r++)
                holders += m[r] > 10, fresh_seen += walk.fresh[r] > 10;
            lone_seen += holders == 1;
            multi_seen += holders > 1;
            /* insert, now and then with a hole (a lost entry) or a tail past a long gap */
            int shape = (int)((x >> 40) % 6);
            if (shape == 0 && n > 30) {
                ib_affinity_insert(&t, h[c], 12, rep);
                ib_affinity_insert(&t, h[c] + 12 + 1 + (x >> 44) % (IB_AFF_GAP + 4), n - 25, rep);
            } else {
                ib_affinity_insert_walked(&t, h[c], n, rep, &walk);
            }
            used[rep] = 1;
            if (step % 50 == 49) /* a replica's model forgotten: its words stay, no longer believed */
                ib_affinity_forget_model(&t, walk_reps[(step / 50) % WALK_USED]);
        }
        /* what the walk's loops were checked on */
        assert_true(lone_seen > 50 && multi_seen > 5 && expired_seen > 50);
        if (!ttl)
            assert_true(fresh_seen > 10);
        ib_affinity_destroy(&t);
    }
}

/* Rewrites the set of block <h>: its word first aged by <age1> blocks, then aged by
 * <age2>, then the set's other words. */
static void set_two_words(ib_affinity_t *t, uint64_t h, uint32_t age1, uint32_t age2)
{
    _Atomic uint64_t *set = &t->slots[(size_t)(h & t->set_mask) * IB_AFF_WAYS];
    uint64_t words[IB_AFF_WAYS], word = 0;
    int nw = 0;
    for (int k = 0; k < IB_AFF_WAYS; k++) {
        uint64_t w = atomic_load(&set[k]);
        if (w != 0 && (w >> 40) == ((h >> 40) | 1))
            word = w;
        else if (w != 0)
            words[nw++] = w;
    }
    assert_true(word != 0 && nw < IB_AFF_WAYS - 1);
    assert_true((uint32_t)word - age1 != IB_AFF_FACT && (uint32_t)word - age2 != IB_AFF_FACT);
    atomic_store(&set[0], (word & ~0xffffffffull) | ((uint32_t)word - age1));
    atomic_store(&set[1], (word & ~0xffffffffull) | ((uint32_t)word - age2));
    for (int k = 2; k < IB_AFF_WAYS; k++)
        atomic_store(&set[k], k - 2 < nw ? words[k - 2] : 0);
}

/* Two words for one block and replica, which racing inserts can leave: the better one
 * counts, in the walk's lone-replica loop as in its general loop. */
static void test_walk_duplicate_words(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 2, 100 * IB_AFF_REFRESH_DIV, 0), 0); /* fresh: 100 blocks */
    uint64_t p[16];
    chain(41, p, 16);
    ib_affinity_insert(&t, p, 16, 0);
    set_two_words(&t, p[5], 30000, 0);  /* expired (past the capacity), then fresh */
    set_two_words(&t, p[9], 1000, 30000); /* held but not fresh, then expired */
    uint32_t m[2];
    ib_aff_walk_t walk;
    ib_affinity_match_walk(&t, p, 16, m, &walk); /* replica 0 alone: the lone loop throughout */
    assert_int_equal(m[0], 16);
    assert_int_equal(walk.held[0], 16);
    assert_int_equal(walk.fresh[0], 9);
    ib_affinity_destroy(&t);
}

/* Without a TTL a replica's clock may pass 2^31 and wrap: its entries stay believed
 * (a floor of 0 read every stamp from 2^31 on as expired). */
static void test_clock_past_2_31(void **state)
{
    (void)state;
    uint32_t starts[] = {0x7ffffffeu, 0x80000010u, 0xfffffffdu};
    for (size_t s = 0; s < 3; s++) {
        ib_affinity_t t;
        assert_int_equal(ib_affinity_init(&t, 10, 1, 64, 0), 0);
        atomic_store(&t.replicas[0].counter, starts[s]);
        uint64_t a[4];
        chain(80 + s, a, 4);
        ib_affinity_insert(&t, a, 4, 0);
        uint32_t m[1];
        ib_affinity_match(&t, a, 4, m);
        assert_int_equal(m[0], 4);
        ib_affinity_destroy(&t);
    }
}

/* A block the table lost (a full set) does not end the match: the walk skips up to
 * IB_AFF_GAP blocks a replica is not known to hold. */
static void test_match_skips_lost_entries(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 2, 1000, 0), 0);
    uint64_t p[24];
    chain(70, p, 24);
    uint32_t m[2];
    ib_affinity_insert(&t, p, 3, 0);      /* blocks 0-2 */
    ib_affinity_insert(&t, p + 4, 4, 0);  /* 4-7: block 3 missing */
    ib_affinity_match(&t, p, 24, m);
    assert_int_equal(m[0], 8);
    assert_int_equal(m[1], 0);
    ib_affinity_insert(&t, p + 8 + IB_AFF_GAP + 1, 2, 0); /* after a gap longer than allowed */
    ib_affinity_match(&t, p, 24, m);
    assert_int_equal(m[0], 8);
    ib_affinity_destroy(&t);
}

static void test_ttl(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 10, 2, 1000, 100), 0);
    uint64_t p[3], q[3];
    chain(1, p, 3);
    chain(2, q, 3);
    uint32_t m[2];
    ib_affinity_insert(&t, p, 3, 0);
    ib_affinity_tick(&t, 1000); /* checkpoint after p */
    ib_affinity_insert(&t, q, 3, 0);
    ib_affinity_tick(&t, 1050);
    ib_affinity_match(&t, p, 3, m);
    assert_int_equal(m[0], 3); /* 50 ms old: alive */
    ib_affinity_tick(&t, 1101);
    ib_affinity_match(&t, p, 3, m);
    assert_int_equal(m[0], 0); /* unused for over 100 ms: gone */
    ib_affinity_match(&t, q, 3, m);
    assert_int_equal(m[0], 3); /* q was routed after the 1000 ms checkpoint */
    ib_affinity_tick(&t, 1200);
    ib_affinity_match(&t, q, 3, m);
    assert_int_equal(m[0], 0);
    ib_affinity_destroy(&t);
}

static void test_set_eviction_keeps_newest(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 0, 1, 1000, 0), 0); /* one set of 8 slots */
    uint64_t h[12];
    for (int i = 0; i < 12; i++) {
        h[i] = H(100 + (uint64_t)i, 0);
        ib_affinity_insert(&t, &h[i], 1, 0);
    }
    uint32_t m[1];
    int alive = 0;
    for (int i = 0; i < 12; i++) {
        ib_affinity_match(&t, &h[i], 1, m);
        alive += (int)m[0];
        if (i >= 4)
            assert_int_equal(m[0], 1); /* the 8 newest survive */
    }
    assert_int_equal(alive, 8);
    ib_affinity_destroy(&t);
}

/* ---- concurrency ---- */

#define NREP 8
#define THREADS 4
#define ROUNDS 20000

struct stress_arg {
    ib_affinity_t *t;
    uint64_t seed;
    int bad;
};

/* Chain c only ever goes to replica c % NREP: any match elsewhere would be a torn or
 * invented read. */
static void *stress(void *p)
{
    struct stress_arg *a = p;
    uint64_t x = a->seed;
    uint64_t h[32];
    uint32_t m[NREP];
    for (int r = 0; r < ROUNDS; r++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        uint64_t c = (x >> 33) % 512;
        size_t n = 1 + (size_t)((x >> 20) % 32);
        chain(c, h, n);
        if (x & 1) {
            ib_affinity_insert(a->t, h, n, (uint32_t)(c % NREP));
        } else {
            ib_affinity_match(a->t, h, n, m);
            for (uint32_t k = 0; k < NREP; k++)
                if (k != c % NREP && m[k] != 0)
                    a->bad++;
        }
    }
    return NULL;
}

static void test_concurrent_insert_and_match(void **state)
{
    (void)state;
    ib_affinity_t t;
    assert_int_equal(ib_affinity_init(&t, 8, NREP, 2048, 0), 0); /* small: constant eviction */
    pthread_t th[THREADS];
    struct stress_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct stress_arg){.t = &t, .seed = (uint64_t)i * 7919 + 1};
        assert_int_equal(pthread_create(&th[i], NULL, stress, &args[i]), 0);
    }
    int bad = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        bad += args[i].bad;
    }
    assert_int_equal(bad, 0);
    /* After the storm, the table still answers consistently. */
    uint64_t h[4];
    chain(7, h, 4);
    ib_affinity_insert(&t, h, 4, 7 % NREP);
    uint32_t m[NREP];
    ib_affinity_match(&t, h, 4, m);
    assert_int_equal(m[7 % NREP], 4);
    ib_affinity_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_insert_and_match),     cmocka_unit_test(test_capacity_model),
        cmocka_unit_test(test_facts_and_precise_mode), cmocka_unit_test(test_precise_pending_window),
        cmocka_unit_test(test_hits_do_not_age_others), cmocka_unit_test(test_fresh_entries_not_rewritten), cmocka_unit_test(test_insert_walked_as_insert),
        cmocka_unit_test(test_walk_matches_blockwise), cmocka_unit_test(test_walk_duplicate_words), cmocka_unit_test(test_clock_past_2_31),
        cmocka_unit_test(test_match_skips_lost_entries),
        cmocka_unit_test(test_ttl),                  cmocka_unit_test(test_set_eviction_keeps_newest),
        cmocka_unit_test(test_concurrent_insert_and_match),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
