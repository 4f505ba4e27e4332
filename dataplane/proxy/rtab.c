/*
 * The routing table: workloads, their replicas (slots of px->replicas) and routers.
 *
 * Writers (start-up, then only the sync thread) build a new table, publish it with one
 * atomic pointer store, bump px->epoch and wake every worker; a worker echoes the epoch at
 * the top of each loop turn, when it holds no pointer into any table. Once every worker
 * has echoed the new epoch, the old table and whatever only it used (routers of removed
 * workloads) are freed. A replica slot is reused only when no table names it, nothing is
 * in flight on it, and every worker has moved on; pooled connections to a slot's previous
 * occupant are told apart by the slot's epoch.
 *
 * Asserted in debug and sanitizer builds: writers hold rtab_lock; a table is published
 * once, complete (every workload has a router, its slots within bounds), and the static
 * one first; px->epoch only grows and no worker echoes an epoch not yet published; a
 * table is freed only once every worker has echoed the epoch that replaced it; a retired
 * router is named by no published table.
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ibrain/clock.h"
#include "ibrain/net.h"

/* ---- invariants (for assert(): compiled out with NDEBUG) ---- */

#ifndef NDEBUG
/* 1 when rtab_lock is held, by the caller as writers are (a default mutex: trylock fails
 * while anyone holds it). */
static int rtab_locked(ib_proxy_t *px)
{
    if (pthread_mutex_trylock(&px->rtab_lock) != 0)
        return 1;
    pthread_mutex_unlock(&px->rtab_lock);
    return 0;
}

/* 1 when <rt> is complete: what a worker may read once it is published. */
static int rtab_complete(const ib_rtab_t *rt)
{
    for (uint32_t i = 0; i < rt->nworkloads; i++) {
        const ib_workload_rt_t *w = &rt->wl[i];
        if (w->router == NULL || w->router->ops == NULL || w->nslots > IB_MAX_REPLICAS ||
            w->max_slot > IB_MAX_REPLICAS)
            return 0;
        for (uint32_t k = 0; k < w->nslots; k++)
            if (w->slots[k] >= w->max_slot)
                return 0;
    }
    return 1;
}

/* 1 when some workload of <rt> routes with <r>. */
static int router_named(const ib_rtab_t *rt, const ib_router_t *r)
{
    for (uint32_t i = 0; rt != NULL && i < rt->nworkloads; i++)
        if (rt->wl[i].router == r)
            return 1;
    return 0;
}
#endif

/* 1 when every worker has echoed epoch <e> (been at the top of its loop since it was
 * published), so none holds a pointer into a table replaced before it. */
static int workers_passed(const ib_proxy_t *px, uint64_t e)
{
    for (uint32_t i = 0; i < px->nworkers; i++) {
        uint64_t seen = atomic_load(&px->workers[i].qs_epoch);
        assert(seen <= atomic_load(&px->epoch)); /* never an epoch not yet published */
        if (seen < e)
            return 0;
    }
    return 1;
}

/* ---- registries (writers only, under rtab_lock) ---- */

static ib_tokenizer_t *tokenizer_for(ib_proxy_t *px, const char *path)
{
    if (path == NULL || path[0] == '\0')
        return NULL;
    for (uint32_t i = 0; i < px->ntoks; i++)
        if (strcmp(px->toks[i].path, path) == 0)
            return px->toks[i].t;
    if (px->ntoks == IB_MAX_TOKENIZERS) {
        fprintf(stderr, "ibrain: more than %d tokenizers\n", IB_MAX_TOKENIZERS);
        return NULL;
    }
    char err[256];
    ib_tokenizer_t *t = ib_tokenizer_load(path, err, sizeof(err));
    if (t == NULL) {
        fprintf(stderr, "ibrain: tokenizer %s: %s\n", path, err);
        return NULL;
    }
    ib_tokenizer_info_t ti;
    ib_tokenizer_get_info(t, &ti);
    fprintf(stderr, "ibrain: tokenizer %s: %u tokens, %u merges, loaded in %.0f ms, %.1f MiB\n", path, ti.vocab_size,
            ti.nmerges, ti.load_ms, (double)ti.memory_bytes / (1 << 20));
    snprintf(px->toks[px->ntoks].path, sizeof(px->toks[px->ntoks].path), "%s", path);
    px->toks[px->ntoks++].t = t;
    return t;
}

/* The router of workload <id>: the existing one when its settings are unchanged (so the
 * affinity it learned survives a snapshot change), else a new one. */
static ib_router_t *router_for(ib_proxy_t *px, const char *id, ib_policy_t policy, uint32_t cache_blocks,
                               uint32_t ttl_ms, ib_router_t **retired)
{
    assert(rtab_locked(px));
    assert(ib_policy_ops(policy) != NULL);
    *retired = NULL;
    uint32_t i = 0;
    while (i < px->nrouters && strcmp(px->routers[i].id, id) != 0)
        i++;
    if (i < px->nrouters && px->routers[i].policy == policy && px->routers[i].cache_blocks == cache_blocks &&
        px->routers[i].ttl_ms == ttl_ms)
        return px->routers[i].router;
    if (i == IB_MAX_WORKLOADS + 1)
        return NULL;
    ib_router_t *r = calloc(1, sizeof(*r));
    if (r == NULL || ib_router_init(r, policy, IB_MAX_REPLICAS, px->cfg.affinity_sets_log2, cache_blocks, ttl_ms) != 0) {
        free(r);
        return NULL;
    }
    r->min_match = px->cfg.min_match_pct / 100.0;
    if (i < px->nrouters)
        *retired = px->routers[i].router; /* settings changed: the old one goes with the old table */
    else
        px->nrouters++;
    snprintf(px->routers[i].id, sizeof(px->routers[i].id), "%s", id);
    px->routers[i].policy = policy;
    px->routers[i].cache_blocks = cache_blocks;
    px->routers[i].ttl_ms = ttl_ms;
    px->routers[i].router = r;
    px->routers[i].serial = ++px->router_serials;
    assert(*retired != r);
    assert(r->policy == policy);
    return r;
}

static void free_router(ib_router_t *r)
{
    if (r != NULL) {
        ib_router_destroy(r);
        free(r);
    }
}

/* ---- slots ---- */

static int64_t slot_inflight(const ib_proxy_t *px, uint32_t i)
{
    return ib_replica_inflight(&px->replicas[i], px->nworkers);
}

static int slot_named(const ib_rtab_t *rt, uint32_t slot)
{
    if (rt == NULL)
        return 0;
    for (uint32_t w = 0; w < rt->nworkloads; w++)
        for (uint32_t k = 0; k < rt->wl[w].nslots; k++)
            if (rt->wl[w].slots[k] == slot)
                return 1;
    return 0;
}

/* The slot of replica <name> at <addr>: its current one, or a free one (filled in). -1 when
 * every slot is taken. */
static int slot_for(ib_proxy_t *px, const char *name, const char *addr, const ib_kv_endpoint_t *kv,
                    const ib_rtab_t *cur)
{
    uint32_t n = atomic_load(&px->nslots);
    for (uint32_t i = 0; i < n; i++) {
        ib_replica_t *r = &px->replicas[i];
        if (atomic_load(&r->in_use) && strcmp(r->name, name) == 0 && strcmp(r->hostport, addr) == 0) {
            px->kv_ep[i] = *kv; /* the events thread notices a change and subscribes again */
            return (int)i;
        }
    }
    for (uint32_t i = 0; i < IB_MAX_REPLICAS; i++) {
        ib_replica_t *r = &px->replicas[i];
        if (atomic_load(&r->in_use) || slot_named(cur, i))
            continue;
        if (i < n && slot_inflight(px, i) != 0)
            continue; /* its last requests are still running */
        struct sockaddr_in sa;
        if (ib_parse_hostport(addr, &sa) != 0)
            return -1;
        snprintf(r->name, sizeof(r->name), "%s", name);
        snprintf(r->hostport, sizeof(r->hostport), "%s", addr);
        r->addr = sa;
        atomic_store(&r->consecutive_failures, 0);
        atomic_store(&r->ejected_until_ns, 0);
        atomic_store(&r->unresponsive, 0);
        atomic_store(&r->hung, 0);
        atomic_store(&r->probe_failures, 0);
        atomic_store(&r->probe_timeouts, 0);
        atomic_store(&r->engine_scraped_ns, 0);
        atomic_store(&r->engine_scrape_errors, 0);
        px->kv_ep[i] = *kv;
        atomic_fetch_add(&r->epoch, 1); /* pooled connections to the previous occupant go */
        atomic_store(&r->in_use, 1);
        if (i >= n)
            atomic_store(&px->nslots, i + 1);
        return (int)i;
    }
    return -1;
}

/* ---- publishing ---- */

/* Publishes <next>, waits until every worker has left the previous table, and returns it;
 * *<epoch> is the epoch that published <next>. */
static ib_rtab_t *publish(ib_proxy_t *px, ib_rtab_t *next, uint64_t *epoch)
{
    assert(rtab_locked(px));
    assert(next != NULL);
    assert(rtab_complete(next));
    ib_rtab_t *prev = atomic_exchange(&px->rtab, next);
    assert(prev != next); /* a table is published once */
    uint64_t e = atomic_fetch_add(&px->epoch, 1) + 1;
    assert(e > 0);
    for (uint32_t i = 0; i < px->nworkers; i++) {
        uint64_t one = 1;
        (void)!write(px->workers[i].wake_fd, &one, sizeof(one));
    }
    for (int spins = 0; spins < 100000; spins++) { /* 10 s at most; a worker turns in < 100 ms */
        if (workers_passed(px, e) || atomic_load(&px->stopping))
            break;
        usleep(100);
    }
    *epoch = e;
    return prev;
}

/* Marks slots that no table names any more as free, once nothing runs on them. */
static void release_slots(ib_proxy_t *px, const ib_rtab_t *cur)
{
    uint32_t n = atomic_load(&px->nslots);
    for (uint32_t i = 0; i < n; i++)
        if (atomic_load(&px->replicas[i].in_use) && !slot_named(cur, i))
            atomic_store(&px->replicas[i].in_use, 0);
}

static void finish_workload(ib_workload_rt_t *w)
{
    w->max_slot = 0;
    for (uint32_t k = 0; k < w->nslots; k++)
        if (w->slots[k] + 1u > w->max_slot)
            w->max_slot = w->slots[k] + 1u;
}

int ib_rtab_init_static(ib_proxy_t *px)
{
    const ib_proxy_config_t *cfg = &px->cfg;
    ib_rtab_t *rt = calloc(1, sizeof(*rt) + (cfg->nreplicas ? sizeof(ib_workload_rt_t) : 0));
    if (rt == NULL)
        return -1;
    pthread_mutex_lock(&px->rtab_lock);
    assert(rtab_locked(px));
    int rc = -1;
    if (cfg->nreplicas > 0) {
        ib_workload_rt_t *w = &rt->wl[0];
        rt->nworkloads = 1;
        ib_policy_t policy;
        if (ib_policy_parse(cfg->policy, &policy) != 0) {
            char names[256];
            ib_policy_list(names, sizeof(names), ", ");
            fprintf(stderr, "ibrain: unknown --policy '%s' (%s)\n", cfg->policy, names);
            goto out;
        }
        if (ib_chat_template_parse(cfg->chat_template, &w->tpl) != 0) {
            fprintf(stderr, "ibrain: unknown --template '%s' (chatml, qwen3, llama3, plain)\n", cfg->chat_template);
            goto out;
        }
        if (cfg->tokenizer != NULL && cfg->tokenizer[0] != '\0' &&
            (w->tokenizer = tokenizer_for(px, cfg->tokenizer)) == NULL)
            goto out;
        w->block = w->tokenizer != NULL ? cfg->block_tokens : cfg->block_bytes;
        w->context_length = w->tokenizer != NULL ? cfg->context_length : 0;
        ib_router_t *retired;
        w->router = router_for(px, "", policy, cfg->cache_blocks, cfg->cache_ttl_ms, &retired);
        if (w->router == NULL) {
            fprintf(stderr, "ibrain: bad routing settings (cache blocks > 0, affinity sets <= 2^26)\n");
            goto out;
        }
        for (uint32_t i = 0; i < cfg->nreplicas; i++) {
            ib_replica_t *r = &px->replicas[i];
            if (atomic_load(&r->in_use) == 0)
                goto out;
            w->slots[w->nslots++] = (uint8_t)i;
            ib_mask_set(w->ready, i);
            ib_mask_set(rt->all_ready, i);
        }
        finish_workload(w);
    }
    /* The static table is the first: it replaces none, and no worker runs yet. */
    assert(atomic_load(&px->rtab) == NULL);
    assert(atomic_load(&px->epoch) == 0);
    assert(rtab_complete(rt));
    atomic_store(&px->rtab, rt);
    rt = NULL;
    rc = 0;
out:
    pthread_mutex_unlock(&px->rtab_lock);
    free(rt);
    return rc;
}

/* Fills <rt>'s workloads from <snap>'s, with their routers; routers replaced because their
 * settings changed are appended to <retired> (*<nretired>). 0, or -1 when a router cannot
 * be made (rt->nworkloads then counts those filled). */
static int snapshot_workloads(ib_proxy_t *px, const ib_snapshot_t *snap, ib_rtab_t *rt, ib_router_t **retired,
                              uint32_t *nretired)
{
    for (uint32_t i = 0; i < snap->nworkloads; i++) {
        const ib_snap_workload_t *sw = &snap->workloads[i];
        ib_workload_rt_t *w = &rt->wl[i];
        snprintf(w->id, sizeof(w->id), "%s", sw->id);
        snprintf(w->model, sizeof(w->model), "%s", sw->model);
        ib_policy_t policy = IB_POLICY_AFFINITY;
        if (sw->policy[0] != '\0')
            ib_policy_parse(sw->policy, &policy);
        w->tpl = IB_TEMPLATE_CHATML;
        if (sw->chat_template[0] != '\0')
            ib_chat_template_parse(sw->chat_template, &w->tpl);
        if (sw->tokenizer[0] != '\0' && (w->tokenizer = tokenizer_for(px, sw->tokenizer)) == NULL) {
            fprintf(stderr, "ibrain: snapshot %llu: workload %s: tokenizer unusable; routing it on bytes\n",
                    (unsigned long long)snap->version, sw->id);
        }
        uint32_t bs = sw->block_size ? sw->block_size : 16;
        w->block = w->tokenizer != NULL ? bs : bs * 4;
        w->context_length = w->tokenizer != NULL ? sw->context_length : 0;
        ib_router_t *old;
        w->router = router_for(px, sw->id, policy, sw->cache_blocks ? sw->cache_blocks : 65536, sw->cache_ttl_ms, &old);
        if (w->router == NULL)
            return -1;
        if (old != NULL) {
            assert(*nretired < IB_MAX_WORKLOADS + 1);
            retired[(*nretired)++] = old;
        }
        rt->nworkloads++;
    }
    return 0;
}

/* Places <snap>'s replicas into slots and into their workloads' slot lists in <rt>;
 * <cur> is the table still published. A replica that finds no free slot is left out. */
static void snapshot_replicas(ib_proxy_t *px, const ib_snapshot_t *snap, ib_rtab_t *rt, const ib_rtab_t *cur)
{
    for (uint32_t i = 0; i < snap->nreplicas; i++) {
        const ib_snap_replica_t *sr = &snap->replicas[i];
        uint32_t k = 0;
        while (strcmp(snap->workloads[k].id, sr->workload) != 0)
            k++; /* checked by ib_snapshot_check */
        ib_kv_endpoint_t kv;
        memset(&kv, 0, sizeof(kv));
        snprintf(kv.events, sizeof(kv.events), "%s", sr->kv_events);
        snprintf(kv.replay, sizeof(kv.replay), "%s", sr->kv_events_replay);
        snprintf(kv.topic, sizeof(kv.topic), "%s", sr->kv_events_topic);
        int slot = slot_for(px, sr->id, sr->address, &kv, cur);
        if (slot < 0) {
            fprintf(stderr, "ibrain: snapshot %llu: more than %d replicas; %s left out\n",
                    (unsigned long long)snap->version, IB_MAX_REPLICAS, sr->id);
            continue;
        }
        ib_workload_rt_t *w = &rt->wl[k];
        w->slots[w->nslots++] = (uint8_t)slot;
        if (!sr->draining) {
            ib_mask_set(w->ready, (uint32_t)slot);
            ib_mask_set(rt->all_ready, (uint32_t)slot);
        }
    }
    for (uint32_t i = 0; i < rt->nworkloads; i++)
        finish_workload(&rt->wl[i]);
}

/* Removes the routers of workloads <snap> no longer has from px->routers, appending them
 * to <retired> (*<nretired>). */
static void retire_gone_routers(ib_proxy_t *px, const ib_snapshot_t *snap, ib_router_t **retired, uint32_t *nretired)
{
    for (uint32_t i = 0; i < px->nrouters;) {
        uint32_t k = 0;
        while (k < snap->nworkloads && strcmp(snap->workloads[k].id, px->routers[i].id) != 0)
            k++;
        if (k == snap->nworkloads) {
            assert(*nretired < IB_MAX_WORKLOADS + 1);
            retired[(*nretired)++] = px->routers[i].router;
            px->routers[i] = px->routers[--px->nrouters];
        } else {
            i++;
        }
    }
}

/* Puts the router registry back as <saved> (<n> entries) after a snapshot failed half
 * way: the routers made for it (in the registry now, not in <saved>) are freed. */
static void rollback_routers(ib_proxy_t *px, const __typeof__(px->routers[0]) *saved, uint32_t n)
{
    for (uint32_t i = 0; i < px->nrouters; i++) {
        int kept = 0;
        for (uint32_t k = 0; k < n && !kept; k++)
            kept = saved[k].router == px->routers[i].router;
        if (!kept)
            free_router(px->routers[i].router);
    }
    memcpy(px->routers, saved, sizeof(px->routers));
    px->nrouters = n;
}

int ib_rtab_apply_snapshot(void *arg, const ib_snapshot_t *snap)
{
    ib_proxy_t *px = arg;
    ib_rtab_t *rt = calloc(1, sizeof(*rt) + snap->nworkloads * sizeof(ib_workload_rt_t));
    ib_router_t *retired[IB_MAX_WORKLOADS + 1];
    uint32_t nretired = 0;
    if (rt == NULL)
        return -1;
    if (snap->nworkloads > IB_MAX_WORKLOADS) { /* refused by ib_snapshot_check() before this */
        fprintf(stderr, "ibrain: snapshot %llu: more than IB_MAX_WORKLOADS (%d) workloads\n",
                (unsigned long long)snap->version, IB_MAX_WORKLOADS);
        free(rt);
        return -1;
    }
    pthread_mutex_lock(&px->rtab_lock);
    ib_rtab_t *cur = atomic_load(&px->rtab);
    rt->version = snap->version;
    int rc = -1;
    /* The registry as it was: a failure below puts it back, so that the routers the
     * published table still uses stay registered and alive. Gone workloads leave it
     * first, so that a snapshot replacing every workload with new ones has room. */
    __typeof__(px->routers) saved;
    uint32_t saved_n = px->nrouters;
    memcpy(saved, px->routers, sizeof(saved));
    retire_gone_routers(px, snap, retired, &nretired);
    if (snapshot_workloads(px, snap, rt, retired, &nretired) != 0) {
        rollback_routers(px, saved, saved_n);
        nretired = 0; /* nothing retired: the published table keeps using them */
        goto out;
    }
    assert(rt->nworkloads == snap->nworkloads);
    snapshot_replicas(px, snap, rt, cur);
    uint64_t e;
    ib_rtab_t *prev = publish(px, rt, &e);
    assert(prev == cur); /* writers hold the lock: nothing else published meanwhile */
    rt = NULL;
    /* Every worker routes with the new table from here: the propagation time. */
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t prop_us = snap->written_unix_us > 0
                          ? (int64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000 - snap->written_unix_us
                          : -1;
    release_slots(px, atomic_load(&px->rtab));
    /* Freed only once no worker can hold them: every one has echoed the epoch after. */
    assert(workers_passed(px, e) || atomic_load(&px->stopping));
    free(prev);
    for (uint32_t i = 0; i < nretired; i++) {
        assert(!router_named(atomic_load(&px->rtab), retired[i]));
        free_router(retired[i]);
    }
    nretired = 0;
    fprintf(stderr, "ibrain: snapshot %llu applied: %u workloads, %u replicas; every worker on it %lld us after it was written\n",
            (unsigned long long)snap->version, snap->nworkloads, snap->nreplicas, (long long)prop_us);
    rc = 0;
out:
    pthread_mutex_unlock(&px->rtab_lock);
    free(rt);
    return rc;
}

void ib_rtab_destroy(ib_proxy_t *px)
{
    free(atomic_load(&px->rtab));
    atomic_store(&px->rtab, NULL);
    for (uint32_t i = 0; i < px->nrouters; i++)
        free_router(px->routers[i].router);
    px->nrouters = 0;
    for (uint32_t i = 0; i < px->ntoks; i++)
        ib_tokenizer_free(px->toks[i].t);
    px->ntoks = 0;
}

const ib_workload_rt_t *ib_rtab_find(const ib_proxy_t *px, const ib_rtab_t *rt, ib_span_t model)
{
    if (rt == NULL || rt->nworkloads == 0)
        return NULL;
    if (rt->version == 0) { /* static: one workload, the --model list (if any) decides */
        assert(rt->wl[0].router != NULL); /* published complete (rtab_complete) */
        if (px->cfg.nmodels == 0)
            return &rt->wl[0];
        for (uint32_t i = 0; i < px->cfg.nmodels; i++)
            if (strlen(px->cfg.models[i]) == model.len && memcmp(px->cfg.models[i], model.ptr, model.len) == 0)
                return &rt->wl[0];
        return NULL;
    }
    for (uint32_t i = 0; i < rt->nworkloads; i++)
        if (strlen(rt->wl[i].model) == model.len && memcmp(rt->wl[i].model, model.ptr, model.len) == 0) {
            assert(rt->wl[i].router != NULL); /* published complete (rtab_complete) */
            return &rt->wl[i];
        }
    return NULL;
}
