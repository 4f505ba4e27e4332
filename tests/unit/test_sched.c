/* The mock engine's timing model: TTFT from uncached tokens, queueing, hit accounting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/mock_engine.h"

#define US 1000ull
#define MS 1000000ull

struct rec {
    uint32_t tokens;
    uint64_t first_ns, last_ns;
    int done;
};

static uint64_t g_now; /* the test's clock, read by the callback */

static void on_tok(ib_seq_t *seq, uint32_t index, int last)
{
    struct rec *r = seq->owner;
    if (index == 0)
        r->first_ns = g_now;
    r->tokens++;
    r->last_ns = g_now;
    r->done = last;
}

static ib_sched_config_t cfg(uint32_t slots)
{
    return (ib_sched_config_t){.max_seqs = slots, .block_tokens = 16, .cache_blocks = 1024, .overhead_ns = 1 * MS,
                               .prefill_ns_per_token = 10 * US, .itl_ns = 5 * MS, .itl_ns_per_seq = 0};
}

/* Runs the scheduler event by event until idle. */
static void drain(ib_sched_t *s)
{
    uint64_t t;
    while ((t = ib_sched_next_deadline(s)) != UINT64_MAX) {
        g_now = t;
        ib_sched_run(s, t);
    }
}

static void seq_init(ib_seq_t *q, struct rec *r, const uint64_t *h, size_t nb, uint32_t prompt, uint32_t max)
{
    memset(q, 0, sizeof(*q));
    memset(r, 0, sizeof(*r));
    q->hashes = h;
    q->nblocks = nb;
    q->prompt_tokens = prompt;
    q->max_tokens = max;
    q->on_token = on_tok;
    q->owner = r;
}

static void test_ttft_counts_uncached_tokens_only(void **state)
{
    (void)state;
    ib_sched_t s;
    ib_sched_config_t c = cfg(8);
    assert_int_equal(ib_sched_init(&s, &c), 0);
    uint64_t h[4] = {1, 2, 3, 4};
    ib_seq_t a, b;
    struct rec ra, rb;
    seq_init(&a, &ra, h, 4, 70, 3);
    g_now = 0;
    ib_sched_submit(&s, &a, 0);
    drain(&s);
    /* Cold: 1 ms + 70 x 10 us = 1.7 ms; then 2 more tokens 5 ms apart. */
    assert_int_equal(ra.first_ns, 1700 * US);
    assert_int_equal(ra.last_ns, 1700 * US + 10 * MS);
    assert_int_equal(ra.tokens, 3);
    assert_true(ra.done);
    assert_int_equal(a.cached_tokens, 0);
    /* Warm: 4 blocks x 16 = 64 tokens cached, 6 left: 1 ms + 60 us. */
    seq_init(&b, &rb, h, 4, 70, 1);
    g_now = 100 * MS;
    ib_sched_submit(&s, &b, g_now);
    drain(&s);
    assert_int_equal(b.cached_tokens, 64);
    assert_int_equal(rb.first_ns - 100 * MS, 1060 * US);
    assert_int_equal(s.query_tokens, 140);
    assert_int_equal(s.hit_tokens, 64);
    assert_int_equal(s.finished, 2);
    ib_sched_destroy(&s);
}

static void test_prefills_are_serialized(void **state)
{
    (void)state;
    ib_sched_t s;
    ib_sched_config_t c = cfg(8);
    assert_int_equal(ib_sched_init(&s, &c), 0);
    uint64_t h1[1] = {11}, h2[1] = {22};
    ib_seq_t a, b;
    struct rec ra, rb;
    seq_init(&a, &ra, h1, 1, 100, 1);
    seq_init(&b, &rb, h2, 1, 100, 1);
    g_now = 0;
    ib_sched_submit(&s, &a, 0);
    ib_sched_submit(&s, &b, 0);
    drain(&s);
    assert_int_equal(ra.first_ns, 2 * MS);
    assert_int_equal(rb.first_ns, 4 * MS); /* waited for a's prefill */
    ib_sched_destroy(&s);
}

/* Records every token's time. */
struct trace_rec {
    uint64_t t[8];
    uint32_t n;
};

static void on_tok_trace(ib_seq_t *seq, uint32_t index, int last)
{
    struct trace_rec *r = seq->owner;
    (void)index;
    (void)last;
    if (r->n < 8)
        r->t[r->n++] = g_now;
}

static void test_decode_steps_batch_sequences(void **state)
{
    (void)state;
    ib_sched_t s;
    ib_sched_config_t c = cfg(8);
    c.itl_ns_per_seq = 1 * MS;
    assert_int_equal(ib_sched_init(&s, &c), 0);
    uint64_t h1[1] = {11}, h2[1] = {22};
    ib_seq_t a, b;
    struct rec unused;
    struct trace_rec ta = {0}, tb = {0};
    seq_init(&a, &unused, h1, 1, 100, 3);
    seq_init(&b, &unused, h2, 1, 100, 3);
    a.on_token = b.on_token = on_tok_trace;
    a.owner = &ta;
    b.owner = &tb;
    g_now = 0;
    ib_sched_submit(&s, &a, 0);
    ib_sched_submit(&s, &b, 0);
    drain(&s);
    /* a: first token at 2 ms, alone in the batch: next step at 2 + 5 = 7 ms.
     * b: first token at 4 ms, joins that step; with two decoding, a step costs 5 + 1 ms. */
    assert_int_equal(ta.n, 3);
    assert_int_equal(tb.n, 3);
    assert_int_equal(ta.t[0], 2 * MS);
    assert_int_equal(tb.t[0], 4 * MS);
    assert_int_equal(ta.t[1], 7 * MS);
    assert_int_equal(tb.t[1], 7 * MS);
    assert_int_equal(ta.t[2], 13 * MS);
    assert_int_equal(tb.t[2], 13 * MS);
    assert_int_equal(s.steps, 2);
    ib_sched_destroy(&s);
}

static void test_slots_queue_overload(void **state)
{
    (void)state;
    ib_sched_t s;
    ib_sched_config_t c = cfg(1);
    assert_int_equal(ib_sched_init(&s, &c), 0);
    uint64_t h1[1] = {1}, h2[1] = {2};
    ib_seq_t a, b;
    struct rec ra, rb;
    seq_init(&a, &ra, h1, 1, 100, 3);
    seq_init(&b, &rb, h2, 1, 100, 1);
    g_now = 0;
    ib_sched_submit(&s, &a, 0);
    ib_sched_submit(&s, &b, 0);
    assert_int_equal(s.waiting.count, 1);
    drain(&s);
    /* b gets the slot only when a's last token is out at 2 + 5 + 5 ms. */
    assert_int_equal(ra.last_ns, 12 * MS);
    assert_int_equal(rb.first_ns, 14 * MS);
    assert_int_equal(s.waiting.count, 0);
    assert_int_equal(s.slots_used, 0);
    ib_sched_destroy(&s);
}

static void test_cancel_everywhere(void **state)
{
    (void)state;
    ib_sched_t s;
    ib_sched_config_t c = cfg(1);
    assert_int_equal(ib_sched_init(&s, &c), 0);
    uint64_t h[1] = {5};
    ib_seq_t a, b;
    struct rec ra, rb;
    seq_init(&a, &ra, h, 1, 10, 100);
    seq_init(&b, &rb, h, 1, 10, 1);
    g_now = 0;
    ib_sched_submit(&s, &a, 0);
    ib_sched_submit(&s, &b, 0);
    ib_sched_cancel(&s, &b, 0); /* waiting */
    assert_int_equal(s.waiting.count, 0);
    g_now = 10 * MS;
    ib_sched_run(&s, g_now); /* a is decoding */
    assert_int_equal(a.state, IB_SEQ_DECODING);
    ib_sched_cancel(&s, &a, g_now);
    ib_sched_cancel(&s, &a, g_now); /* idempotent */
    assert_int_equal(s.slots_used, 0);
    assert_int_equal(s.decoding.count, 0);
    assert_int_equal(ib_sched_next_deadline(&s), UINT64_MAX);
    assert_int_equal(s.cancelled, 2);
    assert_int_equal(rb.tokens, 0);
    ib_sched_destroy(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ttft_counts_uncached_tokens_only),
        cmocka_unit_test(test_prefills_are_serialized),
        cmocka_unit_test(test_decode_steps_batch_sequences),
        cmocka_unit_test(test_slots_queue_overload),
        cmocka_unit_test(test_cancel_everywhere),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
