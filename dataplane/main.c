/* ibrain: command line for the data plane (include/ibrain/proxy.h). */
#include "ibrain/proxy.h"
#include "ibrain/route.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    char policies[256];
    ib_policy_list(policies, sizeof(policies), " | ");
    fprintf(f,
            "usage: ibrain --replica NAME=HOST:PORT [--replica ...] [options]\n"
            "  --listen HOST:PORT          address to serve on (default 127.0.0.1:8080; port 0 = any free port)\n"
            "  --port-file FILE            write the bound port here once listening\n"
            "  --workers N                 worker threads, one io_uring each (default: one per CPU)\n"
            "  --replica NAME=HOST:PORT    an inference replica (repeatable)\n"
            "  --model NAME                a model listed by GET /v1/models (repeatable)\n"
            "  --max-head-bytes N          request line + headers limit, 431 above (default 16384)\n"
            "  --max-body-bytes N          request body limit, 413 above (default 8388608)\n"
            "  --header-timeout-ms N       time allowed for a request head and body, 408 after (default 10000)\n"
            "  --idle-timeout-ms N         keep-alive idle time (default 60000)\n"
            "  --upstream-timeout-ms N     longest silence from a replica, 504 after (default 300000)\n"
            "  --send-timeout-ms N         a client that accepts no byte of its answer this long is closed and\n"
            "                              its exchange abandoned, freeing the replica's slot (default 60000)\n"
            "  --connect-timeout-ms N      replica connect timeout (default 3000)\n"
            "  --drain-timeout-ms N        on SIGTERM, finish in-flight requests for at most this long (default 10000)\n"
            "  --drain-idle-ms N           on SIGTERM, keep-alive connections stay open this long: a request on one\n"
            "                              is served and answered with Connection: close, so that clients move to\n"
            "                              another router without a failed request (default 1000)\n"
            "  --busy-poll-us N            a worker with nothing to do polls its ring this long before it sleeps,\n"
            "                              yielding the core between polls: lower latency at light load, for CPU\n"
            "                              (default 50; 0: sleep at once)\n"
            "  --upstream-recv MODE        auto | multishot | single: how replies are received from replicas; auto is\n"
            "                              multishot from Linux 6.8, single-shot before (default auto)\n"
            "  --eject-after N             consecutive failures that eject a replica (default 3)\n"
            "  --eject-ms N                first ejection time, doubling per ejection up to 32x (default 2000)\n"
            "  --max-conns-per-worker N    client connections per worker; at the cap the longest-idle keep-alive\n"
            "                              connection makes room, else the new one is told 503 (default 16384)\n"
            "  --max-buffer-mb N           what client connections may hold in buffers (bodies, upstream copies,\n"
            "                              unsent answers), all workers together: above it new proxied requests get\n"
            "                              503 with Retry-After and relays keep 64 KiB a client (default: half of\n"
            "                              what the cgroup's memory limit leaves after the receive buffers and the\n"
            "                              affinity table; none without a limit; 0: none)\n"
            "  --abort-on-client-close     a client's EOF abandons its proxied request, sparing the replica the rest\n"
            "                              of its generation (default: answer it, as a half-close asks)\n"
            "  --admin-listen HOST:PORT    a listener for /health, /ready, /metrics and /v1/models only, not counted\n"
            "                              against the cap (--admin-port-file F writes its port)\n"
            "  --engine-metrics-ms N       GET /metrics of every replica this often: the engine's own running and\n"
            "                              waiting requests (vLLM's or SGLang's names) count in its load (default 500,\n"
            "                              0: off)\n"
            "  --probe-ms N                GET /health of every replica this often (and within it); --eject-after\n"
            "                              failures in a row mark it unresponsive: its requests go elsewhere (default\n"
            "                              1000; 0: off)\n"
            "routing (the replicas' workload):\n"
            "  --policy NAME               %s (default %s)\n"
            "  --template NAME             chat template the engines apply: chatml (qwen3) | llama3 | plain (default chatml)\n"
            "  --block-bytes N             without a tokenizer: prefix block size in bytes, the engines' block size x 4\n"
            "                              (default 64)\n"
            "  --tokenizer FILE            tokenizer.json (Llama 3, Qwen3 byte-level BPE): prefix blocks in tokens,\n"
            "                              prompt token counts, context length checks\n"
            "  --block-tokens N            with a tokenizer: prefix block size in tokens, the engines' block size (default 16)\n"
            "  --context-length N          with a tokenizer: prompt + max_tokens above N is refused with a 400\n"
            "                              context_length_exceeded (default 0: no check)\n"
            "routing snapshot from Redis (workloads and replicas; replaces the flags above once one arrives):\n"
            "  --redis HOST:PORT           read the snapshot from this Redis (key ib:snapshot, channel ib:snapshot:changed)\n"
            "  --redis-sentinel HOST:PORT  a Redis Sentinel (repeatable); the master comes from them and is followed\n"
            "  --redis-master NAME         the sentinels' master name\n"
            "  --redis-reread-ms N         re-read the snapshot this often anyway (default 2000)\n"
            "  --instance-id NAME          this ibrain's name in write-back batches (default HOST-PID-RANDOM)\n"
            "  --no-writeback              do not share routed prefixes and load with other ibrain instances\n"
            "                              (shared by default through the Redis stream ib:affinity, every 100 ms)\n"
            "  --cache-blocks N            each replica's prefix cache capacity in blocks (default 65536)\n"
            "  --cache-ttl-ms N            the engines' cache TTL, 0 for none (default 0)\n"
            "  --affinity-sets-log2 N      affinity table size: 2^N sets of 8 slots (default 17)\n"
            "  --min-match-pct N           affinity: a cached prefix shorter than N%% of the prompt counts as no match\n"
            "                              (default 50)\n"
            "  --kv-events NAME=ENDPOINT[,REPLAY[,TOPIC]]\n"
            "                              route replica NAME on its engine's KV-cache events (vLLM's ZMQ publisher:\n"
            "                              its endpoint, its replay endpoint, its topic); needs --tokenizer and\n"
            "                              --block-tokens equal to the engine's block size (repeatable)\n",
            policies, ib_policy_name(IB_POLICY_AFFINITY));
}

enum {
    O_LISTEN = 1, O_PORTFILE, O_WORKERS, O_REPLICA, O_MODEL, O_HEAD, O_BODY, O_HT, O_IT, O_UT, O_CT, O_DT, O_EA,
    O_EM, O_PROBE, O_POLICY, O_TEMPLATE, O_BLOCK, O_CBLOCKS, O_TTL, O_SETS, O_MINMATCH, O_TOKENIZER, O_BTOK, O_CTX,
    O_BUSY, O_REDIS, O_SENTINEL, O_MASTER, O_REREAD, O_INSTANCE, O_NOWB, O_MAXCONNS, O_MAXBUF, O_ADMIN, O_ADMINPORT, O_ABORTCLOSE, O_HELP,
    O_DIDLE, O_ST, O_KVEV, O_EMETRICS, O_UPRECV
};

static const struct option opts[] = {
    {"listen", 1, 0, O_LISTEN},           {"port-file", 1, 0, O_PORTFILE},      {"workers", 1, 0, O_WORKERS},
    {"replica", 1, 0, O_REPLICA},         {"model", 1, 0, O_MODEL},             {"max-head-bytes", 1, 0, O_HEAD},
    {"max-body-bytes", 1, 0, O_BODY},     {"header-timeout-ms", 1, 0, O_HT},    {"idle-timeout-ms", 1, 0, O_IT},
    {"upstream-timeout-ms", 1, 0, O_UT},  {"connect-timeout-ms", 1, 0, O_CT},   {"drain-timeout-ms", 1, 0, O_DT},
    {"eject-after", 1, 0, O_EA},          {"eject-ms", 1, 0, O_EM},             {"probe-ms", 1, 0, O_PROBE},
    {"policy", 1, 0, O_POLICY},           {"template", 1, 0, O_TEMPLATE},       {"block-bytes", 1, 0, O_BLOCK},
    {"cache-blocks", 1, 0, O_CBLOCKS},    {"cache-ttl-ms", 1, 0, O_TTL},        {"affinity-sets-log2", 1, 0, O_SETS},
    {"min-match-pct", 1, 0, O_MINMATCH},  {"tokenizer", 1, 0, O_TOKENIZER},    {"block-tokens", 1, 0, O_BTOK},
    {"context-length", 1, 0, O_CTX},      {"redis", 1, 0, O_REDIS},            {"redis-sentinel", 1, 0, O_SENTINEL},
    {"redis-master", 1, 0, O_MASTER},     {"redis-reread-ms", 1, 0, O_REREAD}, {"instance-id", 1, 0, O_INSTANCE},
    {"no-writeback", 0, 0, O_NOWB},       {"busy-poll-us", 1, 0, O_BUSY},      {"max-conns-per-worker", 1, 0, O_MAXCONNS}, {"max-buffer-mb", 1, 0, O_MAXBUF},
    {"admin-listen", 1, 0, O_ADMIN},      {"admin-port-file", 1, 0, O_ADMINPORT}, {"help", 0, 0, O_HELP},
    {"abort-on-client-close", 0, 0, O_ABORTCLOSE}, {"drain-idle-ms", 1, 0, O_DIDLE}, {"send-timeout-ms", 1, 0, O_ST},
    {"kv-events", 1, 0, O_KVEV},          {"engine-metrics-ms", 1, 0, O_EMETRICS}, {"upstream-recv", 1, 0, O_UPRECV},
    {0, 0, 0, 0}};

/* An option that takes a string or a list entry: 1 when taken, 0 when <c> is not one,
 * -1 when refused (a message said why). */
static int text_option(ib_proxy_config_t *cfg, int c, const char *arg)
{
    switch (c) {
    case O_LISTEN: cfg->listen = arg; return 1;
    case O_PORTFILE: cfg->port_file = arg; return 1;
    case O_POLICY: cfg->policy = arg; return 1;
    case O_TEMPLATE: cfg->chat_template = arg; return 1;
    case O_TOKENIZER: cfg->tokenizer = arg; return 1;
    case O_REDIS: cfg->redis = arg; return 1;
    case O_INSTANCE: cfg->instance_id = arg; return 1;
    case O_MASTER: cfg->redis_master = arg; return 1;
    case O_ADMIN: cfg->admin_listen = arg; return 1;
    case O_ADMINPORT: cfg->admin_port_file = arg; return 1;
    case O_UPRECV: cfg->upstream_recv = arg; return 1;
    case O_NOWB: cfg->no_writeback = 1; return 1;
    case O_ABORTCLOSE: cfg->abort_on_client_close = 1; return 1;
    case O_SENTINEL:
        if (cfg->nredis_sentinels == 8) {
            fprintf(stderr, "ibrain: at most 8 --redis-sentinel\n");
            return -1;
        }
        cfg->redis_sentinels[cfg->nredis_sentinels++] = arg;
        return 1;
    case O_REPLICA:
        if (cfg->nreplicas == IB_MAX_REPLICAS) {
            fprintf(stderr, "ibrain: at most %d replicas\n", IB_MAX_REPLICAS);
            return -1;
        }
        cfg->replica_specs[cfg->nreplicas++] = arg;
        return 1;
    case O_KVEV:
        if (cfg->nkv == IB_MAX_REPLICAS) {
            fprintf(stderr, "ibrain: at most %d --kv-events\n", IB_MAX_REPLICAS);
            return -1;
        }
        cfg->kv_specs[cfg->nkv++] = arg;
        return 1;
    case O_MODEL:
        if (cfg->nmodels == IB_MAX_MODELS) {
            fprintf(stderr, "ibrain: at most %d models\n", IB_MAX_MODELS);
            return -1;
        }
        cfg->models[cfg->nmodels++] = arg;
        return 1;
    default: return 0;
    }
}

/* An option that takes a number <v>. */
static void number_option(ib_proxy_config_t *cfg, int c, unsigned long long v)
{
    switch (c) {
    case O_WORKERS: cfg->workers = (uint32_t)v; break;
    case O_HEAD: cfg->max_head_bytes = v; break;
    case O_BODY: cfg->max_body_bytes = v; break;
    case O_HT: cfg->header_timeout_ms = (uint32_t)v; break;
    case O_IT: cfg->idle_timeout_ms = (uint32_t)v; break;
    case O_UT: cfg->upstream_timeout_ms = (uint32_t)v; break;
    case O_CT: cfg->connect_timeout_ms = (uint32_t)v; break;
    case O_DT: cfg->drain_timeout_ms = (uint32_t)v; break;
    case O_DIDLE: cfg->drain_idle_ms = (uint32_t)v; break;
    case O_ST: cfg->send_timeout_ms = (uint32_t)(v ? v : 1); break;
    case O_BUSY: cfg->busy_poll_us = (uint32_t)(v < 1000000 ? v : 1000000); break;
    case O_EA: cfg->eject_after_failures = (uint32_t)(v ? v : 1); break;
    case O_EM: cfg->eject_ms = (uint32_t)v; break;
    case O_PROBE: cfg->probe_ms = (uint32_t)v; break;
    case O_EMETRICS: cfg->engine_metrics_ms = (uint32_t)v; break;
    case O_MAXCONNS: cfg->max_conns_per_worker = (uint32_t)(v ? v : 1); break;
    case O_MAXBUF: cfg->max_buffer_bytes = v == 0 ? UINT64_MAX : (uint64_t)v << 20; break; /* 0: none */
    case O_BLOCK: cfg->block_bytes = (uint32_t)v; break;
    case O_BTOK: cfg->block_tokens = (uint32_t)v; break;
    case O_CTX: cfg->context_length = (uint32_t)v; break;
    case O_REREAD: cfg->redis_reread_ms = (uint32_t)(v ? v : 1); break;
    case O_CBLOCKS: cfg->cache_blocks = (uint32_t)v; break;
    case O_TTL: cfg->cache_ttl_ms = (uint32_t)v; break;
    case O_SETS: cfg->affinity_sets_log2 = (uint32_t)v; break;
    case O_MINMATCH: cfg->min_match_pct = (uint32_t)(v <= 100 ? v : 100); break;
    }
}

/* jemalloc (linked in release builds) reads this at its start: memory freed by a client's
 * buffers goes back to the system within about a second instead of ten, so that a burst of
 * large bodies leaves no resident memory behind it (a cgroup's limit counts it). */
const char *malloc_conf = "dirty_decay_ms:1000,muzzy_decay_ms:0";

int main(int argc, char **argv)
{
    ib_proxy_config_t cfg;
    ib_proxy_config_defaults(&cfg);
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == O_HELP) {
            usage(stdout);
            return 0;
        }
        if (c == '?') {
            usage(stderr);
            return 2;
        }
        int taken = text_option(&cfg, c, optarg);
        if (taken < 0)
            return 2;
        if (taken)
            continue;
        char *end;
        unsigned long long v = strtoull(optarg, &end, 10);
        if (*optarg == '\0' || *optarg == '-' || *end != '\0' || v > (1ull << 31)) {
            fprintf(stderr, "ibrain: %s wants a non-negative integer, got '%s'\n", argv[optind - 1], optarg);
            return 2;
        }
        number_option(&cfg, c, v);
    }
    if (optind < argc) {
        fprintf(stderr, "ibrain: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    ib_proxy_t *px = ib_proxy_create(&cfg);
    if (px == NULL)
        return 1;
    int rc = ib_proxy_run(px);
    ib_proxy_destroy(px);
    return rc;
}
