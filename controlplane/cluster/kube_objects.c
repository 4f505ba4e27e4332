/* What a workload becomes in Kubernetes, and what the driver reads back of the API's
 * objects (include/ibrain/kube.h). Every workload is three objects named ib-ID:
 *   ConfigMap   the manager's config file (manager.conf) and the cluster server's record of
 *               the spec (binaryData spec.pb); the owner of the other two;
 *   Service     headless (clusterIP: None), selecting the workload's pods: its EndpointSlices
 *               are where the driver learns the replicas' addresses and readiness;
 *   Deployment  of pods running ib-manager with its engine, rolled with maxUnavailable 0. */
#include <stdio.h>
#include <string.h>

#include "ibrain/json_write.h"
#include "ibrain/kube.h"

#define MOUNT "/weights"

/* The weights volume: "pvc://CLAIM[/SUB]", "nfs://SERVER/EXPORT" or an absolute host path. */
typedef struct weights_vol {
    enum { W_HOST, W_PVC, W_NFS } kind;
    char a[256]; /* claim, server, or the host path */
    char b[256]; /* sub path in the claim, or the export */
} weights_vol_t;

static int parse_weights(const char *w, weights_vol_t *v, char *err, size_t errlen)
{
    memset(v, 0, sizeof(*v));
    const char *rest;
    if (strncmp(w, "pvc://", 6) == 0 || strncmp(w, "nfs://", 6) == 0) {
        v->kind = w[0] == 'p' ? W_PVC : W_NFS;
        rest = w + 6;
        size_t n = strcspn(rest, "/");
        if (n == 0 || n >= sizeof(v->a)) {
            snprintf(err, errlen, "weights: '%s' names no %s", w, v->kind == W_PVC ? "claim" : "server");
            return -1;
        }
        memcpy(v->a, rest, n);
        snprintf(v->b, sizeof(v->b), "%s", rest[n] ? rest + n : (v->kind == W_NFS ? "" : ""));
        if (v->kind == W_NFS && v->b[0] == '\0') {
            snprintf(err, errlen, "weights: '%s' names no export path (nfs://SERVER/EXPORT)", w);
            return -1;
        }
        return 0;
    }
    if (w[0] != '/') {
        snprintf(err, errlen, "weights: '%s' must be an absolute path on the node, pvc://CLAIM[/PATH] or "
                 "nfs://SERVER/EXPORT", w);
        return -1;
    }
    v->kind = W_HOST;
    snprintf(v->a, sizeof(v->a), "%s", w);
    return 0;
}

int ib_kube_validate(const ib_workload_spec_t *w, char *err, size_t errlen)
{
    weights_vol_t v;
    return parse_weights(w->weights, &v, err, errlen);
}

/* The path the manager reads the weights at, inside the pod. */
static void weights_in_pod(const weights_vol_t *v, char *out, size_t cap)
{
    if (v->kind == W_HOST)
        snprintf(out, cap, "%s", v->a);
    else if (v->kind == W_PVC)
        snprintf(out, cap, MOUNT "%s", v->b);
    else
        snprintf(out, cap, MOUNT);
}

static void labels(ib_buf_t *b, const ib_workload_spec_t *w, int selector_only)
{
    ib_buf_printf(b, "{\"ibrain.io/workload\":");
    ib_json_str(b, w->id);
    if (!selector_only) {
        ib_buf_printf(b, ",\"app.kubernetes.io/name\":\"ib-manager\",\"app.kubernetes.io/instance\":");
        ib_json_str(b, w->id);
        ib_buf_printf(b, ",\"app.kubernetes.io/component\":\"workload\",\"app.kubernetes.io/part-of\":\"ibrain\","
                         "\"app.kubernetes.io/managed-by\":\"ib-clusterd\"");
    }
    ib_buf_printf(b, "}");
}

static void metadata(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o)
{
    ib_buf_printf(b, "\"metadata\":{\"name\":\"ib-%s\",\"namespace\":", w->id);
    ib_json_str(b, o->namespace_);
    ib_buf_printf(b, ",\"labels\":");
    labels(b, w, 0);
    if (o->owner_uid != NULL && o->owner_uid[0] != '\0') { /* deleting the ConfigMap deletes the rest */
        ib_buf_printf(b, ",\"ownerReferences\":[{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"name\":\"ib-%s\","
                         "\"controller\":true,\"blockOwnerDeletion\":true,\"uid\":", w->id);
        ib_json_str(b, o->owner_uid);
        ib_buf_printf(b, "}]");
    }
    ib_buf_printf(b, "}");
}

void ib_kube_manager_conf(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o)
{
    char engine[1024], err[160], weights[512];
    weights_vol_t v;
    if (parse_weights(w->weights, &v, err, sizeof(err)) != 0)
        v = (weights_vol_t){.kind = W_HOST}; /* validated before: not reached */
    weights_in_pod(&v, weights, sizeof(weights));
    if (ib_engine_command(w, o->mock_engine, engine, sizeof(engine), err, sizeof(err)) != 0)
        snprintf(engine, sizeof(engine), "false"); /* validated before: not reached */
    ib_buf_printf(b,
                  "# ib-manager --config: written by ib-clusterd's kubernetes driver for workload %s\n"
                  "workload %s\nmodel %s\nweights %s\nengine-cmd %s\nengine-host 0.0.0.0\nengine-port %u\n"
                  "drain-timeout-ms %u\n",
                  w->id, w->id, w->model, weights, engine, o->engine_port,
                  (o->grace_s > o->drain_s + 2 ? o->grace_s - o->drain_s - 2 : 1) * 1000u);
    if (w->kv_events)
        ib_buf_printf(b, "kv-port %u\nkv-replay-port %u\n", o->kv_port, o->kv_replay_port);
}

void ib_kube_configmap(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o)
{
    ib_buf_printf(b, "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",");
    metadata(b, w, o);
    if (o->resource_version != NULL && o->resource_version[0] != '\0') { /* into metadata: reopen it */
        b->len--;
        ib_buf_printf(b, ",\"resourceVersion\":");
        ib_json_str(b, o->resource_version);
        ib_buf_printf(b, "}");
    }
    ib_buf_printf(b, ",\"data\":{\"manager.conf\":");
    ib_buf_t conf = {0};
    ib_kube_manager_conf(&conf, w, o);
    ib_json_strn(b, conf.ptr, conf.len);
    ib_buf_free(&conf);
    ib_buf_printf(b, "},\"binaryData\":{\"spec.pb\":");
    ib_json_str(b, o->spec_b64);
    ib_buf_printf(b, "}}");
}

void ib_kube_service(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o)
{
    ib_buf_printf(b, "{\"apiVersion\":\"v1\",\"kind\":\"Service\",");
    metadata(b, w, o);
    /* headless: DNS answers with the ready pods' addresses, and the EndpointSlice controller
     * publishes every pod with its conditions; publishNotReadyAddresses stays false so
     * that DNS holds only ready pods */
    ib_buf_printf(b, ",\"spec\":{\"clusterIP\":\"None\",\"selector\":");
    labels(b, w, 1);
    ib_buf_printf(b, ",\"ports\":[{\"name\":\"engine\",\"port\":%u,\"targetPort\":\"engine\",\"protocol\":\"TCP\"},"
                     "{\"name\":\"manager\",\"port\":%u,\"targetPort\":\"manager\",\"protocol\":\"TCP\"}]}}",
                  o->engine_port, o->manager_port);
}

static void weights_volume(ib_buf_t *b, const weights_vol_t *v)
{
    ib_buf_printf(b, "{\"name\":\"weights\",");
    if (v->kind == W_HOST) {
        ib_buf_printf(b, "\"hostPath\":{\"path\":");
        ib_json_str(b, v->a);
        ib_buf_printf(b, "}}");
    } else if (v->kind == W_PVC) {
        ib_buf_printf(b, "\"persistentVolumeClaim\":{\"claimName\":");
        ib_json_str(b, v->a);
        ib_buf_printf(b, ",\"readOnly\":true}}");
    } else {
        ib_buf_printf(b, "\"nfs\":{\"server\":");
        ib_json_str(b, v->a);
        ib_buf_printf(b, ",\"path\":");
        ib_json_str(b, v->b);
        ib_buf_printf(b, ",\"readOnly\":true}}");
    }
}

void ib_kube_deployment(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o,
                        const char *config_hash)
{
    weights_vol_t v;
    char err[160];
    if (parse_weights(w->weights, &v, err, sizeof(err)) != 0)
        v = (weights_vol_t){.kind = W_HOST, .a = "/"}; /* validated before: not reached */
    /* requests: what the scheduler places the pod by; limits: memory (an engine over it is
     * killed, not the node) and GPUs (extended resources are limits only) */
    char resources[256] = "", req[96] = "", lim[96] = "";
    if (w->cpu[0])
        snprintf(req, sizeof(req), "\"cpu\":\"%s\"", w->cpu);
    if (w->memory[0]) {
        snprintf(req + strlen(req), sizeof(req) - strlen(req), "%s\"memory\":\"%s\"", req[0] ? "," : "", w->memory);
        snprintf(lim, sizeof(lim), "\"memory\":\"%s\"", w->memory);
    }
    if (w->gpus)
        snprintf(lim + strlen(lim), sizeof(lim) - strlen(lim), "%s\"nvidia.com/gpu\":%u", lim[0] ? "," : "", w->gpus);
    if (req[0] || lim[0])
        snprintf(resources, sizeof(resources), "\"resources\":{\"requests\":{%s},\"limits\":{%s}},", req, lim);
    char kvports[160] = ""; /* the engine's KV events PUB and replay ROUTER, where routers connect */
    if (w->kv_events)
        snprintf(kvports, sizeof(kvports),
                 ",{\"name\":\"kv-events\",\"containerPort\":%u,\"protocol\":\"TCP\"},"
                 "{\"name\":\"kv-replay\",\"containerPort\":%u,\"protocol\":\"TCP\"}",
                 o->kv_port, o->kv_replay_port);
    ib_buf_printf(b, "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\",");
    metadata(b, w, o);
    ib_buf_printf(b, ",\"spec\":{\"replicas\":%u,\"selector\":{\"matchLabels\":", w->replicas);
    labels(b, w, 1);
    /* maxUnavailable 0: an old pod goes only once a new one is ready; maxSurge 1: one new
     * pod at a time (an engine holds a GPU: never twice the fleet) */
    ib_buf_printf(b, "},\"strategy\":{\"type\":\"RollingUpdate\",\"rollingUpdate\":{\"maxUnavailable\":0,"
                     "\"maxSurge\":1}},\"progressDeadlineSeconds\":%u,\"revisionHistoryLimit\":3,"
                     "\"template\":{\"metadata\":{\"labels\":", o->progress_deadline_s ? o->progress_deadline_s : 600);
    labels(b, w, 0);
    ib_buf_printf(b, ",\"annotations\":{\"ibrain.io/config-hash\":");
    ib_json_str(b, config_hash);
    ib_buf_printf(b, ",\"ibrain.io/generation\":\"%llu\"%s}}", (unsigned long long)w->generation,
                  w->kv_events ? ",\"ibrain.io/kv-events\":\"true\"" : "");
    ib_buf_printf(b, ",\"spec\":{\"terminationGracePeriodSeconds\":%u,\"enableServiceLinks\":false,"
                     "\"automountServiceAccountToken\":false,"
                     "\"securityContext\":{\"runAsNonRoot\":true,\"runAsUser\":65532,\"runAsGroup\":65532},"
                     "\"containers\":[{\"name\":\"manager\",\"image\":",
                  o->grace_s);
    ib_json_str(b, o->image);
    ib_buf_printf(b, ",\"imagePullPolicy\":");
    ib_json_str(b, o->pull_policy ? o->pull_policy : "IfNotPresent");
    ib_buf_printf(b,
                  ",\"args\":[\"--config\",\"/etc/ibrain/manager.conf\",\"--replica\",\"$(POD_NAME)\",\"--listen\","
                  "\"0.0.0.0:%u\",\"--state-dir\",\"/tmp\"],"
                  "\"env\":[{\"name\":\"POD_NAME\",\"valueFrom\":{\"fieldRef\":{\"fieldPath\":\"metadata.name\"}}}],"
                  "\"ports\":[{\"name\":\"engine\",\"containerPort\":%u,\"protocol\":\"TCP\"},"
                  "{\"name\":\"manager\",\"containerPort\":%u,\"protocol\":\"TCP\"}%s],"
                  /* ready: the manager says its engine serves (and it is not draining) */
                  "\"readinessProbe\":{\"httpGet\":{\"path\":\"/ready\",\"port\":\"manager\"},\"periodSeconds\":1,"
                  "\"timeoutSeconds\":1,\"successThreshold\":1,\"failureThreshold\":1},"
                  /* alive: the manager answers (it restarts its engine itself) */
                  "\"livenessProbe\":{\"httpGet\":{\"path\":\"/health\",\"port\":\"manager\"},\"periodSeconds\":5,"
                  "\"timeoutSeconds\":2,\"failureThreshold\":3},"
                  /* before SIGTERM: the pod shows as terminating in the EndpointSlices for this long,
                   * so that routers stop sending new requests before the engine drains */
                  "\"lifecycle\":{\"preStop\":{\"sleep\":{\"seconds\":%u}}},"
                  "%s"
                  "\"securityContext\":{\"allowPrivilegeEscalation\":false,\"readOnlyRootFilesystem\":true,"
                  "\"capabilities\":{\"drop\":[\"ALL\"]}},"
                  "\"volumeMounts\":[{\"name\":\"config\",\"mountPath\":\"/etc/ibrain\",\"readOnly\":true},"
                  "{\"name\":\"tmp\",\"mountPath\":\"/tmp\"},{\"name\":\"weights\",\"readOnly\":true,\"mountPath\":",
                  o->manager_port, o->engine_port, o->manager_port, kvports, o->drain_s, resources);
    ib_json_str(b, v.kind == W_HOST ? v.a : MOUNT);
    ib_buf_printf(b, "}]}],\"volumes\":[{\"name\":\"config\",\"configMap\":{\"name\":\"ib-%s\"}},"
                     "{\"name\":\"tmp\",\"emptyDir\":{\"sizeLimit\":\"256Mi\"}},",
                  w->id);
    weights_volume(b, &v);
    ib_buf_printf(b, "]}}}}");
}

/* ---- reading objects back ---- */

typedef struct slice_walk {
    ib_json_parser_t *p;
    ib_kube_endpoint_t *out;
    int cap, n;
} slice_walk_t;

static void copy_span(char *dst, size_t cap, ib_span_t s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static int on_endpoint(void *ctx, const char *e, size_t len)
{
    slice_walk_t *w = ctx;
    if (w->n == w->cap)
        return 0;
    ib_kube_endpoint_t *ep = &w->out[w->n];
    memset(ep, 0, sizeof(*ep));
    ib_span_t s;
    if (ib_json_pointer_string(w->p, e, len, "/addresses/0", &s) != 0)
        return 0;
    copy_span(ep->ip, sizeof(ep->ip), s);
    if (ib_json_pointer_string(w->p, e, len, "/targetRef/name", &s) == 0)
        copy_span(ep->pod, sizeof(ep->pod), s);
    /* conditions: ready unset means ready (the API's rule); serving follows ready when unset */
    int v;
    ep->ready = ib_json_pointer_bool(w->p, e, len, "/conditions/ready", &v) == 0 ? v : 1;
    ep->serving = ib_json_pointer_bool(w->p, e, len, "/conditions/serving", &v) == 0 ? v : ep->ready;
    ep->terminating = ib_json_pointer_bool(w->p, e, len, "/conditions/terminating", &v) == 0 ? v : 0;
    w->n++;
    return 0;
}

int ib_kube_slice_endpoints(ib_json_parser_t *p, ib_json_parser_t *inner, const char *obj, size_t len, char *workload,
                            size_t wcap, ib_kube_endpoint_t *out, int cap)
{
    ib_span_t s;
    if (ib_json_pointer_string(p, obj, len, "/kind", &s) == 0 && !(s.len == 13 && memcmp(s.ptr, "EndpointSlice", 13) == 0))
        return -1;
    workload[0] = '\0';
    if (ib_json_pointer_string(p, obj, len, "/metadata/labels/ibrain.io~1workload", &s) == 0)
        copy_span(workload, wcap, s);
    slice_walk_t w = {inner, out, cap, 0};
    int rc = ib_json_pointer_each(p, obj, len, "/endpoints", on_endpoint, &w);
    return rc < 0 ? -1 : w.n; /* 1: no endpoints (null) */
}
