/* The kubernetes driver's pieces that need no API server (include/ibrain/kube.h): the
 * objects a workload becomes, kubeconfig reading, EndpointSlice endpoints, HTTP -> gRPC. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "ibrain/kube.h"
#include "ibrain/ondemand_c.h"

static ib_json_parser_t *json;

static ib_workload_spec_t spec(const char *weights)
{
    ib_workload_spec_t w = {.replicas = 3, .generation = 7};
    snprintf(w.id, sizeof(w.id), "chat");
    snprintf(w.model, sizeof(w.model), "qwen3");
    snprintf(w.weights, sizeof(w.weights), "%s", weights);
    snprintf(w.engine, sizeof(w.engine), "mock");
    return w;
}

static const ib_kube_workload_opts_t opts = {
    .namespace_ = "llm", .image = "ibrain.local/ib-manager:t", .engine_port = 8000, .manager_port = 8081,
    .kv_port = 5557, .kv_replay_port = 5558, .drain_s = 3, .grace_s = 30, .spec_b64 = "CgRjaGF0", .owner_uid = "uid-1",
    .mock_engine = "/usr/local/bin/ib-mock-engine --listen {host}:{port} --model {model} --id {replica}",
};

/* The string at <ptr> of the JSON in <b> equals <want>. */
static void expect_str(const ib_buf_t *b, const char *ptr, const char *want)
{
    ib_span_t s;
    assert_int_equal(ib_json_pointer_string(json, b->ptr, b->len, ptr, &s), 0);
    if (s.len != strlen(want) || memcmp(s.ptr, want, s.len) != 0)
        fail_msg("%s: got '%.*s', want '%s'", ptr, (int)s.len, s.ptr, want);
}

static void expect_int(const ib_buf_t *b, const char *ptr, int64_t want)
{
    int64_t v = -1;
    assert_int_equal(ib_json_pointer_int(json, b->ptr, b->len, ptr, &v), 0);
    assert_int_equal(v, want);
}

static void test_deployment(void **state)
{
    (void)state;
    ib_workload_spec_t w = spec("/models/qwen3");
    ib_buf_t b = {0};
    ib_kube_deployment(&b, &w, &opts, "abc123");
    expect_str(&b, "/kind", "Deployment");
    expect_str(&b, "/metadata/name", "ib-chat");
    expect_str(&b, "/metadata/namespace", "llm");
    expect_str(&b, "/metadata/labels/app.kubernetes.io~1managed-by", "ib-clusterd");
    expect_str(&b, "/metadata/ownerReferences/0/uid", "uid-1");
    expect_int(&b, "/spec/replicas", 3);
    expect_int(&b, "/spec/strategy/rollingUpdate/maxUnavailable", 0);
    expect_str(&b, "/spec/selector/matchLabels/ibrain.io~1workload", "chat");
    expect_str(&b, "/spec/template/metadata/labels/ibrain.io~1workload", "chat");
    expect_str(&b, "/spec/template/metadata/annotations/ibrain.io~1config-hash", "abc123");
    expect_str(&b, "/spec/template/metadata/annotations/ibrain.io~1generation", "7");
    expect_int(&b, "/spec/template/spec/terminationGracePeriodSeconds", 30);
    expect_str(&b, "/spec/template/spec/containers/0/image", "ibrain.local/ib-manager:t");
    expect_str(&b, "/spec/template/spec/containers/0/readinessProbe/httpGet/path", "/ready");
    expect_str(&b, "/spec/template/spec/containers/0/livenessProbe/httpGet/path", "/health");
    expect_int(&b, "/spec/template/spec/containers/0/lifecycle/preStop/sleep/seconds", 3);
    expect_int(&b, "/spec/template/spec/containers/0/ports/0/containerPort", 8000);
    /* the weights: a host path, mounted where the spec says */
    expect_str(&b, "/spec/template/spec/volumes/2/hostPath/path", "/models/qwen3");
    expect_str(&b, "/spec/template/spec/containers/0/volumeMounts/2/mountPath", "/models/qwen3");
    ib_span_t none;
    assert_int_equal(ib_json_pointer_raw(json, b.ptr, b.len, "/spec/template/spec/containers/0/resources", &none), 1);
    /* resources from the spec */
    snprintf(w.cpu, sizeof(w.cpu), "4");
    snprintf(w.memory, sizeof(w.memory), "16Gi");
    w.gpus = 2;
    b.len = 0;
    ib_kube_deployment(&b, &w, &opts, "abc123");
    expect_str(&b, "/spec/template/spec/containers/0/resources/requests/cpu", "4");
    expect_str(&b, "/spec/template/spec/containers/0/resources/requests/memory", "16Gi");
    expect_str(&b, "/spec/template/spec/containers/0/resources/limits/memory", "16Gi");
    expect_int(&b, "/spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu", 2);
    ib_buf_free(&b);
    assert_true(ib_quantity_valid("500m") && ib_quantity_valid("16Gi") && ib_quantity_valid("0.5"));
    assert_false(ib_quantity_valid("") || ib_quantity_valid("Gi") || ib_quantity_valid("4 cores") || ib_quantity_valid("1e3"));
}

static void test_volumes(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    ib_workload_spec_t w = spec("pvc://weights-claim/qwen3/8b");
    ib_kube_deployment(&b, &w, &opts, "h");
    expect_str(&b, "/spec/template/spec/volumes/2/persistentVolumeClaim/claimName", "weights-claim");
    expect_str(&b, "/spec/template/spec/containers/0/volumeMounts/2/mountPath", "/weights");
    b.len = 0;
    ib_kube_manager_conf(&b, &w, &opts);
    ib_buf_append(&b, "", 1);
    assert_non_null(strstr(b.ptr, "\nweights /weights/qwen3/8b\n"));
    b.len = 0;
    w = spec("nfs://10.0.0.5/exports/models");
    ib_kube_deployment(&b, &w, &opts, "h");
    expect_str(&b, "/spec/template/spec/volumes/2/nfs/server", "10.0.0.5");
    expect_str(&b, "/spec/template/spec/volumes/2/nfs/path", "/exports/models");
    ib_buf_free(&b);
    char err[200];
    w = spec("relative/path");
    assert_int_equal(ib_kube_validate(&w, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "weights"));
    w = spec("pvc://");
    assert_int_equal(ib_kube_validate(&w, err, sizeof(err)), -1);
    w = spec("nfs://server");
    assert_int_equal(ib_kube_validate(&w, err, sizeof(err)), -1);
    w = spec("/ok");
    assert_int_equal(ib_kube_validate(&w, err, sizeof(err)), 0);
}

static void test_service_and_configmap(void **state)
{
    (void)state;
    ib_workload_spec_t w = spec("/m");
    ib_buf_t b = {0};
    ib_kube_service(&b, &w, &opts);
    expect_str(&b, "/spec/clusterIP", "None");
    expect_str(&b, "/spec/selector/ibrain.io~1workload", "chat");
    expect_str(&b, "/spec/ports/0/name", "engine");
    expect_str(&b, "/metadata/ownerReferences/0/kind", "ConfigMap");
    b.len = 0;
    ib_kube_configmap(&b, &w, &opts);
    expect_str(&b, "/binaryData/spec.pb", "CgRjaGF0");
    ib_span_t conf;
    assert_int_equal(ib_json_pointer_string(json, b.ptr, b.len, "/data/manager.conf", &conf), 0);
    char text[2048];
    snprintf(text, sizeof(text), "%.*s", (int)conf.len, conf.ptr);
    assert_non_null(strstr(text, "\nworkload chat\n"));
    assert_non_null(strstr(text, "\nengine-host 0.0.0.0\n"));
    assert_non_null(strstr(text, "\nengine-cmd /usr/local/bin/ib-mock-engine --listen {host}:{port} --model {model}"));
    assert_non_null(strstr(text, "\ndrain-timeout-ms 25000\n")); /* grace 30 - preStop 3 - 2 */
    ib_buf_free(&b);
}

/* kv_events: the engine's command publishes on the manager's ports, the pod declares them,
 * its template says so (the driver reads the annotation back per pod), and nothing of it
 * appears without kv_events. */
static void test_kv_events(void **state)
{
    (void)state;
    ib_workload_spec_t w = spec("/m");
    ib_buf_t b = {0};
    char cmd[1024], err[200];
    ib_kube_deployment(&b, &w, &opts, "h");
    ib_span_t none;
    assert_int_equal(ib_json_pointer_raw(json, b.ptr, b.len, "/spec/template/metadata/annotations/ibrain.io~1kv-events",
                                         &none), 1);
    assert_int_equal(ib_json_pointer_raw(json, b.ptr, b.len, "/spec/template/spec/containers/0/ports/2", &none), 1);
    b.len = 0;
    ib_kube_manager_conf(&b, &w, &opts);
    ib_buf_append(&b, "", 1);
    assert_null(strstr(b.ptr, "kv-port"));
    assert_null(strstr(b.ptr, "kv-events-config"));

    w.kv_events = 1; /* without a tokenizer: refused */
    assert_int_equal(ib_engine_command(&w, opts.mock_engine, cmd, sizeof(cmd), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "kv_events: needs tokenizer"));
    snprintf(w.tokenizer, sizeof(w.tokenizer), "/m/tokenizer.json");
    assert_int_equal(ib_engine_command(&w, opts.mock_engine, cmd, sizeof(cmd), err, sizeof(err)), 0);
    assert_non_null(strstr(cmd, " --kv-events-config {\"enable_kv_cache_events\":true,\"publisher\":\"zmq\","
                                "\"endpoint\":\"tcp://*:{kv_port}\",\"replay_endpoint\":\"tcp://*:{kv_replay_port}\"}"));
    assert_null(strpbrk(strstr(cmd, "--kv-events-config ") + 19, " \t")); /* one word: the manager splits at spaces */
    snprintf(w.engine, sizeof(w.engine), "vllm");
    assert_int_equal(ib_engine_command(&w, opts.mock_engine, cmd, sizeof(cmd), err, sizeof(err)), 0);
    assert_non_null(strstr(cmd, "vllm serve {weights} "));
    assert_non_null(strstr(cmd, " --kv-events-config {"));
    snprintf(w.engine, sizeof(w.engine), "custom");
    snprintf(w.engine_cmd, sizeof(w.engine_cmd), "/opt/engine --port {port}");
    assert_int_equal(ib_engine_command(&w, opts.mock_engine, cmd, sizeof(cmd), err, sizeof(err)), -1);
    assert_non_null(strstr(err, "{kv_port}"));
    snprintf(w.engine_cmd, sizeof(w.engine_cmd), "/opt/engine --port {port} --events tcp://*:{kv_port}");
    assert_int_equal(ib_engine_command(&w, opts.mock_engine, cmd, sizeof(cmd), err, sizeof(err)), 0);
    assert_null(strstr(cmd, "--kv-events-config")); /* a custom command says it its own way */
    w.engine[0] = w.engine_cmd[0] = '\0';

    b.len = 0;
    ib_kube_deployment(&b, &w, &opts, "h");
    expect_str(&b, "/spec/template/metadata/annotations/ibrain.io~1kv-events", "true");
    expect_str(&b, "/spec/template/spec/containers/0/ports/2/name", "kv-events");
    expect_int(&b, "/spec/template/spec/containers/0/ports/2/containerPort", 5557);
    expect_str(&b, "/spec/template/spec/containers/0/ports/3/name", "kv-replay");
    expect_int(&b, "/spec/template/spec/containers/0/ports/3/containerPort", 5558);
    b.len = 0;
    ib_kube_manager_conf(&b, &w, &opts);
    ib_buf_append(&b, "", 1);
    assert_non_null(strstr(b.ptr, "\nkv-port 5557\nkv-replay-port 5558\n"));
    assert_non_null(strstr(b.ptr, "tcp://*:{kv_port}"));
    ib_buf_free(&b);
}

static void test_slice(void **state)
{
    (void)state;
    static const char slice[] =
        "{\"kind\":\"EndpointSlice\",\"metadata\":{\"name\":\"ib-chat-x\",\"labels\":{\"ibrain.io/workload\":\"chat\"}},"
        "\"endpoints\":[{\"addresses\":[\"10.1.0.5\"],\"conditions\":{\"ready\":true,\"serving\":true,"
        "\"terminating\":false},\"targetRef\":{\"kind\":\"Pod\",\"name\":\"ib-chat-a\"}},"
        "{\"addresses\":[\"10.1.0.6\"],\"conditions\":{\"ready\":false,\"serving\":true,\"terminating\":true},"
        "\"targetRef\":{\"name\":\"ib-chat-b\"}},"
        "{\"addresses\":[\"10.1.0.7\"],\"conditions\":{},\"targetRef\":{\"name\":\"ib-chat-c\"}}],"
        "\"ports\":[{\"name\":\"engine\",\"port\":8000}]}";
    ib_json_parser_t *inner = ib_json_parser_new(1 << 16);
    ib_kube_endpoint_t eps[4];
    char wl[64];
    int n = ib_kube_slice_endpoints(json, inner, slice, sizeof(slice) - 1, wl, sizeof(wl), eps, 4);
    assert_int_equal(n, 3);
    assert_string_equal(wl, "chat");
    assert_string_equal(eps[0].pod, "ib-chat-a");
    assert_string_equal(eps[0].ip, "10.1.0.5");
    assert_true(eps[0].ready && eps[0].serving && !eps[0].terminating);
    assert_true(!eps[1].ready && eps[1].serving && eps[1].terminating);
    assert_true(eps[2].ready && eps[2].serving); /* unset conditions: ready (the API's rule) */
    /* capacity is kept; a slice with no endpoints has none; a non-slice is refused */
    assert_int_equal(ib_kube_slice_endpoints(json, inner, slice, sizeof(slice) - 1, wl, sizeof(wl), eps, 1), 1);
    static const char empty[] = "{\"kind\":\"EndpointSlice\",\"metadata\":{\"name\":\"x\"},\"endpoints\":null}";
    assert_int_equal(ib_kube_slice_endpoints(json, inner, empty, sizeof(empty) - 1, wl, sizeof(wl), eps, 4), 0);
    static const char pod[] = "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"x\"}}";
    assert_int_equal(ib_kube_slice_endpoints(json, inner, pod, sizeof(pod) - 1, wl, sizeof(wl), eps, 4), -1);
    assert_int_equal(ib_kube_slice_endpoints(json, inner, "{", 1, wl, sizeof(wl), eps, 4), -1);
    ib_json_parser_free(inner);
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/ib-test-kubeconfig.XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_kubeconfig(void **state)
{
    (void)state;
    /* "-----BEGIN CA-----\n" and "cert\n" / "key\n", base64 */
    char *path = write_tmp("apiVersion: v1\nkind: Config\ncurrent-context: b\n"
                           "clusters:\n- name: c1\n  cluster:\n    server: https://10.0.0.1:6443/\n"
                           "    certificate-authority-data: LS0tLS1CRUdJTiBDQS0tLS0tCg==\n"
                           "contexts:\n- name: a\n  context: {cluster: nope, user: nope}\n"
                           "- name: b\n  context:\n    cluster: c1\n    user: u1\n    namespace: llm\n"
                           "users:\n- name: u1\n  user:\n    client-certificate-data: Y2VydAo=\n"
                           "    client-key-data: a2V5Cg==\n");
    ib_kube_conn_t c;
    char err[300];
    assert_int_equal(ib_kube_conn_from_kubeconfig(path, &c, err, sizeof(err)), 0);
    assert_string_equal(c.server, "https://10.0.0.1:6443");
    assert_string_equal(c.namespace_, "llm");
    assert_string_equal(c.ca_pem, "-----BEGIN CA-----\n");
    assert_string_equal(c.cert_pem, "cert\n");
    assert_string_equal(c.key_pem, "key\n");
    ib_kube_conn_free(&c);
    unlink(path);
    free(path);

    /* a server without a scheme is https, as client-go takes it */
    path = write_tmp("current-context: x\nclusters:\n- name: c\n  cluster: {server: 'h:6443//'}\nusers:\n"
                     "- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n");
    assert_int_equal(ib_kube_conn_from_kubeconfig(path, &c, err, sizeof(err)), 0);
    assert_string_equal(c.server, "https://h:6443");
    ib_kube_conn_free(&c);
    unlink(path);
    free(path);

    path = write_tmp("current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h:1', "
                     "insecure-skip-tls-verify: true}\nusers:\n- name: u\n  user: {token: abc.def}\n"
                     "contexts:\n- name: x\n  context: {cluster: c, user: u}\n");
    assert_int_equal(ib_kube_conn_from_kubeconfig(path, &c, err, sizeof(err)), 0);
    assert_string_equal(c.token, "abc.def");
    assert_int_equal(c.insecure, 1);
    assert_null(c.ca_pem);
    ib_kube_conn_free(&c);
    unlink(path);
    free(path);

    /* refused: no current context, a plugin user, a cert without its key, not YAML, no file */
    const char *bad[] = {
        "clusters: []\n",
        "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h:1'}\nusers:\n- name: u\n"
        "  user: {exec: {command: aws}}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n",
        "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https://h:1'}\nusers:\n- name: u\n"
        "  user: {client-certificate-data: Y2VydAo=}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n",
        "current-context: [unclosed\n",
        /* an empty server, a scheme with no host, a scheme that is not http(s) */
        "current-context: x\nclusters:\n- name: c\n  cluster:\n    server:\nusers:\n- name: u\n"
        "  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n",
        "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'https:///'}\nusers:\n- name: u\n"
        "  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n",
        "current-context: x\nclusters:\n- name: c\n  cluster: {server: 'unix://sock'}\nusers:\n- name: u\n"
        "  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        path = write_tmp(bad[i]);
        err[0] = '\0';
        assert_int_equal(ib_kube_conn_from_kubeconfig(path, &c, err, sizeof(err)), -1);
        assert_true(strlen(err) > 0);
        unlink(path);
        free(path);
    }
    assert_int_equal(ib_kube_conn_from_kubeconfig("/no/such/kubeconfig", &c, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "/no/such/kubeconfig"));
}

static void test_grpc_codes(void **state)
{
    (void)state;
    assert_int_equal(ib_kube_grpc_code(0), IB_GRPC_UNAVAILABLE);
    assert_int_equal(ib_kube_grpc_code(200), IB_GRPC_OK);
    assert_int_equal(ib_kube_grpc_code(201), IB_GRPC_OK);
    assert_int_equal(ib_kube_grpc_code(403), IB_GRPC_PERMISSION_DENIED);
    assert_int_equal(ib_kube_grpc_code(409), IB_GRPC_ABORTED);
    assert_int_equal(ib_kube_grpc_code(422), IB_GRPC_INVALID_ARGUMENT);
    assert_int_equal(ib_kube_grpc_code(503), IB_GRPC_UNAVAILABLE);
    ib_kube_resp_t r = {.status = 422};
    ib_buf_printf(&r.body, "{\"kind\":\"Status\",\"message\":\"Deployment.apps \\\"ib-x\\\" is invalid: "
                           "spec.replicas: Invalid value: -1\",\"code\":422}");
    char err[300];
    assert_int_equal(ib_kube_error(&r, json, "apply deployment ib-x", err, sizeof(err)), IB_GRPC_INVALID_ARGUMENT);
    assert_non_null(strstr(err, "spec.replicas"));
    assert_non_null(strstr(err, "apply deployment ib-x"));
    ib_buf_free(&r.body);
    ib_kube_resp_t down = {.status = 0};
    snprintf(down.error, sizeof(down.error), "Couldn't connect to server");
    assert_int_equal(ib_kube_error(&down, json, "list", err, sizeof(err)), IB_GRPC_UNAVAILABLE);
    assert_non_null(strstr(err, "unreachable"));
}

int main(void)
{
    json = ib_json_parser_new(1 << 20);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deployment),  cmocka_unit_test(test_volumes),     cmocka_unit_test(test_service_and_configmap),
        cmocka_unit_test(test_kv_events),   cmocka_unit_test(test_slice),       cmocka_unit_test(test_kubeconfig),  cmocka_unit_test(test_grpc_codes),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ib_json_parser_free(json);
    return rc;
}
