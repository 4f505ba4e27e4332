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
            "  --cluster IPV4:PORT       the cluster server's gRPC address (default 127.0.0.1:7070)\n"
            "  --redis IPV4:PORT         leader lease and routing snapshots (default 127.0.0.1:6379)\n"
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
           O_AUD, O_LEEWAY, O_NOAUTH, O_TTL, O_BLOCKS, O_HELP };
    static const struct option opts[] = {
        {"listen", 1, 0, O_LISTEN},         {"port-file", 1, 0, O_PORTFILE},     {"cluster", 1, 0, O_CLUSTER},
        {"redis", 1, 0, O_REDIS},           {"no-leader", 0, 0, O_NOLEADER},     {"instance-id", 1, 0, O_ID},
        {"lease-ms", 1, 0, O_LEASE},        {"sync-ms", 1, 0, O_SYNC},           {"jwt-secret-file", 1, 0, O_SECRET},
        {"jwt-public-key", 1, 0, O_PUBKEY}, {"jwt-issuer", 1, 0, O_ISS},         {"jwt-audience", 1, 0, O_AUD},
        {"jwt-leeway-s", 1, 0, O_LEEWAY},   {"no-auth", 0, 0, O_NOAUTH},         {"cache-ttl-ms", 1, 0, O_TTL},
        {"cache-blocks", 1, 0, O_BLOCKS},   {"help", 0, 0, O_HELP},              {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_LISTEN: cfg.listen = optarg; break;
        case O_PORTFILE: cfg.port_file = optarg; break;
        case O_CLUSTER: cfg.cluster = optarg; break;
        case O_REDIS: cfg.redis = optarg; break;
        case O_NOLEADER: cfg.redis = NULL; break;
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
