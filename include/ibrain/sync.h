/*
 * Snapshot sync: a thread that follows the routing snapshot in Redis (hiredis) and hands
 * every newer version to a callback, never touching the request path.
 *
 *  - On start and after every reconnect: GET ib:snapshot.
 *  - SUBSCRIBE ib:snapshot:changed on a second connection: a message triggers a GET.
 *  - Every reread_ms, a GET anyway (a safety net for lost messages), which also tells
 *    whether Redis is still there.
 *  - Redis unreachable: the callback is not called (the last snapshot stays in force), the
 *    thread reconnects with exponential back-off (100 ms .. 5 s), and the status says down.
 *  - Sentinel: with sentinels given, the master's address is asked of them (each in turn)
 *    at every connect and at every reread; a failover is followed by reconnecting to the
 *    new master.
 */
#ifndef IBRAIN_SYNC_H
#define IBRAIN_SYNC_H

#include <stdatomic.h>
#include <stdint.h>

#include "ibrain/snapshot.h"
#include "ibrain/store.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

#define IB_SYNC_MAX_SENTINELS IB_REDIS_MAX_SENTINELS

typedef struct ib_sync ib_sync_t;

/** Called every tick_ms on the sync thread while Redis is connected: the place for
 * write-back (ib_sync_stream_add / ib_sync_stream_read). */
typedef void (*ib_sync_tick_fn)(void *ctx, ib_sync_t *s);

typedef struct ib_sync_config {
    const char *redis;                               /* HOST:PORT, when no sentinels */
    const char *sentinels[IB_SYNC_MAX_SENTINELS];    /* HOST:PORT each */
    uint32_t nsentinels;
    const char *master_name;                         /* sentinel master name */
    uint32_t reread_ms;                              /* safety-net period (default 2000) */
    ib_sync_tick_fn tick;                            /* optional */
    uint32_t tick_ms;                                /* default 100 */
} ib_sync_config_t;

/** Called on the sync thread with each snapshot whose version is higher than the last one
 * applied. Returns 0 when applied, -1 when refused (it will be offered again). */
typedef int (*ib_sync_apply_fn)(void *ctx, const ib_snapshot_t *snap);

/** What the sync thread reports; read by anyone (relaxed atomics). */
typedef struct ib_sync_status {
    _Atomic int redis_up;               /* connected and the last command worked */
    _Atomic uint64_t version;           /* last applied snapshot version (0: none) */
    _Atomic int64_t written_unix_ms;    /* its writer's timestamp */
    _Atomic uint64_t applied_unix_ms;   /* when it was applied here */
    _Atomic uint64_t updates;           /* snapshots applied */
    _Atomic uint64_t errors;            /* connect, command and decode failures */
    _Atomic uint64_t reconnects;
    char master[264];                   /* the address in use, HOST:PORT (written by the sync thread) */
} ib_sync_status_t;

/* ---- functions ---- */

/** Starts the thread. NULL (with a message on stderr) on a bad configuration. */
ib_sync_t *ib_sync_start(const ib_sync_config_t *cfg, ib_sync_apply_fn apply, void *ctx, ib_sync_status_t *status);

/** Stops the thread and frees everything. */
void ib_sync_stop(ib_sync_t *s);

/**
 * From a tick: XADD <key> MAXLEN ~ <maxlen> * p <payload>, then PEXPIRE <key> <ttl_ms>
 * (the stream dies when every writer is gone). Returns 0, or -1 (the connection is then
 * reset by the sync thread).
 */
int ib_sync_stream_add(ib_sync_t *s, const char *key, const void *payload, size_t len, uint32_t maxlen,
                       uint32_t ttl_ms);

typedef void (*ib_sync_stream_fn)(void *ctx, const void *payload, size_t len);

/**
 * From a tick: XREAD COUNT <count> STREAMS <key> <last_id>, calling <fn> for each entry's
 * payload and advancing <last_id> (at least 48 bytes, a stream id: "MS-SEQ" reads what
 * came after it, "MS-0" what was appended from Unix time MS on). Returns the number of
 * entries, or -1.
 */
int ib_sync_stream_read(ib_sync_t *s, const char *key, char *last_id, uint32_t count, ib_sync_stream_fn fn,
                        void *ctx);

#ifdef __cplusplus
}
#endif
#endif
