/*
 * Write-back: ibrain instances behind one load balancer share what they route.
 *
 * A worker that routes a request by affinity pushes (replica slot, workload, prefix block
 * hashes) into its own single-producer ring; it never waits and never talks to Redis (a
 * full ring drops the record and counts it). Every tick (100 ms) the sync thread drains
 * the rings into one SyncBatch (controlplane/proto/snapshot.proto), with this instance's
 * in-flight figures per replica, and appends it to the Redis stream ib:affinity (capped at
 * about 10,000 entries, expiring 60 s after the last write). It then reads the entries the
 * other instances appended since its last read (at first: over the last minute), inserts
 * their prefixes into the local affinity tables (replicas and workloads matched by their
 * snapshot ids) and adds their load to what the local policy sees.
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibrain/clock.h"
#include "snapshot.pb-c.h"

#define WB_MAX_HASHES_PER_BATCH 16384u /* per 100 ms tick: at most 164k hashes/s, 1.3 MB/s */
#define WB_REMOTE_TTL_MS 2000u
/* A starting instance first reads what the others appended over this window (the
 * stream's own lifetime): it learns where recent prompts went, as if it had been running,
 * and nothing appended while it was starting is missed. */
#define WB_CATCHUP_MS 60000u

void ib_writeback_push(ib_worker_t *w, uint64_t version, uint32_t wl, uint32_t slot, const uint64_t *h, size_t n)
{
    ib_wb_ring_t *r = &w->wb;
    if (r->buf == NULL || n == 0)
        return;
    if (n > IB_WB_MAX_BLOCKS)
        n = IB_WB_MAX_BLOCKS; /* the head of a long prompt: what the next turn matches first */
    /* The same prompt to the same replica again within a second adds nothing new for the
     * other instances: skip it (identical requests would otherwise flood the stream). */
    uint64_t key = h[n - 1] ^ ((uint64_t)slot * 0x9e3779b97f4a7c15ull), now = ib_now_ns() / 1000000;
    size_t k = (size_t)(key ^ key >> 29) & 1023;
    if (r->recent[k].key == key && now - r->recent[k].at_ms < 1000)
        return;
    r->recent[k].key = key;
    r->recent[k].at_ms = now;
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    uint64_t tail = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (head - tail + n + 1 > r->mask + 1) {
        atomic_fetch_add_explicit(&r->dropped, 1, memory_order_relaxed);
        return;
    }
    r->buf[head & r->mask] = (uint64_t)slot | (uint64_t)wl << 8 | (uint64_t)n << 16 | (version & 0xffffffffu) << 32;
    for (size_t i = 0; i < n; i++)
        r->buf[(head + 1 + i) & r->mask] = h[i];
    atomic_store_explicit(&r->head, head + 1 + n, memory_order_release);
}

/* ---- sending ---- */

typedef struct batch {
    Ibrain__V1__AffinityUpdate *updates;
    Ibrain__V1__AffinityUpdate **uptrs;
    uint64_t *hashes;
    size_t nupdates, nhashes;
    Ibrain__V1__ReplicaLoad loads[IB_MAX_REPLICAS];
    Ibrain__V1__ReplicaLoad *lptrs[IB_MAX_REPLICAS];
    size_t nloads;
} batch_t;

/* Moves every worker's records into <b> (records of an older table are dropped: their
 * slot and workload numbers may mean something else now). */
static void drain_rings(ib_proxy_t *px, const ib_rtab_t *rt, batch_t *b)
{
    for (uint32_t i = 0; i < px->nworkers; i++) {
        ib_wb_ring_t *r = &px->workers[i].wb;
        if (r->buf == NULL)
            continue;
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        while (tail < head) {
            uint64_t hdr = r->buf[tail & r->mask];
            uint32_t slot = (uint32_t)(hdr & 0xff), wl = (uint32_t)(hdr >> 8 & 0xff);
            size_t n = (size_t)(hdr >> 16 & 0xffff);
            uint32_t version = (uint32_t)(hdr >> 32);
            int usable = version == (uint32_t)rt->version && wl < rt->nworkloads &&
                         atomic_load(&px->replicas[slot].in_use) && b->nhashes + n <= WB_MAX_HASHES_PER_BATCH;
            if (usable) {
                Ibrain__V1__AffinityUpdate *u = &b->updates[b->nupdates];
                ibrain__v1__affinity_update__init(u);
                u->workload = (char *)rt->wl[wl].id;
                u->replica = px->replicas[slot].name;
                u->hashes = b->hashes + b->nhashes;
                u->n_hashes = n;
                for (size_t k = 0; k < n; k++)
                    b->hashes[b->nhashes++] = r->buf[(tail + 1 + k) & r->mask];
                b->uptrs[b->nupdates++] = u;
            } else if (version == (uint32_t)rt->version) {
                atomic_fetch_add_explicit(&px->wb_dropped, 1, memory_order_relaxed);
            }
            tail += 1 + n;
        }
        atomic_store_explicit(&r->tail, tail, memory_order_release);
    }
}

static void add_loads(ib_proxy_t *px, const ib_rtab_t *rt, batch_t *b)
{
    uint64_t seen[IB_REPLICA_MASK_WORDS] = {0};
    for (uint32_t w = 0; w < rt->nworkloads; w++)
        for (uint32_t k = 0; k < rt->wl[w].nslots; k++) {
            uint32_t slot = rt->wl[w].slots[k];
            if (ib_mask_has(seen, slot))
                continue;
            ib_mask_set(seen, slot);
            Ibrain__V1__ReplicaLoad *l = &b->loads[b->nloads];
            ibrain__v1__replica_load__init(l);
            l->replica = px->replicas[slot].name;
            l->in_flight = ib_replica_inflight(&px->replicas[slot], px->nworkers);
            l->pending_blocks = ib_replica_pending(&px->replicas[slot], px->nworkers);
            b->lptrs[b->nloads++] = l;
        }
}

static void free_batch(batch_t *b)
{
    if (b == NULL)
        return;
    free(b->updates);
    free(b->uptrs);
    free(b->hashes);
    free(b);
}

static batch_t *new_batch(void)
{
    static const size_t max_updates = WB_MAX_HASHES_PER_BATCH; /* at least one hash each */
    batch_t *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->updates = malloc(max_updates * sizeof(*b->updates));
    b->uptrs = malloc(max_updates * sizeof(*b->uptrs));
    b->hashes = malloc(WB_MAX_HASHES_PER_BATCH * sizeof(*b->hashes));
    if (b->updates == NULL || b->uptrs == NULL || b->hashes == NULL) {
        free_batch(b);
        return NULL;
    }
    return b;
}

int ib_writeback_build(ib_proxy_t *px, const ib_rtab_t *rt, uint64_t now_ms, uint8_t **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    batch_t *b = new_batch();
    if (b == NULL)
        return -1;
    drain_rings(px, rt, b);
    int loads_due = now_ms - px->wb_last_loads_ms >= 500;
    int rc = (int)b->nupdates;
    if (b->nupdates == 0 && !loads_due)
        goto out;
    add_loads(px, rt, b);
    assert(b->nloads <= IB_MAX_REPLICAS && b->nhashes <= WB_MAX_HASHES_PER_BATCH);
    px->wb_last_loads_ms = now_ms;
    Ibrain__V1__SyncBatch m = IBRAIN__V1__SYNC_BATCH__INIT;
    m.instance = px->instance;
    m.seq = ++px->wb_seq;
    m.sent_unix_ms = (int64_t)now_ms;
    m.updates = b->uptrs;
    m.n_updates = b->nupdates;
    m.loads = b->lptrs;
    m.n_loads = b->nloads;
    *len = ibrain__v1__sync_batch__get_packed_size(&m);
    *out = malloc(*len ? *len : 1);
    if (*out == NULL) {
        rc = -1;
        goto out;
    }
    ibrain__v1__sync_batch__pack(&m, *out);
out:
    free_batch(b);
    return rc;
}

static void send_batch(ib_proxy_t *px, ib_sync_t *s, const ib_rtab_t *rt)
{
    uint8_t *buf;
    size_t len;
    int n = ib_writeback_build(px, rt, ib_wall_ms(), &buf, &len);
    if (buf != NULL && ib_sync_stream_add(s, IB_WB_STREAM, buf, len, 10000, 60000) == 0)
        atomic_fetch_add_explicit(&px->wb_sent, (uint64_t)n, memory_order_relaxed);
    free(buf);
}

/* ---- receiving ---- */

static int slot_by_name(const ib_proxy_t *px, const ib_workload_rt_t *wl, const char *name)
{
    for (uint32_t k = 0; k < wl->nslots; k++)
        if (strcmp(px->replicas[wl->slots[k]].name, name) == 0)
            return wl->slots[k];
    return -1;
}

/* Another instance's figure, as the router may add it to its own: a negative or huge one
 * (a bug, or a foreign writer on the stream) would skew every pick, or overflow the sums. */
static int64_t clamp_load(int64_t v) { return v < 0 ? 0 : v > IB_WB_MAX_REMOTE_LOAD ? IB_WB_MAX_REMOTE_LOAD : v; }

/* Remembers the per-replica figures of the instance that sent <m>, by slot. */
static void take_loads(ib_proxy_t *px, const Ibrain__V1__SyncBatch *m)
{
    struct ib_wb_remote *r = NULL, *oldest = &px->wb_remote[0];
    for (size_t k = 0; k < 8 && r == NULL; k++) {
        if (strcmp(px->wb_remote[k].instance, m->instance) == 0)
            r = &px->wb_remote[k];
        else if (px->wb_remote[k].at_ms < oldest->at_ms)
            oldest = &px->wb_remote[k];
    }
    if (r == NULL) {
        r = oldest;
        snprintf(r->instance, sizeof(r->instance), "%s", m->instance);
    }
    r->at_ms = ib_wall_ms();
    memset(r->inflight, 0, sizeof(r->inflight));
    memset(r->pending, 0, sizeof(r->pending));
    uint32_t nslots = atomic_load(&px->nslots);
    for (size_t i = 0; i < m->n_loads; i++)
        for (uint32_t slot = 0; slot < nslots; slot++)
            if (atomic_load(&px->replicas[slot].in_use) && m->loads[i]->replica != NULL &&
                strcmp(px->replicas[slot].name, m->loads[i]->replica) == 0) {
                r->inflight[slot] = clamp_load(m->loads[i]->in_flight);
                r->pending[slot] = clamp_load(m->loads[i]->pending_blocks);
            }
}

int ib_writeback_apply(ib_proxy_t *px, const ib_rtab_t *rt, const void *payload, size_t len)
{
    Ibrain__V1__SyncBatch *m = ibrain__v1__sync_batch__unpack(NULL, len, payload);
    if (m == NULL)
        return -1;
    int applied = 0;
    if (m->instance == NULL || strcmp(m->instance, px->instance) == 0)
        goto out; /* our own batch */
    atomic_fetch_add_explicit(&px->wb_batches_in, 1, memory_order_relaxed);
    for (size_t i = 0; i < m->n_updates; i++) {
        const Ibrain__V1__AffinityUpdate *u = m->updates[i];
        if (u->workload == NULL || u->replica == NULL)
            continue;
        for (uint32_t w = 0; w < rt->nworkloads; w++) {
            const ib_workload_rt_t *wl = &rt->wl[w];
            if (strcmp(wl->id, u->workload) != 0 || wl->router->policy != IB_POLICY_AFFINITY)
                continue;
            int slot = slot_by_name(px, wl, u->replica);
            if (slot >= 0 && u->n_hashes > 0) {
                ib_affinity_insert(&wl->router->table, u->hashes, u->n_hashes, (uint32_t)slot);
                atomic_fetch_add_explicit(&px->wb_applied, 1, memory_order_relaxed);
                applied++;
            }
            break;
        }
    }
    if (m->n_loads > 0)
        take_loads(px, m);
out:
    ibrain__v1__sync_batch__free_unpacked(m, NULL);
    return applied;
}

typedef struct rx {
    ib_proxy_t *px;
    const ib_rtab_t *rt;
} rx_t;

static void on_batch(void *ctx, const void *payload, size_t len)
{
    rx_t *rx = ctx;
    ib_writeback_apply(rx->px, rx->rt, payload, len);
}

/* Sums the fresh remote figures into each replica's remote_* counters. */
static void publish_remote_load(ib_proxy_t *px)
{
    uint64_t now = ib_wall_ms();
    uint32_t nslots = atomic_load(&px->nslots);
    for (uint32_t slot = 0; slot < nslots; slot++) {
        int64_t inflight = 0, pending = 0;
        for (int k = 0; k < 8; k++)
            if (px->wb_remote[k].at_ms + WB_REMOTE_TTL_MS > now) {
                inflight += px->wb_remote[k].inflight[slot];
                pending += px->wb_remote[k].pending[slot];
            }
        atomic_store_explicit(&px->replicas[slot].remote_inflight, inflight, memory_order_relaxed);
        atomic_store_explicit(&px->replicas[slot].remote_pending, pending, memory_order_relaxed);
    }
}

void ib_writeback_tick(void *arg, ib_sync_t *s)
{
    ib_proxy_t *px = arg;
    /* Only this thread replaces the table, so it stays valid here without quiescence. */
    const ib_rtab_t *rt = atomic_load(&px->rtab);
    send_batch(px, s, rt);
    rx_t rx = {px, rt};
    if (px->wb_last_id[0] == '\0') {
        uint64_t now = ib_wall_ms();
        snprintf(px->wb_last_id, sizeof(px->wb_last_id), "%llu-0",
                 (unsigned long long)(now > WB_CATCHUP_MS ? now - WB_CATCHUP_MS : 0));
    }
    for (int rounds = 0; rounds < 8; rounds++)
        if (ib_sync_stream_read(s, IB_WB_STREAM, px->wb_last_id, 256, on_batch, &rx) < 256)
            break;
    publish_remote_load(px);
}
