/* The snapshot sync thread (include/ibrain/sync.h): hiredis, blocking calls with timeouts on
 * a command connection, and a subscriber connection read only when poll() says it has data. */
#include "ibrain/clock.h"
#include "ibrain/sync.h"

#include <errno.h>
#include <hiredis.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "ibrain/net.h"

struct ib_sync {
    ib_sync_config_t cfg;
    char sentinels[IB_SYNC_MAX_SENTINELS][IB_HOSTPORT_MAX];
    char master_name[64];
    char redis[IB_HOSTPORT_MAX];
    ib_sync_apply_fn apply;
    void *ctx;
    ib_sync_status_t *st;
    int stop_fd; /* eventfd: stop */
    pthread_t thread;
    redisContext *cmd, *sub;
    char addr[IB_HOSTPORT_MAX]; /* the master in use */
    uint64_t applied_version;
    int tick_failed; /* a tick's command lost the connection */
};

static int resolve_master(ib_sync_t *s, char *out, size_t cap)
{
    const char *list[IB_SYNC_MAX_SENTINELS];
    for (uint32_t i = 0; i < s->cfg.nsentinels; i++)
        list[i] = s->sentinels[i];
    return ib_redis_sentinel_master(list, s->cfg.nsentinels, s->master_name, out, cap);
}

static void disconnect(ib_sync_t *s)
{
    if (s->cmd != NULL)
        redisFree(s->cmd);
    if (s->sub != NULL)
        redisFree(s->sub);
    s->cmd = s->sub = NULL;
    atomic_store_explicit(&s->st->redis_up, 0, memory_order_relaxed);
}

static void count_error(ib_sync_t *s) { atomic_fetch_add_explicit(&s->st->errors, 1, memory_order_relaxed); }

/* Connects the command and subscriber connections to the master. 0, or -1. */
static int connect_all(ib_sync_t *s)
{
    char addr[IB_HOSTPORT_MAX];
    if (s->cfg.nsentinels > 0) {
        if (resolve_master(s, addr, sizeof(addr)) != 0)
            return -1;
    } else {
        snprintf(addr, sizeof(addr), "%s", s->redis);
    }
    s->cmd = ib_redis_connect(addr, 1000);
    s->sub = s->cmd != NULL ? ib_redis_connect(addr, 1000) : NULL;
    if (s->sub == NULL) {
        disconnect(s);
        return -1;
    }
    redisReply *r = redisCommand(s->sub, "SUBSCRIBE %s", IB_SNAPSHOT_CHANNEL);
    int ok = r != NULL && r->type == REDIS_REPLY_ARRAY;
    if (r != NULL)
        freeReplyObject(r);
    if (!ok) {
        disconnect(s);
        return -1;
    }
    snprintf(s->addr, sizeof(s->addr), "%s", addr);
    snprintf(s->st->master, sizeof(s->st->master), "%s", addr);
    atomic_store_explicit(&s->st->redis_up, 1, memory_order_relaxed);
    return 0;
}

/* GETs the snapshot and applies it when newer. -1 when the connection failed. */
static int fetch(ib_sync_t *s)
{
    redisReply *r = redisCommand(s->cmd, "GET %s", IB_SNAPSHOT_KEY);
    if (r == NULL) /* I/O error or timeout: the context is unusable now */
        return -1;
    if (r->type == REDIS_REPLY_STRING) {
        ib_snapshot_t snap;
        char err[256];
        if (ib_snapshot_decode(r->str, r->len, &snap, err, sizeof(err)) != 0) {
            fprintf(stderr, "ibrain: sync: ignoring the snapshot in Redis: %s\n", err);
            count_error(s);
        } else {
            if (snap.version > s->applied_version) {
                if (s->apply(s->ctx, &snap) == 0) {
                    s->applied_version = snap.version;
                    atomic_store_explicit(&s->st->version, snap.version, memory_order_relaxed);
                    atomic_store_explicit(&s->st->written_unix_ms, snap.written_unix_ms, memory_order_relaxed);
                    atomic_store_explicit(&s->st->applied_unix_ms, ib_wall_ms(), memory_order_relaxed);
                    atomic_fetch_add_explicit(&s->st->updates, 1, memory_order_relaxed);
                } else {
                    count_error(s);
                }
            }
            ib_snapshot_free(&snap);
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        count_error(s); /* e.g. a replica in the middle of a failover: try again later */
    }
    freeReplyObject(r);
    atomic_store_explicit(&s->st->redis_up, 1, memory_order_relaxed);
    return 0;
}

/* Waits up to <ms> for the stop event. 1 when stopping. */
static int wait_stop(ib_sync_t *s, int ms)
{
    struct pollfd p = {s->stop_fd, POLLIN, 0};
    return poll(&p, 1, ms) > 0;
}

/* Reads what the subscriber connection has: 1 when a change was announced, 0 when not,
 * -1 when the connection is gone. */
static int drain_subscriber(ib_sync_t *s)
{
    if (redisBufferRead(s->sub) != REDIS_OK)
        return -1;
    int changed = 0;
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(s->sub, &reply) != REDIS_OK)
            return -1;
        if (reply == NULL)
            return changed;
        redisReply *r = reply;
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING &&
            strcmp(r->element[0]->str, "message") == 0)
            changed = 1;
        freeReplyObject(r);
    }
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *sync_main(void *arg)
{
    ib_sync_t *s = arg;
    uint32_t backoff = 100;
    uint32_t tick_ms = s->cfg.tick != NULL ? s->cfg.tick_ms : s->cfg.reread_ms;
    uint64_t next_reread = 0;
    while (!wait_stop(s, 0)) {
        if (s->cmd == NULL) {
            if (connect_all(s) != 0 || fetch(s) != 0) {
                disconnect(s);
                count_error(s);
                if (wait_stop(s, (int)backoff))
                    break;
                backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
                continue;
            }
            backoff = 100;
            next_reread = mono_ms() + s->cfg.reread_ms;
            atomic_fetch_add_explicit(&s->st->reconnects, 1, memory_order_relaxed);
        }
        struct pollfd p[2] = {{s->stop_fd, POLLIN, 0}, {s->sub->fd, POLLIN, 0}};
        int n = poll(p, 2, (int)tick_ms);
        if (n < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            break;
        int rc = 0;
        if (n > 0 && p[1].revents) {
            int changed = drain_subscriber(s);
            rc = changed < 0 ? -1 : changed ? fetch(s) : 0;
        }
        if (rc == 0 && s->cfg.tick != NULL) {
            s->tick_failed = 0;
            s->cfg.tick(s->ctx, s);
            rc = s->tick_failed ? -1 : 0;
        }
        if (rc == 0 && mono_ms() >= next_reread) {
            next_reread = mono_ms() + s->cfg.reread_ms;
            /* The safety net; with sentinels, also notice a failover. */
            if (s->cfg.nsentinels > 0) {
                char addr[IB_HOSTPORT_MAX];
                if (resolve_master(s, addr, sizeof(addr)) == 0 && strcmp(addr, s->addr) != 0) {
                    fprintf(stderr, "ibrain: sync: master moved from %s to %s\n", s->addr, addr);
                    disconnect(s);
                    continue;
                }
            }
            rc = fetch(s);
        }
        if (rc != 0) {
            fprintf(stderr, "ibrain: sync: lost Redis at %s, reconnecting\n", s->addr);
            disconnect(s);
            count_error(s);
        }
    }
    disconnect(s);
    return NULL;
}

int ib_sync_stream_add(ib_sync_t *s, const char *key, const void *payload, size_t len, uint32_t maxlen,
                       uint32_t ttl_ms)
{
    if (s->cmd == NULL)
        return -1;
    redisAppendCommand(s->cmd, "XADD %s MAXLEN ~ %u * p %b", key, maxlen, payload, len);
    redisAppendCommand(s->cmd, "PEXPIRE %s %u", key, ttl_ms);
    for (int i = 0; i < 2; i++) {
        redisReply *r = NULL;
        if (redisGetReply(s->cmd, (void **)&r) != REDIS_OK || r == NULL) {
            s->tick_failed = 1;
            return -1;
        }
        int bad = r->type == REDIS_REPLY_ERROR;
        freeReplyObject(r);
        if (bad) {
            count_error(s);
            return -1;
        }
    }
    return 0;
}

int ib_sync_stream_read(ib_sync_t *s, const char *key, char *last_id, uint32_t count, ib_sync_stream_fn fn,
                        void *ctx)
{
    if (s->cmd == NULL)
        return -1;
    redisReply *r = redisCommand(s->cmd, "XREAD COUNT %u STREAMS %s %s", count, key, last_id);
    if (r == NULL) {
        s->tick_failed = 1;
        return -1;
    }
    int n = 0;
    /* [[key, [[id, [field, value, ...]], ...]]] or nil */
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
        r->element[0]->elements == 2 && r->element[0]->element[1]->type == REDIS_REPLY_ARRAY) {
        redisReply *entries = r->element[0]->element[1];
        for (size_t i = 0; i < entries->elements; i++) {
            redisReply *e = entries->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING)
                continue;
            snprintf(last_id, 48, "%s", e->element[0]->str);
            redisReply *kv = e->element[1];
            for (size_t k = 0; kv->type == REDIS_REPLY_ARRAY && k + 1 < kv->elements; k += 2)
                if (kv->element[k]->type == REDIS_REPLY_STRING && strcmp(kv->element[k]->str, "p") == 0 &&
                    kv->element[k + 1]->type == REDIS_REPLY_STRING)
                    fn(ctx, kv->element[k + 1]->str, kv->element[k + 1]->len);
            n++;
        }
    } else if (r->type == REDIS_REPLY_ERROR) {
        count_error(s);
        n = -1;
    }
    freeReplyObject(r);
    return n;
}

ib_sync_t *ib_sync_start(const ib_sync_config_t *cfg, ib_sync_apply_fn apply, void *ctx, ib_sync_status_t *status)
{
    ib_sync_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->cfg = *cfg;
    if (s->cfg.reread_ms == 0)
        s->cfg.reread_ms = 2000;
    if (s->cfg.tick_ms == 0)
        s->cfg.tick_ms = 100;
    s->apply = apply;
    s->ctx = ctx;
    s->st = status;
    char host[IB_HOSTPORT_MAX];
    unsigned port;
    if (cfg->nsentinels == 0) {
        if (cfg->redis == NULL || ib_split_hostport(cfg->redis, host, sizeof(host), &port) != 0) {
            fprintf(stderr, "ibrain: --redis wants HOST:PORT, got '%s'\n", cfg->redis ? cfg->redis : "");
            free(s);
            return NULL;
        }
        snprintf(s->redis, sizeof(s->redis), "%s", cfg->redis);
    } else {
        if (cfg->master_name == NULL || cfg->master_name[0] == '\0' || strlen(cfg->master_name) >= 64) {
            fprintf(stderr, "ibrain: --redis-master NAME is required with --redis-sentinel\n");
            free(s);
            return NULL;
        }
        snprintf(s->master_name, sizeof(s->master_name), "%s", cfg->master_name);
        for (uint32_t i = 0; i < cfg->nsentinels; i++) {
            if (ib_split_hostport(cfg->sentinels[i], host, sizeof(host), &port) != 0) {
                fprintf(stderr, "ibrain: --redis-sentinel wants HOST:PORT, got '%s'\n", cfg->sentinels[i]);
                free(s);
                return NULL;
            }
            snprintf(s->sentinels[i], sizeof(s->sentinels[i]), "%s", cfg->sentinels[i]);
        }
    }
    s->stop_fd = eventfd(0, EFD_CLOEXEC);
    if (s->stop_fd < 0 || pthread_create(&s->thread, NULL, sync_main, s) != 0) {
        if (s->stop_fd >= 0)
            close(s->stop_fd);
        free(s);
        return NULL;
    }
    return s;
}

void ib_sync_stop(ib_sync_t *s)
{
    if (s == NULL)
        return;
    uint64_t one = 1;
    if (write(s->stop_fd, &one, sizeof(one)) < 0)
        perror("ibrain: sync stop");
    pthread_join(s->thread, NULL);
    close(s->stop_fd);
    free(s);
}
