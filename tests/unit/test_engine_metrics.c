/* An engine's own load read from its /metrics page: vLLM's and SGLang's names, labels
 * with hard characters, several label sets summed, what is skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/engine_metrics.h"

static void test_vllm_page(void **state)
{
    (void)state;
    static const char page[] =
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        "vllm:num_requests_running{engine=\"0\",model_name=\"qwen3\"} 3.0\n"
        "vllm:num_requests_running{engine=\"1\",model_name=\"qwen3\"} 2.0\n"
        "vllm:num_requests_running_total 99\n"          /* another name with the same start */
        "vllm:num_requests_waiting{engine=\"0\",model_name=\"a} b\\\" c\"} 4 1700000000000\n"
        "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"qwen3\"} 0.5\n"
        "vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"qwen3\"} 0.25\n"
        "vllm:num_requests_waiting{engine=\"1\"} NaN\n" /* not finite: skipped */
        "vllm:num_requests_waiting{engine=\"1\" 7\n";   /* unterminated labels: skipped */
    ib_engine_load_t l;
    assert_int_equal(ib_engine_load_parse(page, sizeof(page) - 1, &l), 0);
    assert_true(l.running == 5.0);
    assert_true(l.waiting == 4.0);
    assert_true(l.kv_usage == 0.375);
    assert_int_equal(l.found, IB_ENGINE_LOAD_RUNNING | IB_ENGINE_LOAD_WAITING | IB_ENGINE_LOAD_KV);
}

static void test_sglang_page_without_newline(void **state)
{
    (void)state;
    static const char page[] = "sglang:num_running_reqs{model_name=\"m\"} 7\nsglang:num_queue_reqs 1\n"
                               "sglang:token_usage{model_name=\"m\"} 0.9";
    ib_engine_load_t l;
    assert_int_equal(ib_engine_load_parse(page, sizeof(page) - 1, &l), 0);
    assert_true(l.running == 7.0 && l.waiting == 1.0 && l.kv_usage == 0.9);
}

static void test_pages_without_load(void **state)
{
    (void)state;
    ib_engine_load_t l;
    static const char only_running[] = "vllm:num_requests_running 2\n";
    assert_int_equal(ib_engine_load_parse(only_running, sizeof(only_running) - 1, &l), -1);
    assert_int_equal(l.found, IB_ENGINE_LOAD_RUNNING);
    static const char other[] = "{\"error\":\"no such route\"}";
    assert_int_equal(ib_engine_load_parse(other, sizeof(other) - 1, &l), -1);
    assert_int_equal(l.found, 0);
    static const char negative[] = "vllm:num_requests_running -1\nvllm:num_requests_waiting 1\n";
    assert_int_equal(ib_engine_load_parse(negative, sizeof(negative) - 1, &l), -1);
    assert_int_equal(ib_engine_load_parse("", 0, &l), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vllm_page),
        cmocka_unit_test(test_sglang_page_without_newline),
        cmocka_unit_test(test_pages_without_load),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
