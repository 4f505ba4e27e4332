/* The routing snapshot: JSON in, protobuf round trip, JSON out, and the checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/limits.h"
#include "ibrain/snapshot.h"

static const char good[] =
    "{\"version\": 7, \"workloads\": [{\"id\": \"wq\", \"model\": \"qwen3\", \"chat_template\": \"chatml\","
    " \"tokenizer\": \"/t/q.json\", \"block_size\": 16, \"context_length\": 32768, \"policy\": \"affinity\","
    " \"cache_ttl_ms\": 0, \"cache_blocks\": 4096},"
    " {\"id\": \"wl\", \"model\": \"llama\", \"chat_template\": \"llama3\"}],"
    " \"replicas\": [{\"id\": \"q0\", \"workload\": \"wq\", \"address\": \"10.0.0.5:8000\", \"state\": \"ready\","
    " \"generation\": 3},"
    " {\"id\": \"q1\", \"workload\": \"wq\", \"address\": \"10.0.0.6:8000\", \"state\": \"draining\"},"
    " {\"id\": \"l0\", \"workload\": \"wl\", \"address\": \"127.0.0.1:9000\"}]}";

static void test_round_trip(void **state)
{
    (void)state;
    char err[256];
    ib_snapshot_t s, d;
    assert_int_equal(ib_snapshot_from_json(good, strlen(good), &s, err, sizeof(err)), 0);
    assert_int_equal(s.version, 7);
    assert_int_equal(s.nworkloads, 2);
    assert_int_equal(s.nreplicas, 3);
    assert_string_equal(s.workloads[0].tokenizer, "/t/q.json");
    assert_int_equal(s.workloads[0].cache_blocks, 4096);
    assert_true(s.replicas[1].draining);
    assert_int_equal(s.replicas[0].generation, 3);
    ib_buf_t enc = {0};
    assert_int_equal(ib_snapshot_encode(&s, &enc), 0);
    assert_int_equal(ib_snapshot_decode(enc.ptr, enc.len, &d, err, sizeof(err)), 0);
    assert_int_equal(d.version, 7);
    assert_int_equal(d.nworkloads, 2);
    assert_int_equal(d.nreplicas, 3);
    assert_memory_equal(s.workloads, d.workloads, 2 * sizeof(ib_snap_workload_t));
    assert_memory_equal(s.replicas, d.replicas, 3 * sizeof(ib_snap_replica_t));
    /* JSON out reads back to the same snapshot */
    ib_buf_t js = {0};
    assert_int_equal(ib_snapshot_to_json(&d, &js), 0);
    ib_snapshot_t j;
    assert_int_equal(ib_snapshot_from_json(js.ptr, js.len, &j, err, sizeof(err)), 0);
    assert_memory_equal(j.replicas, d.replicas, 3 * sizeof(ib_snap_replica_t));
    ib_snapshot_free(&j);
    ib_buf_free(&js);
    ib_buf_free(&enc);
    ib_snapshot_free(&s);
    ib_snapshot_free(&d);
}

static void expect_error(const char *json, const char *needle)
{
    char err[256] = "";
    ib_snapshot_t s;
    assert_int_equal(ib_snapshot_from_json(json, strlen(json), &s, err, sizeof(err)), -1);
    if (strstr(err, needle) == NULL)
        fail_msg("error '%s' does not mention '%s'", err, needle);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("[]", "not a JSON object");
    expect_error("{\"version\": -1}", "version");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\", \"colour\": 1}]}", "workloads[0].colour");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\", \"policy\": \"random\"}]}", "policy");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\", \"chat_template\": \"gemma\"}]}", "chat_template");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\"}, {\"id\": \"a\", \"model\": \"n\"}]}", "twice");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\"}, {\"id\": \"b\", \"model\": \"m\"}]}", "two workloads");
    expect_error("{\"workloads\": [{\"id\": \"\", \"model\": \"m\"}]}", "id is empty");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\"}], \"replicas\": [{\"id\": \"r\", \"workload\": \"b\","
                 " \"address\": \"1.2.3.4:5\"}]}",
                 "does not exist");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\"}], \"replicas\": [{\"id\": \"r\", \"workload\": \"a\","
                 " \"address\": \"1.2.3.4\"}]}",
                 "IPV4:PORT");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\"}], \"replicas\": [{\"id\": \"r\", \"workload\": \"a\","
                 " \"address\": \"1.2.3.4:5\", \"state\": \"gone\"}]}",
                 "neither ready nor draining");
    expect_error("{\"workloads\": [{\"id\": \"a\", \"model\": \"m\", \"block_size\": 99999999999}]}", "block_size");
    expect_error("{\"version\": 1} x", ""); /* trailing content */
    /* not a protobuf Snapshot */
    char err[256];
    ib_snapshot_t s;
    assert_int_equal(ib_snapshot_decode("\xff\xff\xff", 3, &s, err, sizeof(err)), -1);
}

/* The limits (include/ibrain/limits.h): at them a snapshot passes, one over it does not, and
 * the error names the limit; the encoded one over the limits is refused by decode too. */
static void test_limits(void **state)
{
    (void)state;
    static ib_snap_workload_t wl[IB_MAX_WORKLOADS + 1];
    static ib_snap_replica_t rep[IB_MAX_REPLICAS + 1];
    for (uint32_t i = 0; i <= IB_MAX_WORKLOADS; i++) {
        snprintf(wl[i].id, sizeof(wl[i].id), "w%u", i);
        snprintf(wl[i].model, sizeof(wl[i].model), "m%u", i);
    }
    for (uint32_t i = 0; i <= IB_MAX_REPLICAS; i++) {
        snprintf(rep[i].id, sizeof(rep[i].id), "r%u", i);
        snprintf(rep[i].workload, sizeof(rep[i].workload), "w%u", i % IB_MAX_WORKLOADS);
        snprintf(rep[i].address, sizeof(rep[i].address), "127.0.0.1:%u", 1000 + i);
    }
    char err[256] = "";
    ib_snapshot_t s = {.version = 1, .workloads = wl, .nworkloads = IB_MAX_WORKLOADS, .replicas = rep,
                       .nreplicas = IB_MAX_REPLICAS};
    assert_int_equal(ib_snapshot_check(&s, err, sizeof(err)), 0);
    s.nworkloads = IB_MAX_WORKLOADS + 1;
    assert_int_equal(ib_snapshot_check(&s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "IB_MAX_WORKLOADS"));
    s.nworkloads = IB_MAX_WORKLOADS;
    s.nreplicas = IB_MAX_REPLICAS + 1;
    assert_int_equal(ib_snapshot_check(&s, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "IB_MAX_REPLICAS"));
    ib_buf_t enc = {0};
    ib_snapshot_t d;
    assert_int_equal(ib_snapshot_encode(&s, &enc), 0);
    assert_int_equal(ib_snapshot_decode(enc.ptr, enc.len, &d, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "IB_MAX_REPLICAS"));
    ib_buf_free(&enc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip), cmocka_unit_test(test_errors),
                                       cmocka_unit_test(test_limits)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
