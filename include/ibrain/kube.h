/*
 * Talking to a Kubernetes API server, for ib-clusterd's kubernetes driver
 * (controlplane/cluster/driver_kubernetes.c).
 *
 *   kube_config.c   where the API server is and who we are: a kubeconfig file (bearer token
 *                   or client certificate, read with libyaml) or the pod's service account
 *                   (token re-read as it rotates, CA bundle, KUBERNETES_SERVICE_HOST/_PORT).
 *   kube_http.c     requests with libcurl: blocking calls (server-side apply, delete, list)
 *                   and watch streams on one curl multi handle, driven from the driver's tick
 *                   without blocking; each watch event (one JSON line) goes to a callback.
 *   kube_objects.c  what a workload becomes (ConfigMap, headless Service, Deployment, as
 *                   server-side apply bodies) and what the driver reads back from the API's
 *                   objects (EndpointSlice endpoints, Deployment rollout, Pod troubles).
 *
 * The API server's HTTP statuses become gRPC status codes here (ib_kube_grpc_code), so the
 * cluster server's clients see PERMISSION_DENIED, ALREADY_EXISTS, INVALID_ARGUMENT or
 * UNAVAILABLE with the API server's own message.
 */
#ifndef IBRAIN_KUBE_H
#define IBRAIN_KUBE_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/buf.h"
#include "ibrain/cluster.h"
#include "ibrain/ondemand_c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

/* gRPC status codes (grpc/status.h), as the driver returns them to the server. */
enum {
    IB_GRPC_OK = 0,
    IB_GRPC_INVALID_ARGUMENT = 3,
    IB_GRPC_DEADLINE_EXCEEDED = 4,
    IB_GRPC_NOT_FOUND = 5,
    IB_GRPC_ALREADY_EXISTS = 6,
    IB_GRPC_PERMISSION_DENIED = 7,
    IB_GRPC_RESOURCE_EXHAUSTED = 8,
    IB_GRPC_FAILED_PRECONDITION = 9,
    IB_GRPC_ABORTED = 10,
    IB_GRPC_INTERNAL = 13,
    IB_GRPC_UNAVAILABLE = 14,
    IB_GRPC_UNAUTHENTICATED = 16,
};

/** Where the API server is and how we authenticate. PEM data is kept in memory; a token
 * file is re-read before each request (service-account tokens rotate). */
typedef struct ib_kube_conn {
    char server[256];         /* https://HOST:PORT, no trailing slash */
    char *ca_pem;             /* NULL: the system's CAs */
    char *cert_pem, *key_pem; /* client certificate, or NULL */
    char token[4096];         /* bearer token, or "" */
    char token_file[512];     /* re-read when set */
    char namespace_[64];      /* the kubeconfig context's or the pod's namespace, or "" */
    int insecure;             /* insecure-skip-tls-verify in the kubeconfig */
} ib_kube_conn_t;

typedef struct ib_kube_client ib_kube_client_t; /* opaque: libcurl handles */

/** One answer of the API server. */
typedef struct ib_kube_resp {
    long status;   /* HTTP status, or 0 when the server could not be reached */
    ib_buf_t body;
    char error[400]; /* curl's message when status is 0 */
} ib_kube_resp_t;

/** What a stream delivers: a watch's event line ({"type":"ADDED|MODIFIED|DELETED|BOOKMARK|
 * ERROR","object":{...}}), a list's whole body, or the end of either (with the HTTP status,
 * 0 when the server was not reached or the stream broke). */
typedef enum ib_kube_chunk { IB_KUBE_EVENT, IB_KUBE_LIST, IB_KUBE_END } ib_kube_chunk_t;
typedef void (*ib_kube_stream_fn)(void *ctx, int stream, ib_kube_chunk_t kind, const char *data, size_t len,
                                  long status);

/** One endpoint of an EndpointSlice, as the driver keeps it. */
typedef struct ib_kube_endpoint {
    char pod[80];       /* targetRef.name */
    char ip[48];
    int ready, serving, terminating;
} ib_kube_endpoint_t;

/** The spec a pod of a workload runs: what the driver writes, what tests check. */
typedef struct ib_kube_workload_opts {
    const char *namespace_;
    const char *image;         /* the manager + engine image */
    const char *pull_policy;   /* IfNotPresent (default), Never, Always */
    uint32_t engine_port;      /* container port of the engine (8000) */
    uint32_t manager_port;     /* container port of the manager's status server (8081) */
    uint32_t kv_port;          /* container port of the engine's KV events PUB (5557), with kv_events */
    uint32_t kv_replay_port;   /* and of its replay ROUTER (5558) */
    uint32_t drain_s;          /* preStop sleep: routers see the pod terminating first */
    uint32_t grace_s;          /* terminationGracePeriodSeconds */
    uint32_t progress_deadline_s; /* a rollout not progressing this long is failed (0: 600) */
    const char *spec_b64;      /* the server's record of the workload (binaryData spec.pb) */
    const char *owner_uid;     /* the ConfigMap's uid: the Service and Deployment are its dependents */
    const char *resource_version; /* the ConfigMap's, when updating: a precondition (or NULL) */
    const char *mock_engine;   /* engine "mock" in the image: the command, placeholders kept */
} ib_kube_workload_opts_t;

/* ---- functions: config (kube_config.c) ---- */

/** Reads a kubeconfig (its current context). 0, or -1 with <err>. Frees with ib_kube_conn_free. */
int ib_kube_conn_from_kubeconfig(const char *path, ib_kube_conn_t *c, char *err, size_t errlen);
/** The pod's service account (KUBERNETES_SERVICE_HOST/_PORT, /var/run/secrets/...). 0, or -1 with <err>. */
int ib_kube_conn_in_cluster(ib_kube_conn_t *c, char *err, size_t errlen);
void ib_kube_conn_free(ib_kube_conn_t *c);

/* ---- functions: requests (kube_http.c) ---- */

ib_kube_client_t *ib_kube_client_new(const ib_kube_conn_t *conn);
void ib_kube_client_free(ib_kube_client_t *k);
/** A blocking request (timeout <timeout_ms>); <ctype> with a body. Fills <r> (free r->body). */
void ib_kube_request(ib_kube_client_t *k, const char *method, const char *path, const char *ctype, const char *body,
                     size_t len, long timeout_ms, ib_kube_resp_t *r);
/** Starts stream number <stream> (0..7) on <path>: a list (<list> set: the whole body is
 * delivered once, at the end) or a watch (each line as it comes). A running stream of that
 * number is replaced. Everything reaches <fn> from ib_kube_poll, IB_KUBE_END last. */
int ib_kube_stream(ib_kube_client_t *k, int stream, const char *path, int list, ib_kube_stream_fn fn, void *ctx);
/** Whether stream <stream> runs. */
int ib_kube_streaming(const ib_kube_client_t *k, int stream);
/** Moves the streams on without blocking. */
void ib_kube_poll(ib_kube_client_t *k);
/** Requests made since start (blocking and watches): for the requests-per-minute figure. */
uint64_t ib_kube_requests(const ib_kube_client_t *k);

/** The gRPC status code for an API server answer (0 status: unreachable). */
int ib_kube_grpc_code(long http_status);
/** "METHOD PATH: HTTP N: the API's message" into <err>, and the gRPC code. */
int ib_kube_error(const ib_kube_resp_t *r, ib_json_parser_t *json, const char *what, char *err, size_t errlen);

/* ---- functions: objects (kube_objects.c) ---- */

/** Appends the server-side apply body of the workload's ConfigMap / Service / Deployment. */
void ib_kube_configmap(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o);
void ib_kube_service(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o);
/** <config_hash>: of the ConfigMap's content, in the pod template so that a change rolls. */
void ib_kube_deployment(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o,
                        const char *config_hash);
/** The manager's config file (the ConfigMap's manager.conf): "flag value" lines. */
void ib_kube_manager_conf(ib_buf_t *b, const ib_workload_spec_t *w, const ib_kube_workload_opts_t *o);
/** Checks what the kubernetes driver needs of a spec (the weights volume). 0, or -1 + err. */
int ib_kube_validate(const ib_workload_spec_t *w, char *err, size_t errlen);

/** The endpoints of an EndpointSlice object (JSON, not in a parser's buffer) into <out> (at
 * most <cap>), read with <p> and <inner>; the slice's workload label into <workload>.
 * Returns the count, or -1 when it is not an EndpointSlice. */
int ib_kube_slice_endpoints(ib_json_parser_t *p, ib_json_parser_t *inner, const char *obj, size_t len, char *workload,
                            size_t wcap, ib_kube_endpoint_t *out, int cap);

#ifdef __cplusplus
}
#endif
#endif
