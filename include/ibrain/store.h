/*
 * The routing snapshot's store in Redis, for both planes: the connection helpers ibrain's
 * sync thread uses, and the writers the orchestrator's leader and ib-snapshot use.
 *
 *  - IB_SNAPSHOT_KEY holds the encoded snapshot; every write publishes its version on
 *    IB_SNAPSHOT_CHANNEL (include/ibrain/snapshot.h).
 *  - A leader lease is a key holding its owner's id with a TTL; snapshot writes can be
 *    fenced by it.
 *
 * Blocking hiredis calls; a context belongs to one thread. hiredis's types stay out of
 * this header.
 */
#ifndef IBRAIN_STORE_H
#define IBRAIN_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/snapshot.h"

#ifdef __cplusplus
extern "C" {
#endif

struct redisContext; /* hiredis */

#define IB_REDIS_MAX_SENTINELS 8 /* sentinels a client is given at the most */

/* ---- connections ---- */

/** Connects to Redis at IPV4:PORT with <timeout_ms> for the connect and every command
 * after it. NULL when malformed or unreachable. Free with redisFree(). */
struct redisContext *ib_redis_connect(const char *hostport, int timeout_ms);

/**
 * Asks each sentinel in turn (IPV4:PORT) for the address of master <name>; writes
 * "IP:PORT" to <out>. Returns 0, or -1 when no sentinel answers.
 */
int ib_redis_sentinel_master(const char *const *sentinels, uint32_t n, const char *name, char *out, size_t cap);

/* ---- the snapshot: the orchestrator's leader, ib-snapshot ---- */

/**
 * Reads the stored snapshot. 1 with <out> filled (ib_snapshot_free it), 0 when there is
 * none, -1 on a Redis error or an invalid snapshot (<err>).
 */
int ib_snapshot_fetch(struct redisContext *c, ib_snapshot_t *out, char *err, size_t errlen);

/**
 * Stamps <s> with the time, stores it as IB_SNAPSHOT_KEY and publishes its version on
 * IB_SNAPSHOT_CHANNEL, atomically (one Lua script). With <lease_key> set, only while that
 * key holds <owner>: a leader that lost its lease writes nothing (fencing). Returns 1
 * written, 0 not written (the lease is another's), -1 on error (<err>), and -1 without a
 * Redis command when <s> fails ib_snapshot_check() (over a limit of include/ibrain/limits.h:
 * the writer refuses what ibrain would).
 */
int ib_snapshot_write(struct redisContext *c, ib_snapshot_t *s, const char *lease_key, const char *owner, char *err,
                      size_t errlen);

/* ---- the leader lease ---- */

/**
 * Takes the lease <key> for <owner> when it is free, or renews it when <owner> holds it,
 * for <ttl_ms>. 1 held by <owner>, 0 held by another, -1 on error.
 */
int ib_lease_acquire(struct redisContext *c, const char *key, const char *owner, uint32_t ttl_ms);

/** Gives the lease up if <owner> holds it (a clean shutdown: the next leader need not wait). */
int ib_lease_release(struct redisContext *c, const char *key, const char *owner);

#ifdef __cplusplus
}
#endif
#endif
