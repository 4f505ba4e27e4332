/* ib-orchestrator: the workload orchestrator (include/ibrain/orchestrator.h). */
#include <arpa/inet.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibrain/net.h"
#include "ibrain/orchestrator.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ib-orchestrator [options]\n"
            "  --listen IPV4:PORT        REST API (default 127.0.0.1:8081; port 0: free)\n"
            "  --port-file F             write the port to F once listening\n"
            "  --cluster HOST:PORT       the cluster server's gRPC address (default 127.0.0.1:7070)\n"
            "  --redis HOST:PORT         leader lease and routing snapshots (default 127.0.0.1:6379)\n"
            "  --redis-sentinel HOST:PORT  a Redis Sentinel (repeatable, instead of --redis): the master\n"
            "                            is asked of them, again after any Redis error (a failover)\n"
            "  --redis-master NAME       the sentinels' master name\n"
            "  --no-leader               REST only: never take the lease, never write snapshots\n"
            "  --instance-id NAME        the lease owner's name (default HOST-PID)\n"
            "  --lease-ms N              leader lease length (default 3000; renewed every third)\n"
            "  --sync-ms N               the leader's poll of the cluster server (default 200)\n"
            "  --jwt-secret-file F       accept HS256 tokens signed with this shared secret\n"
            "  --jwt-public-key F        accept RS256 tokens signed by this key's owner (PEM)\n"
            "  --jwt-issuer ISS          require \"iss\" = ISS\n"
            "  --jwt-audience AUD        require AUD in \"aud\"\n"
            "  --jwt-leeway-s N          clock skew allowed on exp and nbf (default 30)\n"
            "  --no-auth                 no authentication (allowed on a loopback --listen only)\n"
            "  --cache-ttl-ms N, --cache-blocks N   the engines' prefix cache, written into the snapshot\n"
            "Scopes: GET needs workloads:read; POST, PATCH and DELETE need workloads:write.\n");
}

/* A key file without its trailing newlines. */
static char *read_trimmed(const char *path, size_t *len)
{
    char *buf = ib_read_file(path, len);
    while (buf != NULL && *len > 0 && (buf[*len - 1] == '\n' || buf[*len - 1] == '\r'))
        buf[--*len] = '\0';
    return buf;
}

int main(int argc, char **argv)
{
    ib_orch_config_t cfg = {.listen = "127.0.0.1:8081", .cluster = "127.0.0.1:7070", .redis = "127.0.0.1:6379",
                            .lease_ms = 3000, .sync_ms = 200};
    cfg.jwt.leeway_s = 30;
    const char *secret_file = NULL, *pubkey_file = NULL;
    enum { O_LISTEN = 1, O_PORTFILE, O_CLUSTER, O_REDIS, O_NOLEADER, O_ID, O_LEASE, O_SYNC, O_SECRET, O_PUBKEY, O_ISS,
           O_AUD, O_LEEWAY, O_NOAUTH, O_TTL, O_BLOCKS, O_HELP, O_SENTINEL, O_MASTER };
    static const struct option opts[] = {
        {"listen", 1, 0, O_LISTEN},         {"port-file", 1, 0, O_PORTFILE},     {"cluster", 1, 0, O_CLUSTER},
        {"redis", 1, 0, O_REDIS},           {"no-leader", 0, 0, O_NOLEADER},     {"instance-id", 1, 0, O_ID},
        {"lease-ms", 1, 0, O_LEASE},        {"sync-ms", 1, 0, O_SYNC},           {"jwt-secret-file", 1, 0, O_SECRET},
        {"jwt-public-key", 1, 0, O_PUBKEY}, {"jwt-issuer", 1, 0, O_ISS},         {"jwt-audience", 1, 0, O_AUD},
        {"jwt-leeway-s", 1, 0, O_LEEWAY},   {"no-auth", 0, 0, O_NOAUTH},         {"cache-ttl-ms", 1, 0, O_TTL},
        {"cache-blocks", 1, 0, O_BLOCKS},   {"help", 0, 0, O_HELP},              {"redis-sentinel", 1, 0, O_SENTINEL},
        {"redis-master", 1, 0, O_MASTER},   {0, 0, 0, 0}};
    int no_leader = 0;
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN: cfg.listen = optarg; break;
        case O_PORTFILE: cfg.port_file = optarg; break;
        case O_CLUSTER: cfg.cluster = optarg; break;
        case O_REDIS: cfg.redis = optarg; break;
        case O_NOLEADER: no_leader = 1; break;
        case O_SENTINEL:
            if (cfg.nsentinels == IB_REDIS_MAX_SENTINELS) {
                fprintf(stderr, "ib-orchestrator: at most %d --redis-sentinel\n", IB_REDIS_MAX_SENTINELS);
                return 2;
            }
            cfg.sentinels[cfg.nsentinels++] = optarg;
            break;
        case O_MASTER: cfg.redis_master = optarg; break;
        case O_ID: cfg.instance_id = optarg; break;
        case O_LEASE: cfg.lease_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_SYNC: cfg.sync_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_SECRET: secret_file = optarg; break;
        case O_PUBKEY: pubkey_file = optarg; break;
        case O_ISS: cfg.jwt.issuer = optarg; break;
        case O_AUD: cfg.jwt.audience = optarg; break;
        case O_LEEWAY: cfg.jwt.leeway_s = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_NOAUTH: cfg.auth_off = 1; break;
        case O_TTL: cfg.cache_ttl_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_BLOCKS: cfg.cache_blocks = (uint32_t)strtoul(optarg, NULL, 10); break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || cfg.lease_ms < 300 || cfg.sync_ms < 10 || cfg.sync_ms > cfg.lease_ms) {
        fprintf(stderr, "ib-orchestrator: bad arguments (--lease-ms >= 300, 10 <= --sync-ms <= --lease-ms)\n");
        usage(stderr);
        return 2;
    }
    char host[IB_HOSTPORT_MAX];
    unsigned port;
    if (cfg.nsentinels > 0)
        cfg.redis = NULL; /* the master comes from the sentinels */
    if (no_leader) {
        cfg.redis = NULL;
        cfg.nsentinels = 0;
    }
    if (cfg.redis != NULL && ib_split_hostport(cfg.redis, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "ib-orchestrator: --redis wants HOST:PORT, got '%s'\n", cfg.redis);
        return 2;
    }
    for (uint32_t i = 0; i < cfg.nsentinels; i++)
        if (ib_split_hostport(cfg.sentinels[i], host, sizeof(host), &port) != 0) {
            fprintf(stderr, "ib-orchestrator: --redis-sentinel wants HOST:PORT, got '%s'\n", cfg.sentinels[i]);
            return 2;
        }
    if (cfg.nsentinels > 0 && (cfg.redis_master == NULL || cfg.redis_master[0] == '\0')) {
        fprintf(stderr, "ib-orchestrator: --redis-master NAME is required with --redis-sentinel\n");
        return 2;
    }
    if (ib_split_hostport(cfg.cluster, host, sizeof(host), &port) != 0) {
        fprintf(stderr, "ib-orchestrator: --cluster wants HOST:PORT, got '%s'\n", cfg.cluster);
        return 2;
    }
    struct sockaddr_in sa;
    if (ib_parse_hostport(cfg.listen, &sa) != 0) {
        fprintf(stderr, "ib-orchestrator: --listen wants IPV4:PORT, got '%s'\n", cfg.listen);
        return 2;
    }
    size_t len = 0;
    char *secret = NULL, *pem = NULL;
    if (secret_file != NULL) {
        secret = read_trimmed(secret_file, &len);
        if (secret == NULL || len < 32) {
            fprintf(stderr, "ib-orchestrator: --jwt-secret-file %s: %s\n", secret_file,
                    secret ? "a shared secret needs at least 32 bytes" : "cannot read");
            return 2;
        }
        cfg.jwt.hs256_secret = (const unsigned char *)secret;
        cfg.jwt.hs256_secret_len = len;
    }
    if (pubkey_file != NULL) {
        pem = read_trimmed(pubkey_file, &len);
        if (pem == NULL || strstr(pem, "PUBLIC KEY") == NULL) {
            fprintf(stderr, "ib-orchestrator: --jwt-public-key %s: not a readable PEM public key\n", pubkey_file);
            return 2;
        }
        cfg.jwt.rs256_public_pem = pem;
    }
    if (cfg.auth_off && (secret != NULL || pem != NULL)) {
        fprintf(stderr, "ib-orchestrator: --no-auth with a JWT key: choose one\n");
        return 2;
    }
    if (!cfg.auth_off && secret == NULL && pem == NULL) {
        fprintf(stderr, "ib-orchestrator: no JWT key: give --jwt-secret-file and/or --jwt-public-key "
                        "(or --no-auth on a loopback address)\n");
        return 2;
    }
    if (cfg.auth_off && (ntohl(sa.sin_addr.s_addr) >> 24) != 127) {
        fprintf(stderr, "ib-orchestrator: --no-auth is only allowed on a loopback --listen\n");
        return 2;
    }
    int rc = ib_orchestrator_run(&cfg);
    free(secret);
    free(pem);
    return rc;
}
