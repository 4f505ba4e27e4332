/* Routing policies on deterministic scenarios. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/route.h"

#define N 4

static void chain(uint64_t c, uint64_t *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h[i] = (c * 0x9e3779b97f4a7c15ull) ^ ((i + 1) * 0xbf58476d1ce4e5b9ull);
}

struct scenario {
    uint64_t h[8];
    int64_t load[N];
    uint8_t usable[N];
    ib_route_input_t in;
};

static void scenario_init(struct scenario *s, uint64_t c, uint64_t rnd)
{
    memset(s, 0, sizeof(*s));
    chain(c, s->h, 8);
    for (int r = 0; r < N; r++)
        s->usable[r] = 1;
    s->in = (ib_route_input_t){.hashes = s->h, .nblocks = 8, .load = s->load, .inflight = s->load, .usable = s->usable, .nreplicas = N,
                               .random = rnd};
}

/* The registered policy called <name>. */
static ib_policy_t policy(const char *name)
{
    ib_policy_t p = ib_policy_count();
    assert_int_equal(ib_policy_parse(name, &p), 0);
    return p;
}

static int route(ib_router_t *rt, struct scenario *s, ib_route_decision_t *d)
{
    ib_router_pick(rt, &s->in, d);
    ib_router_commit(rt, &s->in, d->replica);
    return d->replica;
}

/* New conversations on an idle fleet spread their cache footprint evenly: the cheapest
 * replicas tie, and the one whose cache took in least wins (a uniformly random pick put 8
 * of 48 conversations on one replica and 2 on another). Exactly even for equal prompts,
 * whatever the randomness; a replica that took a longer prompt gets the next ones later. */
static void test_new_conversations_spread_by_footprint(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    struct scenario s;
    ib_route_decision_t d;
    int count[N] = {0};
    for (uint64_t c = 1; c <= 12; c++) {
        scenario_init(&s, 100 + c, c * 7919);
        count[route(&rt, &s, &d)]++;
        assert_int_equal(d.reason, IB_REASON_NO_MATCH);
    }
    for (int r = 0; r < N; r++)
        assert_int_equal(count[r], 3);
    /* The replica that takes the 13th conversation is then 8 blocks ahead of the others:
     * the next three new ones go elsewhere. */
    scenario_init(&s, 500, 1);
    int first = route(&rt, &s, &d);
    for (uint64_t c = 1; c <= 3; c++) {
        scenario_init(&s, 600 + c, c);
        assert_int_not_equal(route(&rt, &s, &d), first);
    }
    ib_router_destroy(&rt);
}

static void test_same_prefix_same_replica(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    struct scenario s;
    ib_route_decision_t d;
    scenario_init(&s, 1, 12345);
    int first = route(&rt, &s, &d);
    assert_int_equal(d.reason, IB_REASON_NO_MATCH);
    for (int i = 0; i < 10; i++) {
        scenario_init(&s, 1, (uint64_t)i * 77 + 5); /* different randomness, same prompt */
        s.load[first] = 1;                          /* a little busier: still within the bound */
        assert_int_equal(route(&rt, &s, &d), first);
        assert_int_equal(d.reason, IB_REASON_AFFINITY);
        assert_int_equal(d.matched, 8);
    }
    /* A longer conversation with the same head still follows its prefix. */
    scenario_init(&s, 1, 999);
    assert_int_equal(route(&rt, &s, &d), first);
    ib_router_destroy(&rt);
}

static void test_overloaded_holder_spills(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    struct scenario s;
    ib_route_decision_t d;
    scenario_init(&s, 2, 1);
    int holder = route(&rt, &s, &d);
    scenario_init(&s, 2, 2);
    s.load[holder] = 40; /* mean 10, bound 1.5 x 10 + 4 = 19 */
    int r = route(&rt, &s, &d);
    assert_int_not_equal(r, holder);
    assert_int_equal(d.reason, IB_REASON_LOAD_SPILL);
    ib_router_destroy(&rt);
}

/* A match under min_match earns credit when a shorter part of it is held elsewhere too (a
 * shared system prompt) and the part only the holder has covers min_match / 2: a
 * conversation's history behind a shared system prompt. */
static void test_distinctive_history_counts(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    rt.min_match = 0.5;
    uint64_t h[12];
    chain(9, h, 12);
    int64_t load[N] = {0};
    uint8_t usable[N] = {1, 1, 1, 1};
    ib_route_input_t in = {.hashes = h, .load = load, .inflight = load, .usable = usable, .nreplicas = N, .random = 7};
    in.nblocks = 2; /* the system prompt, on replicas 1 and 2 */
    ib_router_commit(&rt, &in, 1);
    ib_router_commit(&rt, &in, 2);
    in.nblocks = 5; /* a conversation's first turns, on replica 1 */
    ib_router_commit(&rt, &in, 1);
    in.nblocks = 12; /* its next turn: 5 of 12 blocks held (42%), 3 of them only by replica 1 */
    ib_route_decision_t d;
    ib_router_pick(&rt, &in, &d);
    assert_int_equal(d.replica, 1);
    assert_int_equal(d.reason, IB_REASON_AFFINITY);
    assert_int_equal(d.matched, 5);
    ib_router_destroy(&rt);
}

/* A prefix only one replica holds, under min_match, is no affinity: it may be a system
 * prompt the first conversation brought there, and new conversations must spread. */
static void test_lone_short_prefix_does_not_herd(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    uint64_t h[6];
    chain(10, h, 6);
    int64_t load[N] = {0};
    uint8_t usable[N] = {1, 1, 1, 1};
    ib_route_input_t in = {.hashes = h, .load = load, .inflight = load, .usable = usable, .nreplicas = N, .random = 3};
    in.nblocks = 2;
    ib_router_commit(&rt, &in, 0);
    in.nblocks = 6; /* 2 of 6 blocks (33%) held by replica 0 alone */
    ib_route_decision_t d;
    ib_router_pick(&rt, &in, &d);
    assert_int_equal(d.reason, IB_REASON_NO_MATCH);
    ib_router_destroy(&rt);
}

static void test_two_holders_less_loaded_wins(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    struct scenario s;
    scenario_init(&s, 3, 1);
    ib_router_commit(&rt, &s.in, 1);
    ib_router_commit(&rt, &s.in, 2);
    ib_route_decision_t d;
    s.load[1] = 5;
    s.load[2] = 2;
    ib_router_pick(&rt, &s.in, &d);
    assert_int_equal(d.replica, 2);
    s.load[1] = 1;
    ib_router_pick(&rt, &s.in, &d);
    assert_int_equal(d.replica, 1);
    ib_router_destroy(&rt);
}

static void test_unusable_never_chosen(void **state)
{
    (void)state;
    for (ib_policy_t p = 0; p < ib_policy_count(); p++) {
        ib_router_t rt;
        assert_int_equal(ib_router_init(&rt, p, N, 10, 10000, 0), 0);
        struct scenario s;
        scenario_init(&s, 4, 1);
        ib_router_commit(&rt, &s.in, 3); /* the prefix lives on 3, which is now draining */
        for (int i = 0; i < 50; i++) {
            scenario_init(&s, 4 + (uint64_t)(i % 3), (uint64_t)i);
            s.usable[3] = 0;
            s.usable[0] = 0;
            ib_route_decision_t d;
            ib_router_pick(&rt, &s.in, &d);
            assert_true(d.replica == 1 || d.replica == 2);
        }
        scenario_init(&s, 4, 1);
        memset(s.usable, 0, sizeof(s.usable));
        ib_route_decision_t d;
        ib_router_pick(&rt, &s.in, &d);
        assert_int_equal(d.replica, -1);
        ib_router_destroy(&rt);
    }
}

static void test_session_sticks(void **state)
{
    (void)state;
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, IB_POLICY_AFFINITY, N, 10, 10000, 0), 0);
    struct scenario s;
    ib_route_decision_t d;
    scenario_init(&s, 5, 1);
    s.in.session_key = 0xabcdef;
    int first = route(&rt, &s, &d);
    for (int i = 0; i < 5; i++) {
        scenario_init(&s, 100 + (uint64_t)i, (uint64_t)i); /* different prompts, same session */
        s.in.session_key = 0xabcdef;
        assert_int_equal(route(&rt, &s, &d), first);
        assert_int_equal(d.reason, IB_REASON_SESSION);
    }
    ib_router_destroy(&rt);
}

static void test_baselines(void **state)
{
    (void)state;
    ib_router_t rr, ch, ll;
    assert_int_equal(ib_router_init(&rr, policy("round-robin"), N, 4, 100, 0), 0);
    assert_int_equal(ib_router_init(&ch, policy("consistent-hash"), N, 4, 100, 0), 0);
    assert_int_equal(ib_router_init(&ll, policy("least-load"), N, 4, 100, 0), 0);
    struct scenario s;
    ib_route_decision_t d;
    int seen[N] = {0};
    for (int i = 0; i < 8; i++) {
        scenario_init(&s, 9, (uint64_t)i);
        ib_router_pick(&rr, &s.in, &d);
        seen[d.replica]++;
    }
    for (int r = 0; r < N; r++)
        assert_int_equal(seen[r], 2);
    scenario_init(&s, 9, 1);
    ib_router_pick(&ch, &s.in, &d);
    int h = d.replica;
    for (int i = 0; i < 5; i++) {
        scenario_init(&s, 9, (uint64_t)i * 31);
        s.load[h] = 100; /* consistent hashing ignores load */
        ib_router_pick(&ch, &s.in, &d);
        assert_int_equal(d.replica, h);
    }
    scenario_init(&s, 9, 1);
    s.load[0] = 3, s.load[1] = 1, s.load[2] = 2, s.load[3] = 5;
    ib_router_pick(&ll, &s.in, &d);
    assert_int_equal(d.replica, 1);
    ib_policy_t p;
    assert_int_equal(ib_policy_parse("consistent-hash", &p), 0);
    assert_string_equal(ib_policy_name(p), "consistent-hash");
    assert_int_equal(ib_policy_parse("random", &p), -1);
    ib_router_destroy(&rr);
    ib_router_destroy(&ch);
    ib_router_destroy(&ll);
}

/* Every registered policy is found by its name, and only by it. */
/* A lost replica's share spreads evenly over the others, for every policy: with replica 1
 * of 0..3 unusable and equal loads, 0, 2 and 3 each take a third (a tie-break that walks
 * the slots from a rotating start gave the lost one's turn to its neighbour: 2:1:1). */
static void test_lost_replica_spreads_evenly(void **state)
{
    (void)state;
    for (ib_policy_t p = 0; p < ib_policy_count(); p++) {
        const char *name = ib_policy_name(p);
        if (strcmp(name, "consistent-hash") == 0)
            continue; /* a prefix maps to one replica by design; its spread is over prefixes */
        ib_router_t rt;
        assert_int_equal(ib_router_init(&rt, p, N, 10, 1u << 20, 0), 0);
        uint32_t count[N] = {0};
        const uint32_t total = 30000;
        for (uint32_t i = 0; i < total; i++) {
            struct scenario s;
            scenario_init(&s, 1000 + i, 0x1234567ull * (i + 1)); /* a new prompt each time */
            s.usable[1] = 0;
            ib_route_decision_t d = {.replica = -1};
            ib_router_pick(&rt, &s.in, &d);
            assert_true(d.replica >= 0 && d.replica != 1);
            count[d.replica]++;
        }
        for (int r = 0; r < N; r++) {
            if (r == 1)
                continue;
            if (count[r] < total / 3 - total / 30 || count[r] > total / 3 + total / 30)
                fail_msg("policy %s: replica %d took %u of %u (%u %u %u %u)", name, r, count[r], total, count[0],
                         count[1], count[2], count[3]);
        }
        ib_router_destroy(&rt);
    }
}

static void test_registry_finds_each_by_name(void **state)
{
    (void)state;
    assert_true(ib_policy_count() > 0);
    assert_true(ib_policy_count() <= IB_POLICY_MAX);
    for (ib_policy_t p = 0; p < ib_policy_count(); p++) {
        const ib_policy_ops_t *ops = ib_policy_ops(p);
        assert_non_null(ops);
        ib_policy_t found = ib_policy_count();
        assert_int_equal(ib_policy_parse(ops->name, &found), 0);
        assert_int_equal(found, p);
        assert_string_equal(ib_policy_name(p), ops->name);
        for (ib_policy_t q = 0; q < p; q++)
            assert_true(strcmp(ib_policy_ops(q)->name, ops->name) != 0); /* names are unique */
        ib_router_t rt;
        assert_int_equal(ib_router_init(&rt, p, N, 4, 100, 0), 0);
        assert_ptr_equal(rt.ops, ops);
        ib_router_destroy(&rt);
    }
    /* The names the flags, snapshots and docs use; the default comes first. */
    const char *known[] = {"affinity", "least-load", "round-robin", "consistent-hash"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        assert_string_equal(ib_policy_name(policy(known[i])), known[i]);
    assert_string_equal(ib_policy_name(IB_POLICY_AFFINITY), "affinity");
    char list[256];
    int n = ib_policy_list(list, sizeof(list), ", ");
    assert_int_equal(n, (int)strlen(list));
    assert_non_null(strstr(list, "affinity, least-load"));
    char cut[5];
    assert_int_equal(ib_policy_list(cut, sizeof(cut), ", "), n);
    assert_string_equal(cut, "affi");
}

/* A name no policy has is refused, and so is a policy outside the registry. */
static void test_registry_refuses_unknown(void **state)
{
    (void)state;
    const char *unknown[] = {"random", "", "Affinity", "affinity ", "least_load", "precise"};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        ib_policy_t p = 12345;
        assert_int_equal(ib_policy_parse(unknown[i], &p), -1);
        assert_int_equal(p, 12345); /* untouched */
    }
    assert_null(ib_policy_ops(ib_policy_count()));
    assert_string_equal(ib_policy_name(ib_policy_count()), "unknown");
    ib_router_t rt;
    assert_int_equal(ib_router_init(&rt, ib_policy_count(), N, 4, 100, 0), -1);
    ib_router_destroy(&rt);
}

/* No ops table lacks a member the router calls. */
static void test_registry_ops_complete(void **state)
{
    (void)state;
    for (ib_policy_t p = 0; p < ib_policy_count(); p++) {
        const ib_policy_ops_t *ops = ib_policy_ops(p);
        assert_non_null(ops->name);
        assert_true(ops->name[0] != '\0');
        assert_non_null(ops->pick);
        assert_non_null(ops->commit);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_prefix_same_replica), cmocka_unit_test(test_overloaded_holder_spills),
        cmocka_unit_test(test_new_conversations_spread_by_footprint),
        cmocka_unit_test(test_distinctive_history_counts), cmocka_unit_test(test_lone_short_prefix_does_not_herd),
        cmocka_unit_test(test_two_holders_less_loaded_wins), cmocka_unit_test(test_unusable_never_chosen),
        cmocka_unit_test(test_session_sticks),           cmocka_unit_test(test_baselines),
        cmocka_unit_test(test_registry_finds_each_by_name), cmocka_unit_test(test_registry_refuses_unknown),
        cmocka_unit_test(test_registry_ops_complete),   cmocka_unit_test(test_lost_replica_spreads_evenly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
