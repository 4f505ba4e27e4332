/* ibrain's proxy: configuration, listeners, worker threads, replica choice and passive
 * health (include/ibrain/proxy.h). */
#include "internal.h"

#include "ibrain/clock.h"
#include "ibrain/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The memory limit of this process's cgroup (v1 memory.limit_in_bytes, v2 memory.max), or
 * 0 when there is none: a container's limit, which the kernel enforces by killing. */
static uint64_t cgroup_memory_limit(void)
{
    FILE *f = fopen("/proc/self/cgroup", "r");
    if (f == NULL)
        return 0;
    char line[512], path[600];
    uint64_t limit = 0;
    while (limit == 0 && fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (c2 == NULL)
            continue;
        const char *file[2];
        if (strncmp(c1 + 1, "memory:", 7) == 0 || strstr(c1 + 1, ",memory:") != NULL) {
            file[0] = "/sys/fs/cgroup/memory%s/memory.limit_in_bytes";
            file[1] = NULL;
        } else if (c2 == c1 + 1 && strncmp(line, "0:", 2) == 0) {
            file[0] = "/sys/fs/cgroup%s/memory.max";
            file[1] = "/sys/fs/cgroup/unified%s/memory.max";
        } else {
            continue;
        }
        for (int i = 0; i < 2 && file[i] != NULL && limit == 0; i++) {
            snprintf(path, sizeof(path), file[i], strcmp(c2 + 1, "/") == 0 ? "" : c2 + 1);
            FILE *m = fopen(path, "r");
            unsigned long long v;
            if (m != NULL && fscanf(m, "%llu", &v) == 1 && v < (1ull << 60)) /* "max" or v1's huge "none" */
                limit = v;
            if (m != NULL)
                fclose(m);
        }
    }
    fclose(f);
    return limit;
}

uint64_t ib_default_buffer_budget(uint32_t workers, uint32_t affinity_sets_log2)
{
    uint64_t limit = cgroup_memory_limit();
    if (limit == 0)
        return UINT64_MAX;
    /* What ibrain holds whatever its clients do: the provided receive buffers (16 MiB a
     * worker), an affinity table (64 bytes a set) and about 16 MiB of the rest. */
    uint64_t fixed = (uint64_t)workers * (16u << 20) + (64ull << affinity_sets_log2) + (16u << 20);
    uint64_t half = limit > fixed ? (limit - fixed) / 2 : 0;
    return half > limit / 8 ? half : limit / 8;
}

void ib_proxy_config_defaults(ib_proxy_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "127.0.0.1:8080";
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->workers = n > 0 ? (uint32_t)(n < IB_MAX_WORKERS ? n : IB_MAX_WORKERS) : 1;
    cfg->max_head_bytes = 16384;
    cfg->max_body_bytes = 8u << 20;
    cfg->header_timeout_ms = 10000;
    cfg->idle_timeout_ms = 60000;
    cfg->upstream_timeout_ms = 300000;
    cfg->connect_timeout_ms = 3000;
    cfg->drain_timeout_ms = 10000;
    cfg->drain_idle_ms = 1000;
    cfg->send_timeout_ms = 60000;
    cfg->busy_poll_us = 50;
    cfg->eject_after_failures = 3;
    cfg->eject_ms = 2000;
    cfg->probe_ms = 1000;
    cfg->engine_metrics_ms = 500;
    cfg->max_conns_per_worker = 16384;
    cfg->max_buffer_bytes = 0; /* from the cgroup, at ib_proxy_create */
    cfg->policy = "affinity";
    cfg->chat_template = "chatml";
    cfg->block_bytes = 64;        /* the mock engine's default: 16-token blocks x 4 bytes */
    cfg->block_tokens = 16;       /* vLLM's and the mock engine's default block size */
    cfg->cache_blocks = 65536;    /* the mock engine's default capacity */
    cfg->cache_ttl_ms = 0;
    cfg->affinity_sets_log2 = 17; /* 1M slots, 8 MiB */
    cfg->min_match_pct = 50;
}

static int64_t sum_slots(const ib_inflight_slot_t *slots, uint32_t nworkers)
{
    int64_t sum = 0;
    for (uint32_t i = 0; i < nworkers; i++)
        sum += atomic_load_explicit(&((ib_inflight_slot_t *)&slots[i])->v, memory_order_relaxed);
    return sum;
}

int64_t ib_replica_inflight(const ib_replica_t *r, uint32_t nworkers) { return sum_slots(r->inflight, nworkers); }
int64_t ib_replica_pending(const ib_replica_t *r, uint32_t nworkers) { return sum_slots(r->pending, nworkers); }

int ib_replica_healthy(const ib_replica_t *r, uint64_t now_ns)
{
    ib_replica_t *m = (ib_replica_t *)r;
    return atomic_load_explicit(&m->ejected_until_ns, memory_order_relaxed) <= now_ns &&
           !atomic_load_explicit(&m->unresponsive, memory_order_relaxed);
}

void ib_replica_ok(ib_proxy_t *px, ib_replica_t *r)
{
    (void)px;
    if (atomic_load_explicit(&r->consecutive_failures, memory_order_relaxed) != 0)
        atomic_store_explicit(&r->consecutive_failures, 0, memory_order_relaxed);
}

void ib_replica_failed(ib_proxy_t *px, ib_replica_t *r, uint64_t now_ns)
{
    uint32_t fails = atomic_fetch_add_explicit(&r->consecutive_failures, 1, memory_order_relaxed) + 1;
    if (fails < px->cfg.eject_after_failures)
        return;
    /* Eject for eject_ms x 2^(ejections so far), at most 32x; the failure count restarts
     * so that the replica gets a fresh chance when the ejection ends. */
    uint64_t k = atomic_fetch_add_explicit(&r->ejections, 1, memory_order_relaxed);
    uint64_t ms = (uint64_t)px->cfg.eject_ms << (k < 5 ? k : 5);
    atomic_store_explicit(&r->ejected_until_ns, now_ns + ms * 1000000ull, memory_order_relaxed);
    atomic_store_explicit(&r->consecutive_failures, 0, memory_order_relaxed);
}

int ib_proxy_pick(ib_proxy_t *px, ib_worker_t *w, const uint64_t *cand, const uint64_t *avoid)
{
    uint64_t now = ib_now_ns();
    int fallback = -1;
    uint32_t n = atomic_load_explicit(&px->nslots, memory_order_acquire);
    if (n == 0)
        return -1;
    int64_t load[IB_MAX_REPLICAS];
    uint8_t usable[IB_MAX_REPLICAS];
    for (uint32_t i = 0; i < n; i++) {
        ib_replica_t *r = &px->replicas[i];
        usable[i] = ib_mask_has(cand, i) && ib_replica_healthy(r, now);
        if (usable[i] && avoid != NULL && ib_mask_has(avoid, i)) {
            fallback = (int)i; /* tried already: only when nothing else is usable */
            usable[i] = 0;
        }
        load[i] = usable[i] ? ib_replica_inflight(r, px->nworkers) : 0;
    }
    /* Ties spread uniformly (a rotation over all slots gave a lost replica's turns to its
     * neighbour). */
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    int best = ib_route_least(load, usable, n, w->rng);
    if (best < 0 && fallback < 0 && avoid == NULL) {
        /* Every candidate is ejected or unresponsive: try the one whose ejection ends
         * first (ties, such as replicas all unresponsive and none ejected, spread at
         * random) rather than failing every request until then. */
        for (uint32_t i = 0; i < n; i++) {
            usable[i] = ib_mask_has(cand, i);
            uint64_t until = atomic_load_explicit(&px->replicas[i].ejected_until_ns, memory_order_relaxed);
            load[i] = until > now ? (int64_t)((until - now) / 1000000) : 0;
        }
        best = ib_route_least(load, usable, n, w->rng >> 1);
    }
    return best >= 0 ? best : fallback;
}

static int parse_replica(const char *spec, ib_replica_t *r)
{
    const char *eq = strchr(spec, '=');
    const char *addr = eq ? eq + 1 : spec;
    size_t namelen = eq ? (size_t)(eq - spec) : strlen(spec);
    if (namelen == 0 || namelen >= sizeof(r->name) || strlen(addr) >= sizeof(r->hostport))
        return -1;
    memcpy(r->name, spec, namelen);
    r->name[namelen] = '\0';
    for (size_t i = 0; i < namelen; i++)
        if (!((r->name[i] >= 'a' && r->name[i] <= 'z') || (r->name[i] >= 'A' && r->name[i] <= 'Z') ||
              (r->name[i] >= '0' && r->name[i] <= '9') || strchr("-_.:", r->name[i])))
            return -1;
    snprintf(r->hostport, sizeof(r->hostport), "%s", addr);
    if (ib_parse_hostport(addr, &r->addr) != 0 || r->addr.sin_port == 0)
        return -1;
    return 0;
}

static int bind_listener(const struct sockaddr_in *sa)
{
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)sa, sizeof(*sa)) != 0 || listen(fd, 4096) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* The admin listener, its port written to admin_port_file. -1 with a message. */
static int bind_admin(const ib_proxy_config_t *cfg)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = -1;
    if (ib_parse_hostport(cfg->admin_listen, &sa) != 0 || (fd = bind_listener(&sa)) < 0 ||
        getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
        fprintf(stderr, "ibrain: cannot listen on --admin-listen %s: %s\n", cfg->admin_listen, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (cfg->admin_port_file != NULL && ib_write_port_file(cfg->admin_port_file, ntohs(sa.sin_port)) != 0) {
        fprintf(stderr, "ibrain: cannot write %s: %s\n", cfg->admin_port_file, strerror(errno));
        close(fd);
        return -1;
    }
    fprintf(stderr, "ibrain: admin listener (/health /ready /metrics /v1/models) on port %u\n", ntohs(sa.sin_port));
    return fd;
}

/* The line that says what a new proxy serves, and how. */
static void log_listening(const ib_proxy_t *px, const struct sockaddr_in *sa)
{
    const ib_proxy_config_t *cfg = &px->cfg;
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa->sin_addr, ip, sizeof(ip));
    char blocks[48];
    const ib_rtab_t *rt = atomic_load(&px->rtab);
    if (rt->nworkloads > 0 && rt->wl[0].tokenizer != NULL)
        snprintf(blocks, sizeof(blocks), "%u-token blocks", cfg->block_tokens);
    else
        snprintf(blocks, sizeof(blocks), "%u-byte blocks", cfg->block_bytes);
    if (rt->nworkloads > 0)
        fprintf(stderr, "ibrain: listening on %s:%u with %u workers, %u replicas, policy %s, template %s, %s\n", ip,
                px->port, px->nworkers, cfg->nreplicas, ib_policy_name(rt->wl[0].router->policy),
                ib_chat_template_name(rt->wl[0].tpl), blocks);
    else
        fprintf(stderr, "ibrain: listening on %s:%u with %u workers; replicas come from the Redis snapshot\n", ip,
                px->port, px->nworkers);
}

ib_proxy_t *ib_proxy_create(const ib_proxy_config_t *cfg)
{
    ib_proxy_t *px = calloc(1, sizeof(*px));
    if (px == NULL)
        return NULL;
    px->cfg = *cfg;
    if (px->cfg.max_buffer_bytes == 0)
        px->cfg.max_buffer_bytes = ib_default_buffer_budget(cfg->workers, cfg->affinity_sets_log2);
    px->started_unix = (uint64_t)time(NULL);
    if (cfg->workers == 0 || cfg->workers > IB_MAX_WORKERS) {
        fprintf(stderr, "ibrain: --workers must be 1..%d\n", IB_MAX_WORKERS);
        goto Error;
    }
    int use_redis = (cfg->redis != NULL && cfg->redis[0] != '\0') || cfg->nredis_sentinels > 0;
    if (cfg->nreplicas == 0 && !use_redis) {
        fprintf(stderr, "ibrain: no replica: give at least one --replica NAME=HOST:PORT, or --redis\n");
        goto Error;
    }
    if (cfg->block_bytes == 0 || cfg->block_tokens == 0 || cfg->cache_blocks == 0 || cfg->affinity_sets_log2 > 26) {
        fprintf(stderr, "ibrain: bad routing settings (block sizes and cache blocks > 0, affinity sets <= 2^26)\n");
        goto Error;
    }
    if (ib_upstream_recv_mode(cfg->upstream_recv, &px->upstream_multishot) != 0) {
        fprintf(stderr, "ibrain: --upstream-recv is auto, multishot or single, got '%s'\n", cfg->upstream_recv);
        goto Error;
    }
    pthread_mutex_init(&px->rtab_lock, NULL);
    px->rtab_lock_ready = 1;
    px->replicas = aligned_alloc(64, sizeof(ib_replica_t) * IB_MAX_REPLICAS);
    if (px->replicas == NULL)
        goto Error;
    memset(px->replicas, 0, sizeof(ib_replica_t) * IB_MAX_REPLICAS);
    px->kv_ep = calloc(IB_MAX_REPLICAS, sizeof(*px->kv_ep));
    px->kv_stats = aligned_alloc(64, sizeof(ib_kv_stats_t) * IB_MAX_REPLICAS);
    if (px->kv_ep == NULL || px->kv_stats == NULL)
        goto Error;
    memset(px->kv_stats, 0, sizeof(ib_kv_stats_t) * IB_MAX_REPLICAS);
    for (uint32_t i = 0; i < cfg->nreplicas; i++) {
        if (parse_replica(cfg->replica_specs[i], &px->replicas[i]) != 0) {
            fprintf(stderr, "ibrain: --replica wants NAME=IPV4:PORT (name of [A-Za-z0-9._:-]), got '%s'\n",
                    cfg->replica_specs[i]);
            goto Error;
        }
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(px->replicas[j].name, px->replicas[i].name) == 0) {
                fprintf(stderr, "ibrain: replica name '%s' given twice\n", px->replicas[i].name);
                goto Error;
            }
        atomic_store(&px->replicas[i].in_use, 1);
    }
    atomic_store(&px->nslots, cfg->nreplicas);
    for (uint32_t i = 0; i < cfg->nkv; i++) {
        char name[64];
        ib_kv_endpoint_t ep;
        uint32_t k = 0;
        if (ib_kv_parse_spec(cfg->kv_specs[i], name, sizeof(name), &ep) != 0) {
            fprintf(stderr, "ibrain: --kv-events wants NAME=ENDPOINT[,REPLAY[,TOPIC]] with ZMQ endpoints "
                            "(tcp://HOST:PORT, ipc://PATH), got '%s'\n", cfg->kv_specs[i]);
            goto Error;
        }
        while (k < cfg->nreplicas && strcmp(px->replicas[k].name, name) != 0)
            k++;
        if (k == cfg->nreplicas) {
            fprintf(stderr, "ibrain: --kv-events names '%s', which no --replica is\n", name);
            goto Error;
        }
        px->kv_ep[k] = ep;
    }
    if (ib_rtab_init_static(px) != 0)
        goto Error;
    if (cfg->instance_id != NULL && cfg->instance_id[0] != '\0') {
        snprintf(px->instance, sizeof(px->instance), "%s", cfg->instance_id);
    } else {
        char host[40] = "ibrain";
        gethostname(host, sizeof(host) - 1);
        host[sizeof(host) - 1] = '\0';
        snprintf(px->instance, sizeof(px->instance), "%s-%d-%04llx", host, (int)getpid(),
                 (unsigned long long)(ib_now_ns() & 0xffff));
    }
    px->wb_last_id[0] = '\0'; /* set at the first tick (writeback.c) */

    ib_raise_nofile();
    struct sockaddr_in sa;
    if (ib_parse_hostport(cfg->listen, &sa) != 0) {
        fprintf(stderr, "ibrain: --listen wants IPV4:PORT, got '%s'\n", cfg->listen);
        goto Error;
    }
    px->workers = calloc(cfg->workers, sizeof(*px->workers));
    if (px->workers == NULL)
        goto Error;
    int admin_fd = -1;
    if (cfg->admin_listen != NULL && (admin_fd = bind_admin(cfg)) < 0)
        goto Error;
    for (uint32_t i = 0; i < cfg->workers; i++) {
        /* Port 0: the first listener picks the port, the others join it (SO_REUSEPORT). */
        int fd = bind_listener(&sa);
        if (fd < 0) {
            fprintf(stderr, "ibrain: cannot listen on %s: %s\n", cfg->listen, strerror(errno));
            goto Error;
        }
        if (i == 0) {
            socklen_t len = sizeof(sa);
            getsockname(fd, (struct sockaddr *)&sa, &len);
            px->port = ntohs(sa.sin_port);
        }
        px->workers[i].listen_fd = fd;
        px->workers[i].admin_fd = i == 0 ? admin_fd : -1; /* worker 0 owns it */
        px->nworkers = i + 1;
        if (ib_worker_init(&px->workers[i], px, i) != 0) {
            fprintf(stderr, "ibrain: worker %u: io_uring setup failed: %s\n", i, strerror(errno));
            goto Error;
        }
    }
    if (cfg->port_file != NULL && ib_write_port_file(cfg->port_file, px->port) != 0) {
        fprintf(stderr, "ibrain: cannot write %s: %s\n", cfg->port_file, strerror(errno));
        goto Error;
    }
    log_listening(px, &sa);
    return px;
Error:
    ib_proxy_destroy(px);
    return NULL;
}

static int cfg_redis(const ib_proxy_t *px)
{
    return (px->cfg.redis != NULL && px->cfg.redis[0] != '\0') || px->cfg.nredis_sentinels > 0;
}

int ib_proxy_run(ib_proxy_t *px)
{
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &mask, NULL); /* inherited by the workers */
    signal(SIGPIPE, SIG_IGN);
    for (uint32_t i = 0; i < px->nworkers; i++) {
        if (pthread_create(&px->workers[i].thread, NULL, ib_worker_main, &px->workers[i]) != 0) {
            fprintf(stderr, "ibrain: cannot start worker %u\n", i);
            atomic_store(&px->stopping, 1);
            for (uint32_t j = 0; j < i; j++) {
                uint64_t one = 1;
                (void)!write(px->workers[j].wake_fd, &one, sizeof(one));
                pthread_join(px->workers[j].thread, NULL);
            }
            return 1;
        }
    }
    if ((cfg_redis(px))) {
        ib_sync_config_t sc = {.redis = px->cfg.redis, .nsentinels = px->cfg.nredis_sentinels,
                               .master_name = px->cfg.redis_master, .reread_ms = px->cfg.redis_reread_ms,
                               .tick = px->cfg.no_writeback ? NULL : ib_writeback_tick, .tick_ms = 100};
        for (uint32_t i = 0; i < sc.nsentinels; i++)
            sc.sentinels[i] = px->cfg.redis_sentinels[i];
        px->sync = ib_sync_start(&sc, ib_rtab_apply_snapshot, px, &px->sync_status);
        if (px->sync == NULL) {
            atomic_store(&px->stopping, 1);
            for (uint32_t i = 0; i < px->nworkers; i++) {
                uint64_t one = 1;
                (void)!write(px->workers[i].wake_fd, &one, sizeof(one));
                pthread_join(px->workers[i].thread, NULL);
            }
            return 1;
        }
    }
    if ((cfg_redis(px) || px->cfg.nkv > 0) && ib_kv_start(px) != 0)
        fprintf(stderr, "ibrain: cannot start the KV events thread; replicas are routed on the model only\n");
    if (ib_engine_load_start(px) != 0)
        fprintf(stderr, "ibrain: cannot start the engine-load reader; replicas are balanced on ibrain's counters\n");
    if (ib_probe_start(px) != 0)
        fprintf(stderr, "ibrain: cannot start the health prober; replicas are checked passively only\n");
    int sig = 0;
    sigwait(&mask, &sig);
    ib_probe_stop(px);
    ib_engine_load_stop(px);
    fprintf(stderr, "ibrain: %s: draining (at most %u ms)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
            px->cfg.drain_timeout_ms);
    ib_sync_stop(px->sync); /* no table changes while draining */
    px->sync = NULL;
    ib_kv_stop(px);
    atomic_store(&px->stopping, 1);
    for (uint32_t i = 0; i < px->nworkers; i++) {
        uint64_t one = 1;
        (void)!write(px->workers[i].wake_fd, &one, sizeof(one));
    }
    for (uint32_t i = 0; i < px->nworkers; i++)
        pthread_join(px->workers[i].thread, NULL);
    fprintf(stderr, "ibrain: stopped\n");
    return 0;
}

void ib_proxy_destroy(ib_proxy_t *px)
{
    if (px == NULL)
        return;
    for (uint32_t i = 0; i < px->nworkers; i++)
        ib_worker_destroy(&px->workers[i]);
    free(px->workers);
    free(px->replicas);
    free(px->kv_ep);
    free(px->kv_stats);
    ib_rtab_destroy(px);
    if (px->rtab_lock_ready)
        pthread_mutex_destroy(&px->rtab_lock);
    free(px);
}
