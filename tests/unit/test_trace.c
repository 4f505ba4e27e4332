/* ib-load's trace parsing and trace-to-prompt mapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "ibrain/loadgen.h"
#include "ibrain/ondemand_c.h"

static void prompt_of(ib_load_workload_t *w, ib_load_item_t *it, ib_buf_t *out)
{
    ib_buf_t sys = {0};
    ib_buf_reset(out);
    assert_int_equal(ib_load_item_prompt(w, it, &sys, out), 0);
    ib_buf_free(&sys);
}

static size_t common_prefix(const ib_buf_t *a, const ib_buf_t *b)
{
    size_t n = a->len < b->len ? a->len : b->len, i = 0;
    while (i < n && a->ptr[i] == b->ptr[i])
        i++;
    return i;
}

static void test_shared_hash_prefix_gives_shared_text_prefix(void **state)
{
    (void)state;
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    w.source = IB_SRC_MOONCAKE;
    uint64_t k1[] = {0, 1, 2, 3}, k2[] = {0, 1, 2, 9}, k3[] = {0, 7, 2, 3};
    ib_load_item_t a = {.input_tokens = 2048, .keys = k1, .nkeys = 4};
    ib_load_item_t b = {.input_tokens = 2048, .keys = k2, .nkeys = 4};
    ib_load_item_t c = {.input_tokens = 2048, .keys = k3, .nkeys = 4};
    ib_buf_t pa = {0}, pb = {0}, pc = {0}, pa2 = {0};
    prompt_of(&w, &a, &pa);
    prompt_of(&w, &b, &pb);
    prompt_of(&w, &c, &pc);
    prompt_of(&w, &a, &pa2);
    size_t block = 512 * 4;
    assert_int_equal(pa.len, 2048 * 4);
    /* Deterministic: the same keys give the same bytes. */
    assert_int_equal(pa2.len, pa.len);
    assert_memory_equal(pa.ptr, pa2.ptr, pa.len);
    /* Three shared blocks, then different text. */
    assert_true(common_prefix(&pa, &pb) >= 3 * block);
    assert_true(common_prefix(&pa, &pb) < 3 * block + 64);
    /* One shared block only: block 1 differs even though block 2 and 3 are equal. */
    assert_true(common_prefix(&pa, &pc) >= block && common_prefix(&pa, &pc) < block + 64);
    ib_buf_free(&pa);
    ib_buf_free(&pb);
    ib_buf_free(&pc);
    ib_buf_free(&pa2);
}

static void test_last_block_cut_to_input_length(void **state)
{
    (void)state;
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    w.source = IB_SRC_MOONCAKE;
    uint64_t k[] = {5, 6, 7};
    ib_load_item_t it = {.input_tokens = 1100, .keys = k, .nkeys = 3};
    ib_buf_t p = {0}, full = {0};
    prompt_of(&w, &it, &p);
    assert_int_equal(p.len, 1100 * 4);
    /* The cut block is a prefix of the whole block. */
    assert_int_equal(ib_load_block_text(&w, 7, 512, &full), 0);
    assert_memory_equal(p.ptr + 1024 * 4, full.ptr, 76 * 4);
    ib_buf_free(&p);
    ib_buf_free(&full);
}

static void test_text_shape(void **state)
{
    (void)state;
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    ib_buf_t t = {0};
    assert_int_equal(ib_load_block_text(&w, 42, 100, &t), 0);
    assert_int_equal(t.len, 400);
    for (size_t i = 0; i < t.len; i += 4) {
        assert_int_equal(t.ptr[i], ' ');
        for (int k = 1; k < 4; k++)
            assert_true(t.ptr[i + k] >= 'a' && t.ptr[i + k] <= 'z');
    }
    ib_buf_t u = {0};
    assert_int_equal(ib_load_block_text(&w, 43, 100, &u), 0);
    assert_true(memcmp(t.ptr, u.ptr, 400) != 0);
    ib_buf_free(&t);
    ib_buf_free(&u);
}

static void test_parse_mooncake_line(void **state)
{
    (void)state;
    ib_json_parser_t *p = ib_json_parser_new(1 << 20);
    ib_load_item_t it;
    char err[128];
    const char *ok = "{\"timestamp\": 3000, \"input_length\": 2290, \"output_length\": 316, \"hash_ids\": [0, 42, 43]}";
    assert_int_equal(ib_load_parse_mooncake_line(p, ok, strlen(ok), &it, err, sizeof(err)), 0);
    assert_int_equal(it.at_us, 3000000);
    assert_int_equal(it.input_tokens, 2290);
    assert_int_equal(it.output_tokens, 316);
    assert_int_equal(it.nkeys, 3);
    assert_int_equal(it.keys[1], 42);
    free(it.keys);
    const char *bad[] = {
        "{\"timestamp\": -1, \"input_length\": 1, \"output_length\": 1, \"hash_ids\": []}",
        "{\"timestamp\": 0, \"input_length\": 0, \"output_length\": 1, \"hash_ids\": []}",
        "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1, \"x\"]}",
        "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1}",
        "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [-3]}",
        "{\"timestamp\": 0, \"input_length\": 5",
        "not json",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ib_load_parse_mooncake_line(p, bad[i], strlen(bad[i]), &it, err, sizeof(err)), -1);
        assert_true(err[0] != '\0');
    }
    ib_json_parser_free(p);
}

static void test_parse_azure_line(void **state)
{
    (void)state;
    ib_load_item_t a, b, m;
    char err[128];
    const char *l1 = "2023-11-16 18:15:46.6805900,374,44", *l2 = "2023-11-16 18:15:47.1805900,10,0";
    const char *mid = "2023-11-17 00:00:00.5000000,1,1";
    assert_int_equal(ib_load_parse_azure_line(l1, strlen(l1), &a, err, sizeof(err)), 0);
    assert_int_equal(ib_load_parse_azure_line(l2, strlen(l2), &b, err, sizeof(err)), 0);
    assert_int_equal(ib_load_parse_azure_line(mid, strlen(mid), &m, err, sizeof(err)), 0);
    assert_int_equal(a.input_tokens, 374);
    assert_int_equal(a.output_tokens, 44);
    assert_int_equal(b.at_us - a.at_us, 500000);
    assert_true(m.at_us > b.at_us); /* crossing midnight stays ordered */
    const char *bad[] = {"TIMESTAMP,ContextTokens,GeneratedTokens", "2023-11-16 18:15:46.68,0,4",
                         "2023-11-16 25:15:46.68,5,4", "2023-11-16 18:15:46.68,5", "2023-11-16 18:15:46.68,5,4,x", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ib_load_parse_azure_line(bad[i], strlen(bad[i]), &a, err, sizeof(err)), -1);
}

static void test_read_trace_spreads_buckets(void **state)
{
    (void)state;
    char path[] = "/tmp/ib-test-trace-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < 3; i++)
        fprintf(f, "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 2, \"hash_ids\": [0, %d]}\n", i + 1);
    fprintf(f, "{\"timestamp\": 3000, \"input_length\": 600, \"output_length\": 2, \"hash_ids\": [0, 9]}\n");
    fclose(f);
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    assert_int_equal(ib_load_read_trace(&w, path, 0, 3000), 0);
    assert_int_equal(w.source, IB_SRC_MOONCAKE);
    assert_int_equal(w.nitems, 4);
    assert_int_equal(w.items[0].at_us, 0);
    assert_int_equal(w.items[1].at_us, 1000000);
    assert_int_equal(w.items[2].at_us, 2000000);
    assert_int_equal(w.items[3].at_us, 3000000);
    ib_load_workload_free(&w);
    ib_load_workload_init(&w);
    assert_int_equal(ib_load_read_trace(&w, path, 2, 0), 0);
    assert_int_equal(w.nitems, 2);
    ib_load_workload_free(&w);
    unlink(path);
}

static void test_shared_prefix_groups(void **state)
{
    (void)state;
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    w.system_tokens = 64;
    w.question_tokens = 8;
    assert_int_equal(ib_load_gen_shared_prefix(&w, 3, 4, 16, 0), 0);
    assert_int_equal(w.nitems, 12);
    int seen[3][4] = {{0}};
    for (size_t i = 0; i < w.nitems; i++)
        seen[w.items[i].group][w.items[i].index]++;
    for (int g = 0; g < 3; g++)
        for (int p = 0; p < 4; p++)
            assert_int_equal(seen[g][p], 1);
    /* Same group: same system prompt, different questions. */
    ib_buf_t s1 = {0}, q1 = {0}, s2 = {0}, q2 = {0};
    ib_load_item_t a = {.group = 1, .index = 0}, b = {.group = 1, .index = 1}, c = {.group = 2, .index = 0};
    assert_int_equal(ib_load_item_prompt(&w, &a, &s1, &q1), 0);
    assert_int_equal(ib_load_item_prompt(&w, &b, &s2, &q2), 0);
    assert_int_equal(s1.len, 256);
    assert_memory_equal(s1.ptr, s2.ptr, s1.len);
    assert_true(memcmp(q1.ptr, q2.ptr, q1.len) != 0);
    ib_buf_reset(&s2);
    ib_buf_reset(&q2);
    assert_int_equal(ib_load_item_prompt(&w, &c, &s2, &q2), 0);
    assert_true(memcmp(s1.ptr, s2.ptr, s1.len) != 0);
    ib_buf_free(&s1);
    ib_buf_free(&q1);
    ib_buf_free(&s2);
    ib_buf_free(&q2);
    ib_load_workload_free(&w);
}

static void test_percentiles(void **state)
{
    (void)state;
    ib_samples_t s = {0};
    for (int i = 100; i >= 1; i--)
        ib_samples_add(&s, i);
    ib_samples_sort(&s);
    assert_true(ib_samples_pct(&s, 50) == 50);
    assert_true(ib_samples_pct(&s, 99) == 99);
    assert_true(ib_samples_pct(&s, 100) == 100);
    assert_true(ib_samples_pct(&s, 0) == 1);
    assert_true(ib_samples_mean(&s) == 50.5);
    ib_samples_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_hash_prefix_gives_shared_text_prefix),
        cmocka_unit_test(test_last_block_cut_to_input_length),
        cmocka_unit_test(test_text_shape),
        cmocka_unit_test(test_parse_mooncake_line),
        cmocka_unit_test(test_parse_azure_line),
        cmocka_unit_test(test_read_trace_spreads_buckets),
        cmocka_unit_test(test_shared_prefix_groups),
        cmocka_unit_test(test_percentiles),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
