/* The mock engine's prefix cache model: LRU order, capacity, TTL, prefix matching. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/prefix_cache.h"

#define MS 1000000ull

static void test_match_is_longest_present_prefix(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    assert_int_equal(ib_pcache_init(&c, 16, 0), 0);
    uint64_t a[] = {1, 2, 3, 4};
    assert_int_equal(ib_pcache_match(&c, a, 4, 0), 0);
    ib_pcache_insert(&c, a, 3, 0, NULL);
    assert_int_equal(c.used, 3);
    assert_int_equal(ib_pcache_match(&c, a, 4, 1), 3);
    /* A gap stops the match: a prefix cache cannot use block 3 without block 2. */
    uint64_t gap[] = {1, 99, 3};
    assert_int_equal(ib_pcache_match(&c, gap, 3, 2), 1);
    uint64_t other[] = {7, 1, 2};
    assert_int_equal(ib_pcache_match(&c, other, 3, 3), 0);
    ib_pcache_destroy(&c);
}

static void test_capacity_and_lru_eviction(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    assert_int_equal(ib_pcache_init(&c, 4, 0), 0);
    uint64_t p1[] = {10, 11}, p2[] = {20, 21}, p3[] = {30, 31};
    ib_pcache_insert(&c, p1, 2, 1, NULL);
    ib_pcache_insert(&c, p2, 2, 2, NULL);
    assert_int_equal(c.used, 4);
    /* Touch p1 so that p2 becomes least recently used. */
    assert_int_equal(ib_pcache_match(&c, p1, 2, 3), 2);
    ib_pcache_insert(&c, p3, 2, 4, NULL);
    assert_int_equal(c.used, 4);
    assert_int_equal(c.evicted, 2);
    assert_true(ib_pcache_contains(&c, 10, 5));
    assert_true(ib_pcache_contains(&c, 11, 5));
    assert_false(ib_pcache_contains(&c, 20, 5));
    assert_false(ib_pcache_contains(&c, 21, 5));
    assert_true(ib_pcache_contains(&c, 30, 5));
    ib_pcache_destroy(&c);
}

static void test_tail_evicted_before_head(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    assert_int_equal(ib_pcache_init(&c, 4, 0), 0);
    uint64_t p[] = {1, 2, 3, 4};
    ib_pcache_insert(&c, p, 4, 1, NULL);
    uint64_t q[] = {50};
    ib_pcache_insert(&c, q, 1, 2, NULL);
    /* The prompt's last block goes first, so its prefix stays usable. */
    assert_false(ib_pcache_contains(&c, 4, 3));
    assert_int_equal(ib_pcache_match(&c, p, 4, 3), 3);
    ib_pcache_destroy(&c);
}

static void test_prompt_longer_than_cache_keeps_head(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    assert_int_equal(ib_pcache_init(&c, 3, 0), 0);
    uint64_t p[] = {1, 2, 3, 4, 5};
    ib_pcache_insert(&c, p, 5, 1, NULL);
    assert_int_equal(c.used, 3);
    assert_int_equal(ib_pcache_match(&c, p, 5, 2), 3);
    ib_pcache_destroy(&c);
}

static void test_ttl_expiry(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    assert_int_equal(ib_pcache_init(&c, 8, 100 * MS), 0);
    uint64_t p[] = {1, 2, 3};
    ib_pcache_insert(&c, p, 3, 0, NULL);
    assert_int_equal(ib_pcache_match(&c, p, 3, 50 * MS), 3); /* refreshes all three at 50 ms */
    assert_int_equal(ib_pcache_match(&c, p, 3, 140 * MS), 3);
    /* 101 ms after the last use: gone. */
    assert_int_equal(ib_pcache_match(&c, p, 3, 241 * MS + 1), 0);
    assert_int_equal(c.expired, 1);
    assert_false(ib_pcache_contains(&c, 2, 241 * MS + 1));
    ib_pcache_destroy(&c);
}

static void test_many_inserts_keep_table_consistent(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    assert_int_equal(ib_pcache_init(&c, 257, 0), 0);
    /* Keys that collide in the low bits exercise backward-shift deletion. */
    for (uint64_t i = 0; i < 20000; i++) {
        uint64_t h = (i << 40) | (i % 7);
        ib_pcache_insert(&c, &h, 1, i, NULL);
        assert_true(ib_pcache_contains(&c, h, i));
    }
    assert_int_equal(c.used, 257);
    /* Exactly the last 257 keys remain. */
    for (uint64_t i = 20000 - 257; i < 20000; i++) {
        uint64_t h = (i << 40) | (i % 7);
        assert_true(ib_pcache_contains(&c, h, 20000));
    }
    uint64_t old = (100ull << 40) | (100 % 7);
    assert_false(ib_pcache_contains(&c, old, 20000));
    assert_int_equal(c.inserted, 20000);
    assert_int_equal(c.evicted, 20000 - 257);
    ib_pcache_destroy(&c);
}

/* What a listener hears: new blocks tail-first after the evictions that made room, the
 * end of each insert, removals with the hash still readable, and a clear. */
struct heard {
    ib_prefix_cache_t *c;
    char log[256];
};

static void heard_stored(void *ctx, void *tag, size_t pos, uint32_t entry)
{
    struct heard *h = ctx;
    size_t n = strlen(h->log);
    snprintf(h->log + n, sizeof(h->log) - n, "S%zu:%llu%s ", pos, (unsigned long long)h->c->entries[entry].hash,
             tag != NULL ? "t" : "");
}

static void heard_inserted(void *ctx, void *tag, const uint64_t *hs, size_t n)
{
    struct heard *h = ctx;
    (void)tag;
    (void)hs;
    size_t l = strlen(h->log);
    snprintf(h->log + l, sizeof(h->log) - l, "I%zu ", n);
}

static void heard_removed(void *ctx, uint32_t entry)
{
    struct heard *h = ctx;
    size_t n = strlen(h->log);
    snprintf(h->log + n, sizeof(h->log) - n, "R%llu ", (unsigned long long)h->c->entries[entry].hash);
}

static void heard_cleared(void *ctx)
{
    struct heard *h = ctx;
    strcat(h->log, "C ");
}

static void test_listener_hears_every_change(void **state)
{
    (void)state;
    ib_prefix_cache_t c;
    struct heard h = {&c, ""};
    int tag;
    assert_int_equal(ib_pcache_init(&c, 3, 0), 0);
    c.listener = (ib_pcache_listener_t){heard_stored, heard_inserted, heard_removed, heard_cleared, &h};
    const uint64_t p[] = {1, 2}, q[] = {1, 5, 6};
    ib_pcache_insert(&c, p, 2, 1, &tag);
    assert_string_equal(h.log, "S1:2t S0:1t I2 ");
    h.log[0] = '\0';
    /* 1 is held (refreshed, not stored); 6 fits, 5 evicts the LRU block, 2 */
    ib_pcache_insert(&c, q, 3, 2, NULL);
    assert_string_equal(h.log, "S2:6 R2 S1:5 I3 ");
    assert_int_not_equal(ib_pcache_entry_of(&c, 5), IB_PCACHE_NONE);
    assert_int_equal(c.entries[ib_pcache_entry_of(&c, 5)].hash, 5);
    assert_int_equal(ib_pcache_entry_of(&c, 2), IB_PCACHE_NONE);
    h.log[0] = '\0';
    ib_pcache_clear(&c);
    assert_string_equal(h.log, "C ");
    assert_int_equal(c.used, 0);
    assert_false(ib_pcache_contains(&c, 1, 3));
    /* usable again after a clear, to capacity */
    h.log[0] = '\0';
    ib_pcache_insert(&c, q, 3, 4, NULL);
    assert_string_equal(h.log, "S2:6 S1:5 S0:1 I3 ");
    assert_int_equal(c.used, 3);
    ib_pcache_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_is_longest_present_prefix),
        cmocka_unit_test(test_capacity_and_lru_eviction),
        cmocka_unit_test(test_tail_evicted_before_head),
        cmocka_unit_test(test_prompt_longer_than_cache_keeps_head),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_many_inserts_keep_table_consistent),
        cmocka_unit_test(test_listener_hears_every_change),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
