/*
 * The kubernetes driver: each workload is a ConfigMap, a headless Service and a Deployment
 * of ib-manager pods (kube_objects.c), written by server-side apply; the Deployment rolls
 * updates out, and the driver learns what runs from three watches (pods, EndpointSlices,
 * Deployments) of the objects it labelled, never by polling per call.
 *
 *   replicas   the workload's pods; address and readiness from the headless Service's
 *              EndpointSlices (ready -> ready, terminating -> draining), generation from the
 *              pod template's ibrain.io/generation annotation, troubles (image, crash loop,
 *              unschedulable) and restarts from the pods;
 *   phase      from the Deployment's rollout (updated / ready / available replicas, the
 *              progress deadline) and the pods' troubles;
 *   restart    the ConfigMaps hold the cluster server's record of each spec (binaryData
 *              spec.pb): a restarted cluster server lists them and goes on; it keeps nothing;
 *   outage     the watches' caches are kept while the API server is away, so the routing
 *              snapshot stays as it was; the watches re-list and resume with back-off.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ibrain/clock.h"
#include "ibrain/json_write.h"
#include "ibrain/kube.h"

#define MANAGED "app.kubernetes.io%2Fmanaged-by%3Dib-clusterd"
#define FIELD_MANAGER "ib-clusterd"
#define CALL_MS 5000L
#define ENGINE_PORT 8000
#define MANAGER_PORT 8081
#define KV_PORT 5557        /* vLLM's default KV events endpoint port */
#define KV_REPLAY_PORT 5558
#define MOCK_IN_IMAGE "/usr/local/bin/ib-mock-engine --listen {host}:{port} --model {model} --id {replica}"
#define MAX_PODS (IB_MAX_WORKLOADS * 3 * IB_MAX_WORKLOAD_REPLICAS)
#define MAX_SLICES (IB_MAX_WORKLOADS * 4)
#define MAX_SLICE_EPS 128

enum { S_PODS, S_SLICES, S_DEPLOYS, S_CONFIGS, S__COUNT };
static const char *const stream_paths[S__COUNT] = {
    "/api/v1/namespaces/%s/pods",
    "/apis/discovery.k8s.io/v1/namespaces/%s/endpointslices",
    "/apis/apps/v1/namespaces/%s/deployments",
    "/api/v1/namespaces/%s/configmaps",
};

/* The caches' entries: each begins with its key (cache_put, cache_find). */
typedef struct kpod {
    char name[80];
    char workload[64];
    uint64_t generation;
    int kv_events; /* its template's ibrain.io/kv-events: the engine publishes KV events */
    int running, deleting;
    uint32_t restarts;
    char trouble[200];
    int fatal; /* a trouble that does not go away by waiting (image, config, unschedulable) */
} kpod_t;

typedef struct kslice {
    char name[128];
    char workload[64];
    int n;
    ib_kube_endpoint_t eps[MAX_SLICE_EPS];
} kslice_t;

typedef struct kdeploy {
    char workload[64];
    int64_t generation, observed;
    uint32_t want, replicas, updated, ready, available;
    int deadline_exceeded;
    char message[200];
} kdeploy_t;

/* A workload's ConfigMap: the cluster server's record of its spec, and the resourceVersion
 * an update must match (optimistic concurrency between cluster servers). */
typedef struct kconfig {
    char workload[64];
    char rv[32];
    uint8_t *record;
    size_t len;
    int deleting;
} kconfig_t;

/* One list-then-watch of a kind of object. */
typedef struct stream {
    char rv[32];          /* resourceVersion to watch from; "" until listed */
    int watching;         /* a watch runs (else a list, or waiting to list) */
    int gone;             /* the watch said 410 Gone: list again */
    uint32_t backoff_ms;
    uint64_t next_ns;     /* when to list again */
    uint64_t events;
    int listed;           /* the cache holds a full list (and what came after) */
} stream_t;

typedef struct kube {
    ib_driver_t ops;
    ib_workload_ops_t wops;
    ib_cluster_config_t cfg;
    char ns[64];
    ib_kube_client_t *api;
    ib_json_parser_t *json, *inner, *eps; /* lists and events; objects; a slice's endpoints */
    stream_t streams[S__COUNT];
    kpod_t *pods;
    uint32_t npods;
    kslice_t *slices;
    uint32_t nslices;
    kdeploy_t deploys[IB_MAX_WORKLOADS * 2];
    uint32_t ndeploys;
    kconfig_t configs[IB_MAX_WORKLOADS * 2];
    uint32_t nconfigs;
    uint64_t records_version; /* bumped when a workload's record appears, changes or goes */
} kube_t;

/* ---- small helpers ---- */

static void span_copy(char *dst, size_t cap, ib_span_t s)
{
    size_t n = s.len < cap - 1 ? s.len : cap - 1;
    memcpy(dst, s.ptr, n);
    dst[n] = '\0';
}

static int str_at(kube_t *k, const char *doc, size_t len, const char *ptr, char *out, size_t cap)
{
    ib_span_t s;
    out[0] = '\0';
    if (ib_json_pointer_string(k->inner, doc, len, ptr, &s) != 0)
        return -1;
    span_copy(out, cap, s);
    return 0;
}

static int64_t int_at(kube_t *k, const char *doc, size_t len, const char *ptr)
{
    int64_t v = 0;
    return ib_json_pointer_int(k->inner, doc, len, ptr, &v) == 0 ? v : 0;
}

static void path_of(kube_t *k, char *out, size_t cap, const char *fmt_kind, const char *name, const char *query)
{
    char base[256];
    snprintf(base, sizeof(base), fmt_kind, k->ns);
    snprintf(out, cap, "%s%s%s%s", base, name ? "/" : "", name ? name : "", query ? query : "");
}

/* ---- the caches, fed by lists and watch events ---- */

/* A cache is an array of structs whose first member is their key (a NUL-terminated name). */
static uint32_t cache_find(const void *items, size_t size, uint32_t n, const char *key)
{
    for (uint32_t i = 0; i < n; i++)
        if (strcmp((const char *)items + (size_t)i * size, key) == 0)
            return i;
    return n;
}

/* The item keyed <key>, zeroed but for its key (added when new), to fill from the object;
 * NULL when the cache is full. <deleted>: the item is removed instead, and NULL returned. */
static void *cache_put(void *items, size_t size, uint32_t *n, uint32_t cap, const char *key, size_t keycap, int deleted)
{
    char *base = items;
    uint32_t i = cache_find(items, size, *n, key);
    if (deleted) {
        if (i < *n && i != --*n)
            memcpy(base + (size_t)i * size, base + (size_t)*n * size, size);
        return NULL;
    }
    if (i == *n) {
        if (*n == cap)
            return NULL;
        (*n)++;
    }
    char *item = base + (size_t)i * size;
    memset(item, 0, size);
    snprintf(item, keycap, "%s", key);
    return item;
}

static void workload_of(const char *name, char *out, size_t cap)
{
    const char *id = strncmp(name, "ib-", 3) == 0 ? name + 3 : name;
    size_t n = strnlen(id, cap - 1);
    memcpy(out, id, n);
    out[n] = '\0';
}

static void pod_update(kube_t *k, const char *o, size_t len, int deleted)
{
    char name[80];
    if (str_at(k, o, len, "/metadata/name", name, sizeof(name)) != 0)
        return;
    kpod_t *p = cache_put(k->pods, sizeof(*p), &k->npods, MAX_PODS, name, sizeof(p->name), deleted);
    if (p == NULL)
        return;
    str_at(k, o, len, "/metadata/labels/ibrain.io~1workload", p->workload, sizeof(p->workload));
    char gen[32];
    str_at(k, o, len, "/metadata/annotations/ibrain.io~1generation", gen, sizeof(gen));
    p->generation = strtoull(gen, NULL, 10);
    char kv[8] = "";
    str_at(k, o, len, "/metadata/annotations/ibrain.io~1kv-events", kv, sizeof(kv));
    p->kv_events = strcmp(kv, "true") == 0;
    ib_span_t s;
    p->deleting = ib_json_pointer_string(k->inner, o, len, "/metadata/deletionTimestamp", &s) == 0;
    char phase[32];
    str_at(k, o, len, "/status/phase", phase, sizeof(phase));
    p->running = strcmp(phase, "Running") == 0;
    p->restarts = (uint32_t)int_at(k, o, len, "/status/containerStatuses/0/restartCount");
    char reason[64], msg[160];
    if (str_at(k, o, len, "/status/containerStatuses/0/state/waiting/reason", reason, sizeof(reason)) == 0 &&
        strcmp(reason, "ContainerCreating") != 0 && strcmp(reason, "PodInitializing") != 0) {
        str_at(k, o, len, "/status/containerStatuses/0/state/waiting/message", msg, sizeof(msg));
        snprintf(p->trouble, sizeof(p->trouble), "%s%s%s", reason, msg[0] ? ": " : "", msg);
        p->fatal = strstr(reason, "Image") != NULL || strstr(reason, "Config") != NULL ||
                   strcmp(reason, "InvalidImageName") == 0;
    }
    /* unschedulable: the PodScheduled condition (index varies: look at the first three) */
    for (int c = 0; c < 4 && p->trouble[0] == '\0'; c++) {
        char ptr[64], type[32], status[16];
        snprintf(ptr, sizeof(ptr), "/status/conditions/%d/type", c);
        if (str_at(k, o, len, ptr, type, sizeof(type)) != 0)
            break;
        snprintf(ptr, sizeof(ptr), "/status/conditions/%d/status", c);
        str_at(k, o, len, ptr, status, sizeof(status));
        if (strcmp(type, "PodScheduled") == 0 && strcmp(status, "False") == 0) {
            snprintf(ptr, sizeof(ptr), "/status/conditions/%d/message", c);
            str_at(k, o, len, ptr, msg, sizeof(msg));
            snprintf(p->trouble, sizeof(p->trouble), "Unschedulable: %s", msg);
            p->fatal = 1;
        }
    }
}

static void slice_update(kube_t *k, const char *o, size_t len, int deleted)
{
    char name[128];
    if (str_at(k, o, len, "/metadata/name", name, sizeof(name)) != 0)
        return;
    kslice_t *s = cache_put(k->slices, sizeof(*s), &k->nslices, MAX_SLICES, name, sizeof(s->name), deleted);
    if (s == NULL)
        return;
    char label[64], svc[80];
    int n = ib_kube_slice_endpoints(k->inner, k->eps, o, len, label, sizeof(label), s->eps, MAX_SLICE_EPS);
    s->n = n > 0 ? n : 0;
    /* the Service's name says whose it is (the controller copies the Service's labels too) */
    if (str_at(k, o, len, "/metadata/labels/kubernetes.io~1service-name", svc, sizeof(svc)) == 0)
        workload_of(svc, s->workload, sizeof(s->workload));
    else
        snprintf(s->workload, sizeof(s->workload), "%s", label);
}

static void deploy_update(kube_t *k, const char *o, size_t len, int deleted)
{
    char name[80], id[64];
    if (str_at(k, o, len, "/metadata/name", name, sizeof(name)) != 0)
        return;
    workload_of(name, id, sizeof(id));
    kdeploy_t *d = cache_put(k->deploys, sizeof(*d), &k->ndeploys, sizeof(k->deploys) / sizeof(k->deploys[0]), id,
                             sizeof(d->workload), deleted);
    if (d == NULL)
        return;
    d->generation = int_at(k, o, len, "/metadata/generation");
    d->observed = int_at(k, o, len, "/status/observedGeneration");
    d->want = (uint32_t)int_at(k, o, len, "/spec/replicas");
    d->replicas = (uint32_t)int_at(k, o, len, "/status/replicas");
    d->updated = (uint32_t)int_at(k, o, len, "/status/updatedReplicas");
    d->ready = (uint32_t)int_at(k, o, len, "/status/readyReplicas");
    d->available = (uint32_t)int_at(k, o, len, "/status/availableReplicas");
    for (int c = 0; c < 4; c++) {
        char ptr[64], reason[64];
        snprintf(ptr, sizeof(ptr), "/status/conditions/%d/reason", c);
        if (str_at(k, o, len, ptr, reason, sizeof(reason)) != 0)
            break;
        if (strcmp(reason, "ProgressDeadlineExceeded") == 0) {
            d->deadline_exceeded = 1;
            snprintf(ptr, sizeof(ptr), "/status/conditions/%d/message", c);
            str_at(k, o, len, ptr, d->message, sizeof(d->message));
        }
    }
}

/* base64 of binaryData into a malloc'd record; NULL when absent or invalid. */
static uint8_t *b64_decode(const char *s, size_t n, size_t *len)
{
    uint8_t *out = malloc(n / 4 * 3 + 4);
    if (out == NULL)
        return NULL;
    int m = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
    for (size_t e = n; m > 0 && e > 0 && s[e - 1] == '='; e--)
        m--; /* EVP_DecodeBlock counts the padding */
    if (m <= 0) {
        free(out);
        return NULL;
    }
    *len = (size_t)m;
    return out;
}

static kconfig_t *config_of(kube_t *k, const char *workload)
{
    uint32_t i = cache_find(k->configs, sizeof(k->configs[0]), k->nconfigs, workload);
    return i < k->nconfigs ? &k->configs[i] : NULL;
}

/* A new entry for workload <id>, or NULL when the cache is full. */
static kconfig_t *config_add(kube_t *k, const char *id)
{
    if (k->nconfigs == sizeof(k->configs) / sizeof(k->configs[0]))
        return NULL;
    kconfig_t *c = &k->configs[k->nconfigs++];
    memset(c, 0, sizeof(*c));
    snprintf(c->workload, sizeof(c->workload), "%s", id);
    return c;
}

static void config_drop(kube_t *k, kconfig_t *c)
{
    free(c->record);
    *c = k->configs[--k->nconfigs];
    k->records_version++;
}

static void config_update(kube_t *k, const char *o, size_t len, int deleted)
{
    char name[80], id[64];
    if (str_at(k, o, len, "/metadata/name", name, sizeof(name)) != 0)
        return;
    workload_of(name, id, sizeof(id));
    kconfig_t *c = config_of(k, id);
    if (deleted) {
        if (c != NULL)
            config_drop(k, c);
        return;
    }
    if (c == NULL && (c = config_add(k, id)) == NULL)
        return;
    str_at(k, o, len, "/metadata/resourceVersion", c->rv, sizeof(c->rv));
    ib_span_t s;
    int deleting = ib_json_pointer_string(k->inner, o, len, "/metadata/deletionTimestamp", &s) == 0;
    size_t rlen = 0;
    uint8_t *record = NULL;
    if (ib_json_pointer_string(k->inner, o, len, "/binaryData/spec.pb", &s) == 0)
        record = b64_decode(s.ptr, s.len, &rlen);
    if (deleting != c->deleting || rlen != c->len || (rlen > 0 && memcmp(record, c->record, rlen) != 0))
        k->records_version++;
    free(c->record);
    c->record = record;
    c->len = rlen;
    c->deleting = deleting;
}

typedef void (*update_fn)(kube_t *k, const char *o, size_t len, int deleted);
static const update_fn updaters[S__COUNT] = {pod_update, slice_update, deploy_update, config_update};

typedef struct list_walk {
    kube_t *k;
    int stream;
} list_walk_t;

static int on_item(void *ctx, const char *item, size_t len)
{
    list_walk_t *w = ctx;
    updaters[w->stream](w->k, item, len, 0);
    return 0;
}

/* ---- the streams: list, then watch from the list's resourceVersion ---- */

static void on_stream(void *ctx, int st, ib_kube_chunk_t kind, const char *data, size_t len, long status);

static void start_list(kube_t *k, int st)
{
    char path[512];
    path_of(k, path, sizeof(path), stream_paths[st], NULL, "?labelSelector=" MANAGED);
    /* EndpointSlices carry the Service's labels; select them by that too */
    k->streams[st].watching = 0;
    if (ib_kube_stream(k->api, st, path, 1, on_stream, k) != 0)
        k->streams[st].next_ns = ib_now_ns() + 1000000000ull;
}

static void start_watch(kube_t *k, int st)
{
    char path[512], q[200];
    snprintf(q, sizeof(q), "?labelSelector=%s&watch=true&allowWatchBookmarks=true&timeoutSeconds=300"
                           "&resourceVersion=%s", MANAGED, k->streams[st].rv);
    path_of(k, path, sizeof(path), stream_paths[st], NULL, q);
    k->streams[st].watching = 1;
    if (ib_kube_stream(k->api, st, path, 0, on_stream, k) != 0)
        k->streams[st].next_ns = ib_now_ns() + 1000000000ull;
}

static void on_event(kube_t *k, int st, const char *line, size_t len)
{
    stream_t *s = &k->streams[st];
    char type[16];
    if (str_at(k, line, len, "/type", type, sizeof(type)) != 0)
        return;
    s->events++;
    if (strcmp(type, "ERROR") == 0) { /* 410 Gone: the resourceVersion is too old */
        int64_t code = int_at(k, line, len, "/object/code");
        fprintf(stderr, "ib-clusterd: kubernetes watch %d: error %lld: list again\n", st, (long long)code);
        s->gone = 1;
        return;
    }
    char rv[32];
    if (str_at(k, line, len, "/object/metadata/resourceVersion", rv, sizeof(rv)) == 0 && rv[0] != '\0')
        snprintf(s->rv, sizeof(s->rv), "%s", rv);
    if (strcmp(type, "BOOKMARK") == 0)
        return;
    /* the object, copied out of the parser's buffer for the updaters' parsers */
    ib_span_t obj;
    if (ib_json_pointer_raw(k->json, line, len, "/object", &obj) != 0)
        return;
    ib_buf_t copy = {0};
    ib_buf_append(&copy, obj.ptr, obj.len);
    updaters[st](k, copy.ptr, copy.len, strcmp(type, "DELETED") == 0);
    ib_buf_free(&copy);
}

static void on_stream(void *ctx, int st, ib_kube_chunk_t kind, const char *data, size_t len, long status)
{
    kube_t *k = ctx;
    stream_t *s = &k->streams[st];
    if (kind == IB_KUBE_EVENT) {
        on_event(k, st, data, len);
    } else if (kind == IB_KUBE_LIST) {
        /* a fresh list replaces the cache of its kind */
        if (st == S_PODS)
            k->npods = 0;
        else if (st == S_SLICES)
            k->nslices = 0;
        else if (st == S_DEPLOYS)
            k->ndeploys = 0;
        else
            while (k->nconfigs > 0)
                config_drop(k, &k->configs[0]);
        list_walk_t w = {k, st};
        ib_json_pointer_each(k->json, data, len, "/items", on_item, &w);
        ib_span_t rv;
        if (ib_json_pointer_string(k->json, data, len, "/metadata/resourceVersion", &rv) == 0)
            span_copy(s->rv, sizeof(s->rv), rv);
        s->gone = 0;
        s->backoff_ms = 0;
        s->listed = 1;
    } else if (!s->watching && status == 200) { /* listed: watch from there */
        start_watch(k, st);
    } else if (s->watching && status == 200 && !s->gone) { /* a watch's timeout: go on */
        start_watch(k, st);
    } else { /* the API server is away or refused: list again after a back-off; the cache stays */
        if (status != 0 && status != 200)
            fprintf(stderr, "ib-clusterd: kubernetes %s %s: HTTP %ld: %.*s\n", s->watching ? "watch" : "list",
                    stream_paths[st], status, (int)(len > 300 ? 300 : len), data ? data : "");
        s->backoff_ms = s->backoff_ms ? (s->backoff_ms * 2 > 16000 ? 16000 : s->backoff_ms * 2) : 500;
        s->next_ns = ib_now_ns() + (uint64_t)s->backoff_ms * 1000000ull;
        s->watching = 0;
        s->gone = 0;
    }
}

static void kube_tick(void *self)
{
    kube_t *k = self;
    uint64_t now = ib_now_ns();
    for (int st = 0; st < S__COUNT; st++)
        if (!ib_kube_streaming(k->api, st) && now >= k->streams[st].next_ns)
            start_list(k, st);
    ib_kube_poll(k->api);
}

/* ---- the workload operations ---- */

static void b64(const uint8_t *in, size_t len, ib_buf_t *out)
{
    ib_buf_reserve(out, 4 * ((len + 2) / 3) + 1);
    int n = EVP_EncodeBlock((unsigned char *)out->ptr + out->len, in, (int)len);
    out->len += (size_t)n;
}

static int apply_object(kube_t *k, const char *kind_path, const char *name, const ib_buf_t *body, const char *what,
                        char *uid, size_t uidcap, char *rv, size_t rvcap, char *err, size_t errlen)
{
    char path[512];
    path_of(k, path, sizeof(path), kind_path, name, "?fieldManager=" FIELD_MANAGER "&force=true");
    ib_kube_resp_t r;
    ib_kube_request(k->api, "PATCH", path, "application/apply-patch+yaml", body->ptr, body->len, CALL_MS, &r);
    int code = IB_GRPC_OK;
    if (r.status < 200 || r.status >= 300) {
        char label[160];
        snprintf(label, sizeof(label), "apply %s %s", what, name);
        code = ib_kube_error(&r, k->json, label, err, errlen);
    } else if (uid != NULL) {
        ib_span_t s;
        uid[0] = rv[0] = '\0';
        if (ib_json_pointer_string(k->json, r.body.ptr, r.body.len, "/metadata/uid", &s) == 0)
            span_copy(uid, uidcap, s);
        if (ib_json_pointer_string(k->json, r.body.ptr, r.body.len, "/metadata/resourceVersion", &s) == 0)
            span_copy(rv, rvcap, s);
    }
    ib_buf_free(&r.body);
    return code;
}

static int kube_remove(void *self, const char *id, char *err, size_t errlen);

/* The cache learns this server's own change at once, so that a list made before the watch
 * event arrives does not bring back the old spec, and the next update starts from <rv>. */
static void config_remember(kube_t *k, const char *id, const char *rv, const uint8_t *record, size_t len)
{
    kconfig_t *c = config_of(k, id);
    if (c == NULL && (c = config_add(k, id)) == NULL)
        return;
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return;
    memcpy(copy, record, len);
    free(c->record);
    c->record = copy;
    c->len = len;
    c->deleting = 0;
    if (rv[0] != '\0')
        snprintf(c->rv, sizeof(c->rv), "%s", rv);
}

static int kube_apply(void *self, const ib_workload_spec_t *w, const uint8_t *record, size_t len, int create,
                      char *err, size_t errlen)
{
    kube_t *k = self;
    char name[80];
    snprintf(name, sizeof(name), "ib-%s", w->id);
    if (create) { /* a workload of that name on the cluster already (another server's, or left over) */
        char path[512];
        path_of(k, path, sizeof(path), "/api/v1/namespaces/%s/configmaps", name, NULL);
        ib_kube_resp_t r;
        ib_kube_request(k->api, "GET", path, NULL, NULL, 0, CALL_MS, &r);
        int code = IB_GRPC_OK;
        if (r.status == 200) {
            snprintf(err, errlen, "workload '%s' exists on the cluster (configmap %s/%s)", w->id, k->ns, name);
            code = IB_GRPC_ALREADY_EXISTS;
        } else if (r.status != 404) {
            code = ib_kube_error(&r, k->json, "get configmap", err, errlen);
        }
        ib_buf_free(&r.body);
        if (code != IB_GRPC_OK)
            return code;
    }
    ib_buf_t spec = {0}, body = {0}, conf = {0};
    b64(record, len, &spec);
    ib_buf_append(&spec, "", 1);
    char uid[64] = "", hash[40];
    ib_kube_workload_opts_t o = {
        .namespace_ = k->ns, .image = k->cfg.image, .pull_policy = k->cfg.pull_policy, .engine_port = ENGINE_PORT,
        .manager_port = MANAGER_PORT, .kv_port = KV_PORT, .kv_replay_port = KV_REPLAY_PORT, .drain_s = k->cfg.pod_drain_s, .grace_s = k->cfg.pod_grace_s,
        .progress_deadline_s = k->cfg.rollout_deadline_s,
        .spec_b64 = spec.ptr, .mock_engine = MOCK_IN_IMAGE,
    };
    /* an update names the ConfigMap's resourceVersion this server last saw: if another cluster
     * server changed the workload since, the API server refuses (409) and nothing changes */
    const kconfig_t *seen = create ? NULL : config_of(k, w->id);
    o.resource_version = seen != NULL ? seen->rv : NULL;
    ib_kube_configmap(&body, w, &o);
    char rv[32] = "";
    int code = apply_object(k, "/api/v1/namespaces/%s/configmaps", name, &body, "configmap", uid, sizeof(uid), rv,
                            sizeof(rv), err, errlen);
    if (code == IB_GRPC_ABORTED && seen != NULL)
        snprintf(err + strlen(err), errlen - strlen(err), " (changed by another cluster server: get it and retry)");
    if (code == IB_GRPC_OK) /* our own change, known before its watch event comes */
        config_remember(k, w->id, rv, record, len);
    if (code == IB_GRPC_OK) {
        o.owner_uid = uid;
        body.len = 0;
        ib_kube_service(&body, w, &o);
        code = apply_object(k, "/api/v1/namespaces/%s/services", name, &body, "service", NULL, 0, NULL, 0, err, errlen);
    }
    if (code == IB_GRPC_OK) {
        /* the pods roll when what they read changes: the config file's hash in the template */
        ib_kube_manager_conf(&conf, w, &o);
        snprintf(hash, sizeof(hash), "%016llx", (unsigned long long)XXH3_64bits(conf.ptr, conf.len));
        body.len = 0;
        ib_kube_deployment(&body, w, &o, hash);
        code = apply_object(k, "/apis/apps/v1/namespaces/%s/deployments", name, &body, "deployment", NULL, 0, NULL, 0,
                            err, errlen);
    }
    ib_buf_free(&spec);
    ib_buf_free(&body);
    ib_buf_free(&conf);
    if (code != IB_GRPC_OK && create && uid[0] != '\0') { /* nothing half-created: the ConfigMap and its dependents go */
        char ignored[256];
        kube_remove(k, w->id, ignored, sizeof(ignored));
    }
    return code;
}

static int kube_remove(void *self, const char *id, char *err, size_t errlen)
{
    kube_t *k = self;
    char name[80], path[512];
    snprintf(name, sizeof(name), "ib-%s", id);
    path_of(k, path, sizeof(path), "/api/v1/namespaces/%s/configmaps", name, NULL);
    /* foreground: the ConfigMap goes once the garbage collector deleted its dependents, the
     * Service and the Deployment (and through it the pods, each with its grace period) */
    static const char body[] = "{\"kind\":\"DeleteOptions\",\"apiVersion\":\"v1\",\"propagationPolicy\":\"Foreground\"}";
    ib_kube_resp_t r;
    ib_kube_request(k->api, "DELETE", path, "application/json", body, sizeof(body) - 1, CALL_MS, &r);
    int code = IB_GRPC_OK;
    if (r.status != 200 && r.status != 202 && r.status != 404)
        code = ib_kube_error(&r, k->json, "delete configmap", err, errlen);
    ib_buf_free(&r.body);
    kconfig_t *c = code == IB_GRPC_OK ? config_of(k, id) : NULL;
    if (c != NULL) /* gone for this server now, whatever the watch says until its event comes */
        c->deleting = 1;
    return code;
}

typedef struct list_ctx {
    kube_t *k;
    ib_record_fn found;
    void *ctx;
} list_ctx_t;

static int on_configmap(void *arg, const char *item, size_t len)
{
    list_ctx_t *l = arg;
    kube_t *k = l->k;
    ib_span_t s;
    if (ib_json_pointer_string(k->inner, item, len, "/metadata/deletionTimestamp", &s) == 0)
        return 0; /* on its way out */
    if (ib_json_pointer_string(k->inner, item, len, "/binaryData/spec.pb", &s) != 0)
        return 0;
    size_t n = 0;
    uint8_t *record = b64_decode(s.ptr, s.len, &n);
    if (record != NULL)
        l->found(l->ctx, record, n);
    free(record);
    return 0;
}

static int kube_list(void *self, ib_record_fn found, void *ctx, char *err, size_t errlen)
{
    kube_t *k = self;
    if (k->streams[S_CONFIGS].listed) { /* the watch keeps them */
        for (uint32_t i = 0; i < k->nconfigs; i++)
            if (!k->configs[i].deleting && k->configs[i].record != NULL)
                found(ctx, k->configs[i].record, k->configs[i].len);
        return IB_GRPC_OK;
    }
    char path[512];
    path_of(k, path, sizeof(path), "/api/v1/namespaces/%s/configmaps", NULL, "?labelSelector=" MANAGED);
    ib_kube_resp_t r;
    ib_kube_request(k->api, "GET", path, NULL, NULL, 0, CALL_MS, &r);
    int code = IB_GRPC_OK;
    if (r.status != 200) {
        code = ib_kube_error(&r, k->json, "list configmaps", err, errlen);
    } else {
        list_ctx_t l = {k, found, ctx};
        ib_json_pointer_each(k->json, r.body.ptr, r.body.len, "/items", on_configmap, &l);
    }
    ib_buf_free(&r.body);
    return code;
}

static const ib_kube_endpoint_t *endpoint_of(kube_t *k, const char *workload, const char *pod)
{
    for (uint32_t i = 0; i < k->nslices; i++) {
        if (strcmp(k->slices[i].workload, workload) != 0)
            continue;
        for (int e = 0; e < k->slices[i].n; e++)
            if (strcmp(k->slices[i].eps[e].pod, pod) == 0)
                return &k->slices[i].eps[e];
    }
    return NULL;
}

static void replica_of(kube_t *k, const ib_workload_spec_t *w, const kpod_t *p, ib_replica_status_t *r)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->id, sizeof(r->id), "%s", p->name);
    r->generation = p->generation;
    r->restarts = p->restarts;
    r->retiring = p->generation != w->generation || p->deleting;
    const ib_kube_endpoint_t *ep = endpoint_of(k, w->id, p->name);
    if (ep != NULL)
        snprintf(r->address, sizeof(r->address), "%s:%d", ep->ip, ENGINE_PORT);
    if (ep != NULL && p->kv_events) { /* the pod's own generation says whether its engine publishes */
        snprintf(r->kv_events, sizeof(r->kv_events), "tcp://%s:%d", ep->ip, KV_PORT);
        snprintf(r->kv_events_replay, sizeof(r->kv_events_replay), "tcp://%s:%d", ep->ip, KV_REPLAY_PORT);
    }
    snprintf(r->reason, sizeof(r->reason), "%s", p->trouble);
    if (p->deleting || (ep != NULL && ep->terminating)) {
        r->phase = IB_REPLICA_DRAINING;
        r->draining = 1;
        r->retiring = 1;
    } else if (ep != NULL && ep->ready) {
        r->phase = IB_REPLICA_READY;
    } else if (p->fatal) {
        r->phase = IB_REPLICA_FAILED;
    } else if (p->trouble[0] != '\0') {
        r->phase = IB_REPLICA_RESTARTING;
    } else if (p->running) {
        r->phase = IB_REPLICA_STARTING;
    } else {
        r->phase = IB_REPLICA_PENDING;
    }
}

static void kube_view(void *self, const ib_workload_spec_t *w, ib_workload_view_t *v)
{
    kube_t *k = self;
    memset(v, 0, sizeof(*v));
    uint32_t cap = sizeof(v->replicas) / sizeof(v->replicas[0]), older = 0, failed = 0;
    const char *trouble = "";
    for (int pass = 0; pass < 2; pass++) /* the current generation first */
        for (uint32_t i = 0; i < k->npods && v->n < cap; i++) {
            const kpod_t *p = &k->pods[i];
            int current = p->generation == w->generation && !p->deleting;
            if (strcmp(p->workload, w->id) != 0 || current != (pass == 0))
                continue;
            ib_replica_status_t *r = &v->replicas[v->n++];
            replica_of(k, w, p, r);
            if (current && r->phase == IB_REPLICA_READY)
                v->ready++;
            older += !current;
            if (current && (r->phase == IB_REPLICA_FAILED || r->phase == IB_REPLICA_RESTARTING)) {
                failed++;
                if (trouble[0] == '\0')
                    trouble = p->trouble;
            }
        }
    const kdeploy_t *d = NULL;
    for (uint32_t i = 0; i < k->ndeploys; i++)
        if (strcmp(k->deploys[i].workload, w->id) == 0)
            d = &k->deploys[i];
    if (d != NULL && d->deadline_exceeded) {
        v->phase = IB_WORKLOAD_DEGRADED;
        snprintf(v->message, sizeof(v->message), "rollout stalled: %.150s%s%.80s", d->message, trouble[0] ? "; " : "",
                 trouble);
    } else if (failed > 0) {
        v->phase = IB_WORKLOAD_DEGRADED;
        snprintf(v->message, sizeof(v->message), "%u of %u replicas ready; %.200s", v->ready, w->replicas, trouble);
    } else if (older > 0) {
        v->phase = IB_WORKLOAD_ROLLING;
        snprintf(v->message, sizeof(v->message), "generation %llu: %u of %u replicas ready; %u older replicas "
                 "serve or drain until then", (unsigned long long)w->generation, v->ready, w->replicas, older);
    } else if (v->ready == w->replicas && (d == NULL || d->observed >= d->generation)) {
        v->phase = IB_WORKLOAD_READY;
    } else {
        v->phase = IB_WORKLOAD_PROGRESSING;
        snprintf(v->message, sizeof(v->message), "%u of %u replicas ready%s", v->ready, w->replicas,
                 d == NULL ? " (the deployment is not seen yet)" : "");
    }
}

static void kube_metrics(void *self, ib_buf_t *b)
{
    kube_t *k = self;
    ib_buf_printf(b, "# HELP ib_cluster_kube_requests_total Requests to the Kubernetes API server (calls, lists and "
                     "watches started).\n# TYPE ib_cluster_kube_requests_total counter\n"
                     "ib_cluster_kube_requests_total %llu\n", (unsigned long long)ib_kube_requests(k->api));
    static const char *const kinds[S__COUNT] = {"pods", "endpointslices", "deployments", "configmaps"};
    ib_buf_printf(b, "# HELP ib_cluster_kube_watch_events_total Watch events received, by kind of object.\n"
                     "# TYPE ib_cluster_kube_watch_events_total counter\n");
    for (int st = 0; st < S__COUNT; st++)
        ib_buf_printf(b, "ib_cluster_kube_watch_events_total{kind=\"%s\"} %llu\n", kinds[st],
                      (unsigned long long)k->streams[st].events);
    ib_buf_printf(b, "# HELP ib_cluster_kube_watching 1 when the watch of that kind runs (0: listing again, or "
                     "waiting for the API server).\n# TYPE ib_cluster_kube_watching gauge\n");
    for (int st = 0; st < S__COUNT; st++)
        ib_buf_printf(b, "ib_cluster_kube_watching{kind=\"%s\"} %d\n", kinds[st],
                      k->streams[st].watching && ib_kube_streaming(k->api, st));
}

static uint64_t kube_version(void *self)
{
    return ((kube_t *)self)->records_version;
}

static int kube_validate(void *self, const ib_workload_spec_t *w, char *err, size_t errlen)
{
    (void)self;
    char cmd[1024];
    if (ib_kube_validate(w, err, errlen) != 0)
        return -1;
    return ib_engine_command(w, MOCK_IN_IMAGE, cmd, sizeof(cmd), err, errlen);
}

static void kube_destroy(ib_driver_t *d)
{
    if (d == NULL)
        return;
    kube_t *k = d->self;
    ib_kube_client_free(k->api);
    ib_json_parser_free(k->json);
    ib_json_parser_free(k->inner);
    ib_json_parser_free(k->eps);
    free(k->pods);
    free(k->slices);
    for (uint32_t i = 0; i < k->nconfigs; i++)
        free(k->configs[i].record);
    free(k);
}

ib_driver_t *ib_driver_kubernetes_new(const ib_cluster_config_t *cfg)
{
    ib_kube_conn_t conn;
    char err[512];
    int rc = cfg->kubeconfig != NULL ? ib_kube_conn_from_kubeconfig(cfg->kubeconfig, &conn, err, sizeof(err))
                                     : ib_kube_conn_in_cluster(&conn, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "ib-clusterd: kubernetes driver: %s\n", err);
        return NULL;
    }
    kube_t *k = calloc(1, sizeof(*k));
    if (k == NULL) {
        ib_kube_conn_free(&conn);
        return NULL;
    }
    k->cfg = *cfg;
    snprintf(k->ns, sizeof(k->ns), "%s",
             cfg->namespace_ ? cfg->namespace_ : conn.namespace_[0] ? conn.namespace_ : "default");
    if (k->cfg.image == NULL)
        k->cfg.image = "ibrain.local/ib-manager:latest";
    if (k->cfg.pod_drain_s == 0)
        k->cfg.pod_drain_s = 3;
    if (k->cfg.pod_grace_s == 0)
        k->cfg.pod_grace_s = 30;
    k->api = ib_kube_client_new(&conn);
    ib_kube_conn_free(&conn);
    k->json = ib_json_parser_new(64u << 20);
    k->inner = ib_json_parser_new(8u << 20);
    k->eps = ib_json_parser_new(1u << 20);
    k->pods = calloc(MAX_PODS, sizeof(*k->pods));
    k->slices = calloc(MAX_SLICES, sizeof(*k->slices));
    if (k->api == NULL || k->json == NULL || k->inner == NULL || k->eps == NULL || k->pods == NULL || k->slices == NULL) {
        k->ops.self = k;
        kube_destroy(&k->ops);
        return NULL;
    }
    k->wops = (ib_workload_ops_t){
        .apply = kube_apply, .remove = kube_remove, .view = kube_view, .list = kube_list, .version = kube_version};
    k->ops = (ib_driver_t){
        .self = k,
        .name = "kubernetes",
        .workloads = &k->wops,
        .validate = kube_validate,
        .tick = kube_tick,
        .metrics = kube_metrics,
        .destroy = kube_destroy,
    };
    fprintf(stderr, "ib-clusterd: kubernetes driver: namespace %s, image %s\n", k->ns, k->cfg.image);
    return &k->ops;
}
