/*
 * Cluster server (ib-clusterd): the workload lifecycle behind a gRPC service
 * (controlplane/proto/cluster.proto), and the driver interface that runs replicas.
 *
 * The local driver (the embedded default) runs one ib-manager per replica as a child
 * process, with its port file and logs in the state directory, restarts a manager that
 * exits, and reads each manager's GET /status for the replica's phase and address.
 * Managers run in their own process groups, so they outlive a crashed cluster server;
 * the workload specs are kept in STATE_DIR/workloads/ID.spec, and a restarted cluster
 * server adopts the managers that still answer on their port files.
 * Drivers are found by name in ib_drivers[] (controlplane/cluster/driver.c; ib-clusterd
 * --driver NAME, "local" by default). The server only calls through a driver's ops table,
 * so a second driver (kubernetes) is a new driver_NAME.c, one row in ib_drivers[] and
 * nothing in the server.
 */
#ifndef IBRAIN_CLUSTER_H
#define IBRAIN_CLUSTER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ibrain/buf.h"
#include "ibrain/limits.h"
#include "ibrain/phase.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

/* IB_MAX_WORKLOADS, IB_MAX_WORKLOAD_REPLICAS (per workload) and IB_MAX_REPLICAS (every
 * workload together, what a routing snapshot holds): include/ibrain/limits.h */

/* A workload id: what the REST paths, ibctl and the cluster server accept. */
#define IB_WORKLOAD_ID_MAX 48
#define IB_WORKLOAD_ID_RULE "1-48 characters of [a-z0-9-]"

typedef struct ib_workload_spec {
    char id[64];
    char model[128];
    uint32_t replicas;
    char weights[256];
    char engine_cmd[512];
    char chat_template[16];
    char tokenizer[256];
    uint32_t block_size;
    uint32_t context_length;
    char policy[24];
    uint64_t generation;
    char engine[16];        /* "" or "mock" | "vllm" | "sglang" | "custom" (engine_cmd) */
    char engine_args[512];  /* appended to the engine's command line */
    char version[64];       /* the user's label of what runs */
    char cpu[16];           /* per replica, a Kubernetes quantity ("4", "500m"), "" = none asked */
    char memory[16];        /* per replica ("16Gi"), "" = none asked */
    uint32_t gpus;          /* per replica (nvidia.com/gpu) */
    uint32_t kv_events;     /* 1: the engines publish KV-cache events, the replicas announce them */
} ib_workload_spec_t;

typedef struct ib_replica_status {
    char id[80];
    ib_replica_phase_t phase; /* the manager's phase, or pending before it reports */
    char reason[256];
    char address[64];    /* the engine's IPV4:PORT once ready */
    uint64_t generation;
    uint32_t restarts;   /* manager restarts by the driver + engine restarts by the manager */
    int retiring;        /* set by the cluster server: an older generation on its way out */
    int draining;        /* retiring and announced as draining */
    char kv_events[96];  /* the engine's KV events endpoint once ready ("tcp://IPV4:PORT"), "" = none */
    char kv_events_replay[96];
} ib_replica_status_t;

/** What a workload driver sees of one workload: its replicas (current generation first)
 * and the platform's account of the rollout. */
typedef struct ib_workload_view {
    ib_workload_phase_t phase;
    char message[256];
    uint32_t ready;         /* ready replicas of the current generation */
    uint32_t n;
    ib_replica_status_t replicas[3 * IB_MAX_WORKLOAD_REPLICAS];
} ib_workload_view_t;

/** Called by a workload driver's list operation for each workload it finds. */
typedef void (*ib_record_fn)(void *ctx, const uint8_t *record, size_t len);

/**
 * The operations of a driver that runs whole workloads, where the platform does the
 * rollouts (kubernetes: a Deployment per workload). Every one returns 0, or a gRPC status
 * code (grpc/status.h numbers) with <err> saying why in the platform's words.
 */
typedef struct ib_workload_ops {
    /** Creates (<create> set: ALREADY_EXISTS when the workload is there) or updates every
     * object of <w>. <record> (the cluster server's packed WorkloadSpec) is kept with the
     * workload on the platform and handed back by list: the server keeps no state of its own. */
    int (*apply)(void *self, const ib_workload_spec_t *w, const uint8_t *record, size_t len, int create, char *err,
                 size_t errlen);
    /** Takes the workload out of service and deletes its objects; its pods drain. */
    int (*remove)(void *self, const char *id, char *err, size_t errlen);
    /** What the driver last saw of <w> (from its watches: no request to the platform). */
    void (*view)(void *self, const ib_workload_spec_t *w, ib_workload_view_t *out);
    /** Every workload the platform holds for this server, through <found>. */
    int (*list)(void *self, ib_record_fn found, void *ctx, char *err, size_t errlen);
    /** A number that changes when the platform's workloads change (another cluster server's
     * doing, or this one's): the server then lists them again. */
    uint64_t (*version)(void *self);
} ib_workload_ops_t;

/**
 * A driver. Two kinds, told apart by <workloads>:
 *  - replica drivers (local; workloads NULL): start, adopt, stop and status run one replica
 *    each, and the cluster server does rolling updates itself (new generation beside the
 *    old, then the old drained and stopped);
 *  - workload drivers (kubernetes; workloads set): the platform rolls workloads out, the
 *    server hands whole specs to <workloads> and reads views back; start, adopt, stop and
 *    status are NULL.
 * validate, tick and destroy are always set. Filled with designated initializers.
 */
typedef struct ib_driver {
    void *self;
    const char *name;       /* its name in ib_drivers[] ("local") */
    const ib_workload_ops_t *workloads;
    /** Checks what only the driver can (the weights path exists where replicas run).
     * 0, or -1 with <err> = "field: reason". */
    int (*validate)(void *self, const ib_workload_spec_t *w, char *err, size_t errlen);
    int (*start)(void *self, const ib_workload_spec_t *w, uint32_t index, char *err, size_t errlen);
    /** After a cluster-server restart: take over the replica's manager if it still runs,
     * else start it. Returns 1 when adopted, 0 when started, -1 on failure. */
    int (*adopt)(void *self, const ib_workload_spec_t *w, uint32_t index, char *err, size_t errlen);
    void (*stop)(void *self, const char *replica_id);
    void (*status)(void *self, const char *replica_id, ib_replica_status_t *out);
    void (*tick)(void *self); /* reap and restart; called after each gRPC event, at least every 100 ms */
    /** Appends the driver's own Prometheus samples (with HELP and TYPE) to <out>; NULL: none. */
    void (*metrics)(void *self, ib_buf_t *out);
    /** Frees the driver (after ib_cluster_run returned: every replica stopped). */
    void (*destroy)(struct ib_driver *d);
} ib_driver_t;

struct ib_cluster_config;

/** A driver in the registry: its name and constructor (NULL when out of memory or when
 * the driver cannot run here, with a message on stderr). */
typedef struct ib_driver_entry {
    const char *name;
    const char *summary;    /* one line for --help */
    ib_driver_t *(*create)(const struct ib_cluster_config *cfg);
} ib_driver_entry_t;

typedef struct ib_cluster_config {
    const char *driver;     /* a name in ib_drivers[] (NULL: "local") */
    const char *listen;     /* gRPC, IPV4:PORT (port 0: free) */
    const char *port_file;
    const char *state_dir;  /* managers' port files and logs */
    const char *manager;    /* ib-manager binary (default: beside this one) */
    const char *engine;     /* the mock engine's command, placeholders included (default: ib-mock-engine
                             * from this build, --listen 127.0.0.1:{port} --model {model} --id {replica}) */
    const char *http_listen;/* /metrics and /health, IPV4:PORT (NULL: none) */
    const char *http_port_file;
    uint32_t drain_grace_ms;/* retiring replica announced as draining -> stopped (default 1500) */
    /* the kubernetes driver */
    const char *kubeconfig; /* NULL: in-cluster (the pod's service account) */
    const char *namespace_; /* NULL: the kubeconfig context's or the pod's, else "default" */
    const char *image;      /* the workload pods' image (ib-manager + engines) */
    const char *pull_policy;/* NULL: IfNotPresent */
    uint32_t pod_drain_s;   /* preStop: the pod shows as terminating this long before SIGTERM (default 3) */
    uint32_t pod_grace_s;   /* terminationGracePeriodSeconds (default 30) */
    uint32_t rollout_deadline_s; /* progressDeadlineSeconds: a stalled rollout is degraded after it (default 600) */
} ib_cluster_config_t;

/* ---- functions ---- */

/** 1 when <s>[0..n) is a workload id (IB_WORKLOAD_ID_RULE), else 0. */
int ib_workload_id_valid(const char *s, size_t n);
/** 1 when <s> is a Kubernetes quantity as a workload's cpu or memory takes it: digits, an
 * optional fraction, an optional suffix (m k M G T P E Ki Mi Gi Ti Pi Ei); else 0. */
int ib_quantity_valid(const char *s);

/**
 * The engine command line a replica of <w> runs ({port} {model} {weights} {replica} {host},
 * and with kv_events {kv_port} {kv_replay_port}, left for the manager): the named engine's
 * command with the workload's settings (kv_events: vLLM's --kv-events-config), then
 * engine_args. <mock> is the mock engine's command (with the placeholders). 0, or -1 with
 * <err> = "field: reason".
 */
int ib_engine_command(const ib_workload_spec_t *w, const char *mock, char *out, size_t cap, char *err, size_t errlen);

/** Every driver, ending with a row whose name is NULL. The first one is the default. */
extern const ib_driver_entry_t ib_drivers[];

/** The driver named <name> (NULL: the default), or NULL when there is none of that name. */
const ib_driver_entry_t *ib_driver_find(const char *name);

/** The local driver. NULL when out of memory. Freed by its destroy operation. */
ib_driver_t *ib_driver_local_new(const ib_cluster_config_t *cfg);
/** The kubernetes driver (controlplane/cluster/driver_kubernetes.c). NULL with a message on
 * stderr when the API server's config cannot be read. */
ib_driver_t *ib_driver_kubernetes_new(const ib_cluster_config_t *cfg);

/** Runs the gRPC server until SIGTERM/SIGINT; stops every replica on the way out. */
int ib_cluster_run(const ib_cluster_config_t *cfg, ib_driver_t *driver);

#ifdef __cplusplus
}
#endif
#endif
