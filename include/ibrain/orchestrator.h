/*
 * The workload orchestrator (ib-orchestrator): the REST API users deploy and update
 * models with (libh2o), JWT bearer auth, and the leader's loop that turns the cluster
 * server's ready endpoints into the routing snapshot in Redis.
 *
 * Stateless: every request is answered from the cluster server, so any number of
 * orchestrators may run. One of them is the leader, through the lease IB_LEADER_KEY in
 * Redis (SET NX PX, renewed at a third of its length); only the leader writes snapshots,
 * and only while it holds the lease (the write checks it in the same Lua script).
 */
#ifndef IBRAIN_ORCHESTRATOR_H
#define IBRAIN_ORCHESTRATOR_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/cluster.h"
#include "ibrain/jwt.h"
#include "ibrain/store.h"
#include "ibrain/ondemand_c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

#define IB_LEADER_KEY "ib:leader"

typedef struct ib_orch_config {
    const char *listen;          /* REST, IPV4:PORT (port 0: free) */
    const char *port_file;
    const char *cluster;         /* the cluster server, HOST:PORT (a name is resolved by gRPC) */
    const char *redis;           /* HOST:PORT; NULL (and no sentinels): no leader loop (REST only) */
    const char *sentinels[IB_REDIS_MAX_SENTINELS]; /* HOST:PORT each: the master is asked of them */
    uint32_t nsentinels;
    const char *redis_master;    /* the sentinels' master name */
    const char *instance_id;     /* lease owner name (default host-pid) */
    uint32_t lease_ms;           /* default 3000 */
    uint32_t sync_ms;            /* leader's poll of the cluster server (default 200) */
    ib_jwt_config_t jwt;         /* no key at all: auth off (--no-auth, loopback only) */
    int auth_off;
    uint32_t cache_ttl_ms;       /* written into every workload of the snapshot */
    uint32_t cache_blocks;
} ib_orch_config_t;

/* Fields of a workload body (POST, PATCH), as bits of a presence mask. */
enum {
    IB_WF_ID = 1u << 0,
    IB_WF_MODEL = 1u << 1,
    IB_WF_REPLICAS = 1u << 2,
    IB_WF_WEIGHTS = 1u << 3,
    IB_WF_ENGINE = 1u << 4,
    IB_WF_ENGINE_ARGS = 1u << 5,
    IB_WF_ENGINE_CMD = 1u << 6,
    IB_WF_VERSION = 1u << 7,
    IB_WF_TEMPLATE = 1u << 8,
    IB_WF_TOKENIZER = 1u << 9,
    IB_WF_BLOCK = 1u << 10,
    IB_WF_CONTEXT = 1u << 11,
    IB_WF_POLICY = 1u << 12,
    IB_WF_CPU = 1u << 13,
    IB_WF_MEMORY = 1u << 14,
    IB_WF_GPUS = 1u << 15,
    IB_WF_KV_EVENTS = 1u << 16,
};

typedef struct ib_field_error {
    char field[32];
    char message[200];
} ib_field_error_t;

/* ---- functions ---- */

/**
 * Reads a workload body (a JSON object of the fields above) over <spec>: fields present
 * replace those in <spec>; *present gets their bits. Unknown fields, wrong types and
 * out-of-range numbers are refused. Returns 0, or -1 with <e> naming the field ("" when
 * the body is not a JSON object). <capacity> as for ib_oai_parse.
 */
int ib_workload_json_read(ib_json_parser_t *p, const char *body, size_t len, size_t capacity, ib_workload_spec_t *spec,
                          uint32_t *present, ib_field_error_t *e);

/** Runs the orchestrator until SIGTERM/SIGINT. */
int ib_orchestrator_run(const ib_orch_config_t *cfg);

#ifdef __cplusplus
}
#endif
#endif
