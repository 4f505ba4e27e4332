/*
 * Workload manager (ib-manager): one per replica. It brings a model engine up and keeps it
 * healthy, in stages:
 *   compile   the weights path exists and is readable; its size and an XXH3-128 checksum
 *             of its contents (a directory: every regular file, in name order) are recorded.
 *             A failure is reported with its reason and nothing is started.
 *   execute   the engine command is started (its own process group, log in the state
 *             directory) with {port}, {model}, {weights}, {replica}, {host} and the KV
 *             events ports {kv_port} and {kv_replay_port} substituted (/status announces
 *             those as kv_events and kv_events_replay);
 *   ready     once the engine answers GET /health with 200;
 *   running   health is checked every 500 ms; an engine that exits or fails 3 checks in a
 *             row is restarted with back-off (0.5 s doubling to 10 s);
 *   drain     on SIGTERM: the engine gets SIGTERM (it finishes its in-flight requests),
 *             then SIGKILL after the drain deadline; the manager exits 0. A manager that
 *             dies any other way takes its engine with it (PR_SET_PDEATHSIG: SIGTERM).
 * Its state is served on its own HTTP port: GET /status (JSON), /health, /metrics. The
 * cluster server reads /status (issue 6).
 */
#ifndef IBRAIN_MANAGER_H
#define IBRAIN_MANAGER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef enum ib_mgr_phase {
    IB_MGR_COMPILING = 0,
    IB_MGR_STARTING,   /* engine started, not healthy yet */
    IB_MGR_READY,
    IB_MGR_RESTARTING, /* engine died or unhealthy: waiting out the back-off */
    IB_MGR_FAILED,     /* compile failed: nothing runs */
    IB_MGR_DRAINING,
    IB_MGR_STOPPED,
    IB_MGR__COUNT
} ib_mgr_phase_t;

/** What compile learned of the weights. */
typedef struct ib_weights_info {
    uint64_t bytes;
    uint32_t files;
    char checksum[40]; /* XXH3-128, hex */
} ib_weights_info_t;

typedef struct ib_manager_config {
    const char *listen;          /* status HTTP, IPV4:PORT (port 0: free) */
    const char *port_file;
    const char *workload;        /* ids, for the status */
    const char *replica;
    const char *model;
    const char *weights;         /* path (file or directory) */
    const char *engine_cmd;      /* argv, split on spaces; {port} {model} {weights} {replica} {host}
                                  * {kv_port} {kv_replay_port} */
    const char *engine_host;     /* {host}: the address the engine listens on (NULL: 127.0.0.1) */
    const char *state_dir;       /* engine log; default the current directory */
    uint32_t engine_port;        /* 0: a free loopback port */
    uint32_t kv_port;            /* {kv_port}, the engine's KV events PUB (0: a free port) */
    uint32_t kv_replay_port;     /* {kv_replay_port}, its replay ROUTER (0: a free port) */
    uint32_t ready_timeout_ms;   /* engine start to healthy, else restart (default 60000) */
    uint32_t drain_timeout_ms;   /* SIGTERM to SIGKILL of the engine (default 10000) */
} ib_manager_config_t;

/* ---- functions ---- */

const char *ib_mgr_phase_name(ib_mgr_phase_t p);

/**
 * The compile stage: checks <path> and fills <out>. Returns 0, or -1 with the reason in
 * <err> ("weights path /x: No such file or directory", "... is not readable", ...).
 */
int ib_weights_compile(const char *path, ib_weights_info_t *out, char *err, size_t errlen);

/** Runs the manager until SIGTERM/SIGINT. Returns the exit code. */
int ib_manager_run(const ib_manager_config_t *cfg);

#ifdef __cplusplus
}
#endif
#endif
