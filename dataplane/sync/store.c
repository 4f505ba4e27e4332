/*
 * The routing snapshot's store in Redis (include/ibrain/store.h): connections, sentinel
 * lookups, reading and writing the snapshot, the leader lease. Blocking hiredis calls.
 */
#include "ibrain/store.h"

#include <hiredis.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include "ibrain/clock.h"
#include "ibrain/net.h"

/* ---- connections ---- */

redisContext *ib_redis_connect(const char *hostport, int timeout_ms)
{
    char host[IB_HOSTPORT_MAX];
    unsigned port;
    if (ib_split_hostport(hostport, host, sizeof(host), &port) != 0)
        return NULL;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(host, (int)port, tv); /* hiredis resolves names */
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

int ib_redis_sentinel_master(const char *const *sentinels, uint32_t n, const char *name, char *out, size_t cap)
{
    for (uint32_t i = 0; i < n; i++) {
        redisContext *c = ib_redis_connect(sentinels[i], 500);
        if (c == NULL)
            continue;
        redisReply *r = redisCommand(c, "SENTINEL get-master-addr-by-name %s", name);
        int ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
                 r->element[0]->type == REDIS_REPLY_STRING && r->element[1]->type == REDIS_REPLY_STRING;
        if (ok)
            snprintf(out, cap, "%s:%s", r->element[0]->str, r->element[1]->str);
        if (r != NULL)
            freeReplyObject(r);
        redisFree(c);
        if (ok)
            return 0;
    }
    return -1;
}

/* ---- the snapshot and the lease ---- */

int ib_snapshot_fetch(redisContext *c, ib_snapshot_t *out, char *err, size_t errlen)
{
    redisReply *r = redisCommand(c, "GET %s", IB_SNAPSHOT_KEY);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "GET %s: %s", IB_SNAPSHOT_KEY, r ? r->str : c->errstr);
        if (r != NULL)
            freeReplyObject(r);
        return -1;
    }
    int rc = 0;
    if (r->type == REDIS_REPLY_STRING) {
        char why[200];
        rc = 1;
        if (ib_snapshot_decode(r->str, r->len, out, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "the stored snapshot is invalid: %s", why);
            rc = -1;
        }
    }
    freeReplyObject(r);
    return rc;
}

/* KEYS: lease, snapshot, channel. ARGV: owner ("" = no lease), snapshot bytes, version. */
static const char write_script[] =
    "if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end "
    "redis.call('SET', KEYS[2], ARGV[2]) "
    "redis.call('PUBLISH', KEYS[3], ARGV[3]) "
    "return 1";

int ib_snapshot_write(redisContext *c, ib_snapshot_t *s, const char *lease_key, const char *owner, char *err,
                      size_t errlen)
{
    char why[256];
    if (ib_snapshot_check(s, why, sizeof(why)) != 0) {
        snprintf(err, errlen, "snapshot refused: %s", why);
        return -1;
    }
    s->written_unix_us = ib_wall_us();
    s->written_unix_ms = s->written_unix_us / 1000;
    ib_buf_t enc = {0};
    if (ib_snapshot_encode(s, &enc) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    char ver[32];
    snprintf(ver, sizeof(ver), "%llu", (unsigned long long)s->version);
    const char *own = lease_key != NULL && owner != NULL ? owner : "";
    const char *argv[] = {"EVAL", write_script, "3", lease_key ? lease_key : "ib:leader", IB_SNAPSHOT_KEY,
                          IB_SNAPSHOT_CHANNEL, own, enc.ptr, ver};
    size_t lens[9];
    for (int i = 0; i < 9; i++)
        lens[i] = i == 7 ? enc.len : strlen(argv[i]); /* [7] is the binary snapshot */
    redisReply *r = redisCommandArgv(c, 9, argv, lens);
    ib_buf_free(&enc);
    int rc = -1;
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        snprintf(err, errlen, "writing the snapshot: %s", r ? r->str : c->errstr);
    else
        rc = r->type == REDIS_REPLY_INTEGER && r->integer == 1;
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}

static const char lease_script[] =
    "local v = redis.call('GET', KEYS[1]) "
    "if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end "
    "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end "
    "return 0";

int ib_lease_acquire(redisContext *c, const char *key, const char *owner, uint32_t ttl_ms)
{
    redisReply *r = redisCommand(c, "EVAL %s 1 %s %s %u", lease_script, key, owner, ttl_ms);
    int rc = r != NULL && r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}

int ib_lease_release(redisContext *c, const char *key, const char *owner)
{
    redisReply *r = redisCommand(c, "EVAL %s 1 %s %s",
                                 "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                                 "return 0",
                                 key, owner);
    int rc = r != NULL && r->type == REDIS_REPLY_INTEGER ? (int)r->integer : -1;
    if (r != NULL)
        freeReplyObject(r);
    return rc;
}
