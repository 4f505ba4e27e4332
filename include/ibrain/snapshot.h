/*
 * The routing snapshot (controlplane/proto/snapshot.proto) in C: which workloads exist,
 * how to route to each, and which replicas serve them. The control plane writes it to
 * Redis; ibrain's sync thread reads it; ib-snapshot converts it from and to JSON.
 *
 * Redis keys (docs/api.md, "Redis contract"):
 *   ib:snapshot              the encoded Snapshot message
 *   ib:snapshot:changed      pub/sub channel; the message is the new version
 */
#ifndef IBRAIN_SNAPSHOT_H
#define IBRAIN_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/buf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

#define IB_SNAPSHOT_KEY "ib:snapshot"
#define IB_SNAPSHOT_CHANNEL "ib:snapshot:changed"

typedef struct ib_snap_workload {
    char id[64];
    char model[128];
    char chat_template[16]; /* chatml | qwen3 | llama3 | plain ("" = chatml) */
    char tokenizer[256];    /* tokenizer.json path, "" = byte blocks */
    char policy[24];        /* "" = affinity */
    uint32_t block_size;    /* tokens (0 = 16) */
    uint32_t context_length;
    uint32_t cache_ttl_ms;
    uint32_t cache_blocks;  /* 0 = 65536 */
} ib_snap_workload_t;

typedef struct ib_snap_replica {
    char id[64];
    char workload[64];
    char address[64];       /* IPV4:PORT */
    int draining;
    uint64_t generation;
    char kv_events[128];    /* its engine's KV events endpoint to connect to, "" for none */
    char kv_events_replay[128];
    char kv_events_topic[64];
} ib_snap_replica_t;

typedef struct ib_snapshot {
    uint64_t version;
    int64_t written_unix_ms;
    int64_t written_unix_us;    /* the same instant in microseconds, 0 when unknown */
    ib_snap_workload_t *workloads;
    uint32_t nworkloads;
    ib_snap_replica_t *replicas;
    uint32_t nreplicas;
} ib_snapshot_t;

/* ---- functions ---- */

/**
 * Decodes an encoded Snapshot and checks it: at most IB_MAX_WORKLOADS workloads and
 * IB_MAX_REPLICAS replicas (include/ibrain/limits.h), ids unique and non-empty, every replica's
 * workload exists, addresses are IPV4:PORT, policy and template names known, no field too
 * long. Returns 0, or -1 with a message in <err> (nothing allocated then).
 */
int ib_snapshot_decode(const void *buf, size_t len, ib_snapshot_t *out, char *err, size_t errlen);

/** Encodes <s> (protobuf-c). Returns 0, or -1 when out of memory. */
int ib_snapshot_encode(const ib_snapshot_t *s, ib_buf_t *out);

/** Same checks as decode, on a snapshot built in memory (e.g. from JSON). */
int ib_snapshot_check(const ib_snapshot_t *s, char *err, size_t errlen);

/**
 * Reads a snapshot from JSON (simdjson shim):
 *   {"version": 3, "workloads": [{"id":..., "model":..., "chat_template":..., "tokenizer":...,
 *    "block_size":..., "context_length":..., "policy":..., "cache_ttl_ms":..., "cache_blocks":...}],
 *    "replicas": [{"id":..., "workload":..., "address":..., "state": "ready"|"draining",
 *    "generation":...}]}
 * Returns 0, or -1 with a message naming the field in <err>.
 */
int ib_snapshot_from_json(const char *json, size_t len, ib_snapshot_t *out, char *err, size_t errlen);

/** Appends <s> as JSON (the format above, plus written_unix_ms). 0, or -1 on OOM. */
int ib_snapshot_to_json(const ib_snapshot_t *s, ib_buf_t *out);

void ib_snapshot_free(ib_snapshot_t *s);

#ifdef __cplusplus
}
#endif
#endif
