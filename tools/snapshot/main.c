/*
 * ib-snapshot: writes and reads the routing snapshot in Redis (docs/api.md, "Redis
 * contract"), until the control plane writes it.
 *
 *   Redis: --redis IPV4:PORT (default 127.0.0.1:6379), or the master that sentinels name:
 *   --sentinel IPV4:PORT (repeatable) --master NAME.
 *
 *   ib-snapshot --redis HOST:PORT put FILE.json   encode and SET ib:snapshot, then PUBLISH
 *                                                 ib:snapshot:changed VERSION (one MULTI/EXEC).
 *                                                 A version of 0 (or none) in the file means
 *                                                 max(stored version + 1, now in Unix ms), so
 *                                                 that versions keep growing even when Redis
 *                                                 restarts empty.
 *   ib-snapshot --redis HOST:PORT get             print the stored snapshot as JSON
 *   ib-snapshot check FILE.json                   validate a file, print it as JSON
 *   ib-snapshot bench FILE.json N MS              write N versions MS apart (the last replica
 *                                                 alternately draining), for perf/bench-sync.sh
 *
 * Exit status: 0, 1 on a Redis or validation error (message on stderr), 2 on bad usage.
 */
#include <hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "ibrain/clock.h"
#include "ibrain/net.h"
#include "ibrain/snapshot.h"
#include "ibrain/store.h"

static void usage(void)
{
    fprintf(stderr, "usage: ib-snapshot [--redis IPV4:PORT | --sentinel IPV4:PORT... --master NAME] "
                    "put FILE.json | get | check FILE.json\n");
    exit(2);
}

static redisContext *connect_redis(const char *hostport)
{
    char host[IB_HOSTPORT_MAX];
    unsigned port;
    if (ib_split_hostport(hostport, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "ib-snapshot: --redis wants HOST:PORT, got '%s'\n", hostport);
        exit(2);
    }
    redisContext *c = ib_redis_connect(hostport, 2000);
    if (c == NULL) {
        fprintf(stderr, "ib-snapshot: cannot connect to redis at %s\n", hostport);
        exit(1);
    }
    return c;
}

/* Reads the stored snapshot: 1 and <out> when there is one, 0 when the key is absent. */
static int fetch(redisContext *c, ib_snapshot_t *out)
{
    char err[300];
    int rc = ib_snapshot_fetch(c, out, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "ib-snapshot: %s\n", err);
        exit(1);
    }
    return rc;
}

/* SET ib:snapshot and PUBLISH its version in one MULTI/EXEC; stamps the write time. */
static int write_snapshot(redisContext *c, ib_snapshot_t *s)
{
    char err[300];
    if (ib_snapshot_write(c, s, NULL, NULL, err, sizeof(err)) == 1)
        return 0;
    fprintf(stderr, "ib-snapshot: write failed: %s\n", err);
    return -1;
}

int main(int argc, char **argv)
{
    const char *redis = "127.0.0.1:6379", *master = NULL;
    const char *sentinels[IB_REDIS_MAX_SENTINELS];
    uint32_t nsentinels = 0;
    char resolved[IB_HOSTPORT_MAX];
    int i = 1;
    for (; i < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc)
            redis = argv[++i];
        else if (strcmp(argv[i], "--sentinel") == 0 && i + 1 < argc && nsentinels < IB_REDIS_MAX_SENTINELS)
            sentinels[nsentinels++] = argv[++i];
        else if (strcmp(argv[i], "--master") == 0 && i + 1 < argc)
            master = argv[++i];
        else
            usage();
    }
    if (nsentinels > 0) {
        if (master == NULL)
            usage();
        if (ib_redis_sentinel_master(sentinels, nsentinels, master, resolved, sizeof(resolved)) != 0) {
            fprintf(stderr, "ib-snapshot: no sentinel knows master '%s'\n", master);
            return 1;
        }
        redis = resolved;
    }
    if (i >= argc)
        usage();
    const char *cmd = argv[i++];
    char err[256];
    if (strcmp(cmd, "check") == 0 || strcmp(cmd, "put") == 0) {
        if (i >= argc)
            usage();
        size_t len;
        char *json = ib_read_file(argv[i], &len);
        if (json == NULL) {
            perror(argv[i]);
            return 1;
        }
        ib_snapshot_t s;
        if (ib_snapshot_from_json(json, len, &s, err, sizeof(err)) != 0) {
            fprintf(stderr, "ib-snapshot: %s: %s\n", argv[i], err);
            return 1;
        }
        free(json);
        s.written_unix_ms = (int64_t)ib_wall_ms();
        if (strcmp(cmd, "put") == 0) {
            redisContext *c = connect_redis(redis);
            if (s.version == 0) {
                ib_snapshot_t cur;
                s.version = (uint64_t)s.written_unix_ms;
                if (fetch(c, &cur)) {
                    if (cur.version + 1 > s.version)
                        s.version = cur.version + 1;
                    ib_snapshot_free(&cur);
                }
            }
            if (write_snapshot(c, &s) != 0)
                return 1;
            printf("ib-snapshot: version %llu written (%u workloads, %u replicas)\n", (unsigned long long)s.version,
                   s.nworkloads, s.nreplicas);
            redisFree(c);
        } else {
            ib_buf_t out = {0};
            ib_snapshot_to_json(&s, &out);
            fwrite(out.ptr, 1, out.len, stdout);
            ib_buf_free(&out);
        }
        ib_snapshot_free(&s);
        return 0;
    }
    if (strcmp(cmd, "bench") == 0) { /* bench FILE.json CHANGES INTERVAL_MS */
        if (i + 2 >= argc)
            usage();
        size_t len;
        char *json = ib_read_file(argv[i], &len);
        ib_snapshot_t s;
        if (json == NULL || ib_snapshot_from_json(json, len, &s, err, sizeof(err)) != 0) {
            fprintf(stderr, "ib-snapshot: %s: %s\n", argv[i], json ? err : "cannot read");
            return 1;
        }
        free(json);
        long changes = atol(argv[i + 1]), interval_ms = atol(argv[i + 2]);
        redisContext *c = connect_redis(redis);
        uint64_t base = (uint64_t)(ib_wall_us() / 1000);
        for (long k = 1; k <= changes; k++) {
            s.version = base + (uint64_t)k;
            if (s.nreplicas > 0) /* a real change each time: the last replica drains, then not */
                s.replicas[s.nreplicas - 1].draining = (int)(k & 1);
            if (write_snapshot(c, &s) != 0)
                return 1;
            usleep((useconds_t)interval_ms * 1000);
        }
        printf("ib-snapshot: %ld changes written, versions %llu..%llu\n", changes, (unsigned long long)base + 1,
               (unsigned long long)(base + (uint64_t)changes));
        ib_snapshot_free(&s);
        redisFree(c);
        return 0;
    }
    if (strcmp(cmd, "get") == 0) {
        redisContext *c = connect_redis(redis);
        ib_snapshot_t s;
        if (!fetch(c, &s)) {
            fprintf(stderr, "ib-snapshot: no snapshot in %s\n", redis);
            return 1;
        }
        ib_buf_t out = {0};
        ib_snapshot_to_json(&s, &out);
        fwrite(out.ptr, 1, out.len, stdout);
        ib_buf_free(&out);
        ib_snapshot_free(&s);
        redisFree(c);
        return 0;
    }
    usage();
}
