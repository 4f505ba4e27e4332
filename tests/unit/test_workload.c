/* Workload specs: the REST body reader (ib_workload_json_read), the engine command line
 * each replica runs (ib_engine_command) and the workload id rule (ib_workload_id_valid). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ibrain/cluster.h"
#include "ibrain/orchestrator.h"

static ib_json_parser_t *parser;

static int setup(void **state)
{
    (void)state;
    parser = ib_json_parser_new(1 << 16);
    return parser ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    ib_json_parser_free(parser);
    return 0;
}

static int read_spec(const char *body, ib_workload_spec_t *s, uint32_t *present, ib_field_error_t *e)
{
    return ib_workload_json_read(parser, body, strlen(body), strlen(body), s, present, e);
}

static void test_full_body(void **state)
{
    (void)state;
    ib_workload_spec_t s;
    memset(&s, 0, sizeof(s));
    uint32_t present = 0;
    ib_field_error_t e;
    const char *body = "{\"id\":\"qwen\",\"model\":\"Qwen/Qwen3-8B\",\"replicas\":4,\"weights\":\"/models/q\","
                       "\"engine\":\"vllm\",\"engine_args\":\"--gpu-memory-utilization 0.9\",\"version\":\"v2\","
                       "\"chat_template\":\"qwen3\",\"tokenizer\":\"/t.json\",\"block_size\":16,"
                       "\"context_length\":32768,\"policy\":\"affinity\"}";
    assert_int_equal(read_spec(body, &s, &present, &e), 0);
    assert_string_equal(s.id, "qwen");
    assert_string_equal(s.model, "Qwen/Qwen3-8B");
    assert_int_equal(s.replicas, 4);
    assert_string_equal(s.engine, "vllm");
    assert_string_equal(s.engine_args, "--gpu-memory-utilization 0.9");
    assert_int_equal(s.block_size, 16);
    assert_int_equal(s.context_length, 32768);
    assert_int_equal(present, IB_WF_ID | IB_WF_MODEL | IB_WF_REPLICAS | IB_WF_WEIGHTS | IB_WF_ENGINE |
                                  IB_WF_ENGINE_ARGS | IB_WF_VERSION | IB_WF_TEMPLATE | IB_WF_TOKENIZER | IB_WF_BLOCK |
                                  IB_WF_CONTEXT | IB_WF_POLICY);
}

static void test_patch_over_existing(void **state)
{
    (void)state;
    ib_workload_spec_t s;
    memset(&s, 0, sizeof(s));
    strcpy(s.id, "a");
    strcpy(s.model, "m");
    s.replicas = 2;
    uint32_t present;
    ib_field_error_t e;
    assert_int_equal(read_spec("{\"replicas\":3,\"version\":\"esc\\u00e9\\n\"}", &s, &present, &e), 0);
    assert_int_equal(present, IB_WF_REPLICAS | IB_WF_VERSION);
    assert_int_equal(s.replicas, 3);
    assert_string_equal(s.model, "m");
    assert_string_equal(s.version, "esc\xc3\xa9\n");
    s.kv_events = 1; /* a boolean: set, cleared, left alone when absent */
    assert_int_equal(read_spec("{\"kv_events\":false}", &s, &present, &e), 0);
    assert_int_equal(present, IB_WF_KV_EVENTS);
    assert_int_equal(s.kv_events, 0);
    assert_int_equal(read_spec("{\"kv_events\":true}", &s, &present, &e), 0);
    assert_int_equal(s.kv_events, 1);
    assert_int_equal(read_spec("{\"replicas\":2}", &s, &present, &e), 0);
    assert_int_equal(s.kv_events, 1);
}

static void expect_error(const char *body, const char *field, const char *msg_part)
{
    ib_workload_spec_t s;
    memset(&s, 0, sizeof(s));
    strcpy(s.model, "before");
    uint32_t present = 0;
    ib_field_error_t e;
    assert_int_equal(read_spec(body, &s, &present, &e), -1);
    assert_string_equal(e.field, field);
    if (strstr(e.message, msg_part) == NULL)
        fail_msg("'%s': message '%s' lacks '%s'", body, e.message, msg_part);
    assert_string_equal(s.model, "before"); /* unchanged on error */
}

static void test_errors_name_the_field(void **state)
{
    (void)state;
    expect_error("{\"model\":\"x\",\"replicas\":-1}", "replicas", "1..32");
    expect_error("{\"replicas\":33}", "replicas", "1..32");
    expect_error("{\"replicas\":1.5}", "replicas", "integer");
    expect_error("{\"replicas\":\"2\"}", "replicas", "integer");
    expect_error("{\"replicas\":99999999999999999999}", "replicas", "integer");
    expect_error("{\"model\":7}", "model", "string");
    expect_error("{\"model\":null}", "model", "string");
    expect_error("{\"model\":[\"a\"]}", "model", "string");
    expect_error("{\"replica\":2}", "replica", "unknown field");
    expect_error("{\"model\":\"a\",\"model\":\"b\"}", "model", "twice");
    expect_error("{\"block_size\":70000}", "block_size", "0..65536");
    expect_error("{\"kv_events\":1}", "kv_events", "true or false");
    expect_error("{\"kv_events\":\"true\"}", "kv_events", "true or false");
    expect_error("{\"kv_events\":null}", "kv_events", "true or false");
    expect_error("{\"model\":\"a\\u0000b\"}", "model", "NUL");
    char big[600];
    memset(big, 'x', sizeof(big));
    char body[700];
    snprintf(body, sizeof(body), "{\"weights\":\"%.*s\"}", 300, big);
    expect_error(body, "weights", "too long");
}

static void test_not_an_object(void **state)
{
    (void)state;
    expect_error("", "", "one JSON object");
    expect_error("[1,2]", "", "one JSON object");
    expect_error("{\"id\":", "", "one JSON object");
    expect_error("{\"id\":\"a\"} trailing", "", "one JSON object");
    expect_error("\"id\"", "", "one JSON object");
}

static void spec_for(ib_workload_spec_t *s, const char *engine)
{
    memset(s, 0, sizeof(*s));
    strcpy(s->id, "w");
    strcpy(s->model, "m");
    strcpy(s->weights, "/models/m");
    snprintf(s->engine, sizeof(s->engine), "%s", engine);
    s->replicas = 1;
}

static void test_engine_commands(void **state)
{
    (void)state;
    ib_workload_spec_t s;
    char out[1024], err[200];
    spec_for(&s, "");
    strcpy(s.chat_template, "llama3");
    s.block_size = 32;
    strcpy(s.engine_args, "--itl-ms 1");
    assert_int_equal(ib_engine_command(&s, "mock --port {port}", out, sizeof(out), err, sizeof(err)), 0);
    assert_string_equal(out, "mock --port {port} --template llama3 --block-size 32 --itl-ms 1");
    spec_for(&s, "vllm");
    s.context_length = 8192;
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), 0);
    assert_string_equal(out, "vllm serve {weights} --served-model-name {model} --host {host} --port {port} "
                             "--max-model-len 8192");
    spec_for(&s, "sglang");
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), 0);
    assert_non_null(strstr(out, "sglang.launch_server --model-path {weights}"));
    spec_for(&s, "");
    strcpy(s.engine_cmd, "my-engine --port {port}");
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), 0);
    assert_string_equal(out, "my-engine --port {port}");
}

static int id_ok(const char *s) { return ib_workload_id_valid(s, strlen(s)); }

static void test_workload_ids(void **state)
{
    (void)state;
    assert_true(id_ok("a"));
    assert_true(id_ok("chat-7b"));
    assert_true(id_ok("0-9"));
    assert_true(id_ok("-"));
    assert_true(id_ok("abcdefghijklmnopqrstuvwxyz0123456789-abcdefghijk")); /* 48 */
    assert_false(id_ok("abcdefghijklmnopqrstuvwxyz0123456789-abcdefghijkl")); /* 49 */
    assert_false(id_ok(""));
    assert_false(id_ok("Chat"));
    assert_false(id_ok("chat_7b"));
    assert_false(id_ok("chat.7b"));
    assert_false(id_ok("a/b"));
    assert_false(id_ok("a b"));
    assert_false(id_ok("caf\xc3\xa9"));
    assert_false(ib_workload_id_valid(NULL, 0));
    /* a span: only its bytes count (a REST path's tail) */
    assert_true(ib_workload_id_valid("w1/extra", 2));
    assert_false(ib_workload_id_valid("w1/extra", 3));
}

static void test_engine_errors(void **state)
{
    (void)state;
    ib_workload_spec_t s;
    char out[1024], err[200];
    spec_for(&s, "tgi");
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), -1);
    assert_memory_equal(err, "engine:", 7);
    spec_for(&s, "custom");
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), -1);
    assert_memory_equal(err, "engine_cmd:", 11);
    spec_for(&s, "vllm");
    strcpy(s.engine_cmd, "x");
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), -1);
    assert_memory_equal(err, "engine_cmd:", 11);
    spec_for(&s, "mock");
    strcpy(s.weights, "/models/with space");
    assert_int_equal(ib_engine_command(&s, "mock", out, sizeof(out), err, sizeof(err)), -1);
    assert_memory_equal(err, "weights:", 8);
    spec_for(&s, "mock");
    memset(s.engine_args, 'a', sizeof(s.engine_args) - 1);
    char small[64];
    assert_int_equal(ib_engine_command(&s, "mock", small, sizeof(small), err, sizeof(err)), -1);
    assert_memory_equal(err, "engine_args:", 12);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_body),         cmocka_unit_test(test_patch_over_existing),
        cmocka_unit_test(test_errors_name_the_field), cmocka_unit_test(test_not_an_object),
        cmocka_unit_test(test_engine_commands),   cmocka_unit_test(test_engine_errors),
        cmocka_unit_test(test_workload_ids),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
