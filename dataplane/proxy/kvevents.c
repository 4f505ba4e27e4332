/*
 * The events thread: one per ibrain instance, off the request path. It subscribes to each
 * replica's KV-cache events (px->kv_ep, from --kv-events or the snapshot), turns them into
 * facts in the replica's workload's affinity table (affinity.h), and decides per replica
 * whether routing trusts them (precise) or the model (approximate).
 *
 * Per replica, the batches' sequence numbers drive a small state machine:
 *   - the first batch seen is 0 (the engine just started): empty baseline, precise;
 *   - the next expected batch: applied;
 *   - a later one (a gap): replay the missing ones from the engine's replay socket, holding
 *     live batches meanwhile; then the held ones;
 *   - an earlier one (the engine restarted): its facts are cleared; from 0, precise again;
 *   - history that cannot be had (no replay socket, replay timed out or no longer has it,
 *     joined late without replay): the facts are cleared and the replica is routed on the
 *     model until the engine has stored as many blocks as its cache holds since (every
 *     block it held before has then been replaced, or refreshed and so announced again),
 *     or until an AllBlocksCleared or a restart gives a known-empty baseline.
 *
 * Facts are keyed ibrain's way, recomputed from each BlockStored's token ids (hashchain.h),
 * with the engine's hashes kept per replica (ib_kvmap_t) only to find parents and removals.
 *
 * Locking: the table's writers (sync thread) retire routers and slots under rtab_lock; this
 * thread applies each batch and re-reads the table's layout under it too, so a router it
 * writes to cannot be freed meanwhile. The workers never take it: the request path sees
 * facts through the table's atomics only.
 */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#include "ibrain/hashchain.h"

#define HOLD_MAX 4096          /* live batches held while a replay runs */
#define REPLAY_TIMEOUT_MS 2000
#define RECONCILE_MS 200
#define MAX_PER_TURN 256       /* batches taken from one replica per poll turn */

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "keys hash token ids as little-endian uint32 (prompt.h)");

static const double lag_bounds[IB_KV_LAG_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                     0.1,    0.25,  0.5,    1,     2.5,  5,     10};

typedef struct held {
    uint64_t seq;
    zmq_msg_t payload;
} held_t;

/* One replica's subscription: events-thread state. */
typedef struct sub {
    int active;
    uint32_t slot;
    uint32_t epoch;                   /* the slot's replica when subscribed */
    ib_kv_endpoint_t ep;
    void *sock, *dealer;
    void *monitor;                    /* PAIR: the SUB's connection events (zmq_socket_monitor) */
    int disconnected;                 /* the connection to the engine dropped since it was made */
    uint64_t seq_before;              /* next_seq when a reconnection made us start over; 0 none */
    ib_kvmap_t map;
    /* the workload it routes in, as of the last table read; a snapshot that retires the
     * router frees it, so it is used only once reconcile() has found it still registered */
    ib_router_t *router;
    uint64_t router_serial;           /* its serial in the registry (px->routers[].serial) */
    uint32_t block;                   /* tokens per block; 0 without a tokenizer */
    uint32_t capacity;                /* the engine's cache, in blocks (workload setting) */
    /* sequence */
    int synced;
    uint64_t next_seq;
    int replaying;
    uint64_t replay_deadline_ns;
    uint64_t replay_backoff_ns;       /* no replay before this (the last one failed) */
    held_t *held;
    uint32_t nheld;
    /* after a loss: blocks to see stored before the facts are trusted again */
    uint64_t rebuild_left;
    int precise;                      /* what the table was last told */
    int block_mismatch;               /* its engine's blocks are not the workload's: until the workload changes */
    uint32_t reason;
    int has_facts;                    /* facts written to its table since the last clearing */
    ib_buf_t keys;                    /* scratch: one event's keys */
} sub_t;

struct ib_kv {
    ib_proxy_t *px;
    pthread_t thread;
    _Atomic int stop;
    void *zctx;
    ib_kve_decoder_t dec;
    sub_t subs[IB_MAX_REPLICAS];
    uint64_t last_epoch;
    uint64_t last_reconcile_ns;
};

const char *ib_kv_mode_name(uint32_t m)
{
    static const char *const n[] = {"off", "precise", "approximate"};
    return m < 3 ? n[m] : "?";
}

const char *ib_kv_reason_name(uint32_t r)
{
    static const char *const n[IB_KVR__COUNT] = {"none", "connecting", "history_lost", "block_size", "no_tokenizer",
                                                 "policy"};
    return r < IB_KVR__COUNT ? n[r] : "?";
}

int ib_kv_parse_spec(const char *spec, char *name, size_t namelen, ib_kv_endpoint_t *ep)
{
    memset(ep, 0, sizeof(*ep));
    const char *eq = strchr(spec, '=');
    if (eq == NULL || eq == spec || (size_t)(eq - spec) >= namelen)
        return -1;
    memcpy(name, spec, (size_t)(eq - spec));
    name[eq - spec] = '\0';
    char *parts[3] = {ep->events, ep->replay, ep->topic};
    size_t caps[3] = {sizeof(ep->events), sizeof(ep->replay), sizeof(ep->topic)};
    const char *p = eq + 1;
    for (int i = 0; i < 3 && p != NULL; i++) {
        const char *comma = i < 2 ? strchr(p, ',') : NULL;
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (n >= caps[i])
            return -1;
        memcpy(parts[i], p, n);
        parts[i][n] = '\0';
        p = comma ? comma + 1 : NULL;
    }
    return strstr(ep->events, "://") != NULL && (ep->replay[0] == '\0' || strstr(ep->replay, "://") != NULL) ? 0 : -1;
}

/* Sequence numbers on the wire: 8 bytes, big-endian. */
static uint64_t seq_of(const zmq_msg_t *m)
{
    const uint8_t *b = zmq_msg_data((zmq_msg_t *)m);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | b[i];
    return v;
}

/* ---- stats ---- */

#define ST(s) (&kv->px->kv_stats[(s)->slot])
static void inc(_Atomic uint64_t *c, uint64_t n) { atomic_fetch_add_explicit(c, n, memory_order_relaxed); }

static void set_mode(struct ib_kv *kv, sub_t *s, int precise, uint32_t reason)
{
    if (s->block_mismatch && reason != IB_KVR_POLICY && reason != IB_KVR_NO_TOKENIZER)
        precise = 0, reason = IB_KVR_BLOCK_SIZE; /* a configuration fault outranks the rest */
    s->precise = precise;
    s->reason = precise ? IB_KVR_NONE : reason;
    if (s->router != NULL)
        ib_affinity_set_precise(&s->router->table, s->slot, precise);
    atomic_store_explicit(&ST(s)->mode, precise ? IB_KV_PRECISE : IB_KV_APPROXIMATE, memory_order_relaxed);
    atomic_store_explicit(&ST(s)->reason, s->reason, memory_order_relaxed);
}

/* Forgets every fact and engine hash of <s>'s replica. Clearing scans the whole table:
 * only when facts were written since the last time, so that a publisher whose batches
 * keep resetting the state (garbage, sequences all over) costs no scan each. */
static void forget(struct ib_kv *kv, sub_t *s)
{
    if (s->router != NULL && s->has_facts)
        ib_affinity_forget_facts(&s->router->table, s->slot);
    s->has_facts = 0;
    ib_kvmap_clear(&s->map);
    atomic_store_explicit(&ST(s)->facts, 0, memory_order_relaxed);
}

/* Whether facts can be used at all for <s>'s workload; the reason when not. */
static uint32_t unusable(const sub_t *s)
{
    if (s->router == NULL || s->router->policy != IB_POLICY_AFFINITY)
        return IB_KVR_POLICY;
    if (s->block == 0)
        return IB_KVR_NO_TOKENIZER;
    return IB_KVR_NONE;
}

/* A known-empty baseline (engine start, restart, AllBlocksCleared): no fact, and nothing
 * the model learnt from routing either. */
static void baseline(struct ib_kv *kv, sub_t *s)
{
    forget(kv, s);
    if (s->router != NULL)
        ib_affinity_forget_model(&s->router->table, s->slot);
    s->rebuild_left = 0;
    uint32_t why = unusable(s);
    set_mode(kv, s, why == IB_KVR_NONE, why); /* a block size mismatch stays (set_mode) */
}

/* History we cannot have: route on the model until the engine's cache has turned over. */
static void lost(struct ib_kv *kv, sub_t *s)
{
    inc(&ST(s)->losses, 1);
    forget(kv, s);
    s->rebuild_left = s->capacity > 0 ? s->capacity : 1;
    set_mode(kv, s, 0, unusable(s) != IB_KVR_NONE ? unusable(s) : IB_KVR_HISTORY_LOST);
}

/* ---- applying one batch (under rtab_lock) ---- */

struct apply_ctx {
    struct ib_kv *kv;
    sub_t *s;
};

static void on_stored(void *arg, const ib_kve_stored_t *ev)
{
    struct apply_ctx *a = arg;
    struct ib_kv *kv = a->kv;
    sub_t *s = a->s;
    if (ev->block_size != s->block) {
        if (!s->block_mismatch) {
            s->block_mismatch = 1;
            fprintf(stderr, "ibrain: replica %s: its engine's KV blocks are %u tokens, the workload's %u: routed on the "
                            "model, not its events\n", kv->px->replicas[s->slot].name, ev->block_size, s->block);
            forget(kv, s);
            set_mode(kv, s, 0, IB_KVR_BLOCK_SIZE);
        }
        inc(&ST(s)->dropped[IB_KVD_BLOCK_SIZE], 1); /* after the mode: a reader that sees it sees that */
        return;
    }
    uint64_t prev = 0;
    if (ev->has_parent && !ib_kvmap_get(&s->map, ev->parent, &prev)) {
        inc(&ST(s)->dropped[IB_KVD_ORPHAN], 1); /* its parent was stored before we knew it */
        return;
    }
    ib_buf_reset(&s->keys);
    if (ib_buf_try_reserve(&s->keys, ev->nhashes * sizeof(uint64_t)) != 0)
        return;
    uint64_t *keys = (uint64_t *)s->keys.ptr;
    size_t bytes = (size_t)ev->block_size * sizeof(uint32_t);
    for (size_t i = 0; i < ev->nhashes; i++) {
        prev = ib_hashchain_next(prev, ev->tokens + i * ev->block_size, bytes);
        keys[i] = prev;
        if (ib_kvmap_put(&s->map, ev->hashes[i], prev) != 0) {
            /* more blocks than the engine's cache holds: removals were missed */
            inc(&ST(s)->dropped[IB_KVD_MAP_FULL], 1);
            lost(kv, s);
            return;
        }
    }
    if (s->router != NULL) {
        ib_affinity_fact_stored(&s->router->table, keys, ev->nhashes, s->slot);
        s->has_facts = 1;
    }
    inc(&ST(s)->stored_events, 1);
    inc(&ST(s)->blocks_stored, ev->nhashes);
    atomic_store_explicit(&ST(s)->facts, s->map.used, memory_order_relaxed);
    if (s->rebuild_left > 0) {
        s->rebuild_left = s->rebuild_left > ev->nhashes ? s->rebuild_left - ev->nhashes : 0;
        if (s->rebuild_left == 0 && unusable(s) == IB_KVR_NONE && s->reason == IB_KVR_HISTORY_LOST)
            set_mode(kv, s, 1, IB_KVR_NONE);
    }
}

static void on_removed(void *arg, const uint64_t *hashes, size_t n)
{
    struct apply_ctx *a = arg;
    struct ib_kv *kv = a->kv;
    sub_t *s = a->s;
    for (size_t i = 0; i < n; i++) {
        uint64_t key;
        if (ib_kvmap_del(&s->map, hashes[i], &key)) {
            if (s->router != NULL)
                ib_affinity_fact_removed(&s->router->table, key, s->slot);
        } else {
            inc(&ST(s)->unknown_removed, 1); /* stored before we knew it, or after a loss */
        }
    }
    inc(&ST(s)->removed_events, 1);
    inc(&ST(s)->blocks_removed, n);
    atomic_store_explicit(&ST(s)->facts, s->map.used, memory_order_relaxed);
}

static void on_cleared(void *arg)
{
    struct apply_ctx *a = arg;
    inc(&a->kv->px->kv_stats[a->s->slot].cleared_events, 1);
    baseline(a->kv, a->s);
}

/* The registry's serial of <r> (rtab_lock held), 0 when <r> is not registered: retired,
 * and freed by the snapshot that retired it. */
static uint64_t router_serial(const ib_proxy_t *px, const ib_router_t *r)
{
    for (uint32_t i = 0; r != NULL && i < px->nrouters; i++)
        if (px->routers[i].router == r)
            return px->routers[i].serial;
    return 0;
}

/* The workload <s>'s slot routes in, from the published table (rtab_lock held). A changed
 * router (a new workload, new settings) starts from nothing: its table has no facts. */
static void refresh_route(struct ib_kv *kv, sub_t *s)
{
    const ib_rtab_t *rt = atomic_load_explicit(&kv->px->rtab, memory_order_acquire);
    const ib_workload_rt_t *w = NULL;
    for (uint32_t i = 0; i < rt->nworkloads && w == NULL; i++)
        for (uint32_t k = 0; k < rt->wl[i].nslots; k++)
            if (rt->wl[i].slots[k] == s->slot) {
                w = &rt->wl[i];
                break;
            }
    ib_router_t *router = w != NULL ? w->router : NULL;
    uint64_t serial = router_serial(kv->px, router);
    uint32_t block = w != NULL && w->tokenizer != NULL ? w->block : 0;
    if (router != s->router || serial != s->router_serial || block != s->block || s->map.keys == NULL) {
        if (router != NULL && router == s->router && serial == s->router_serial && s->has_facts) /* keyed anew */
            ib_affinity_forget_facts(&router->table, s->slot);
        s->has_facts = 0; /* a new table holds none of ours */
        s->router = router;
        s->router_serial = serial;
        s->block = block;
        s->capacity = router != NULL ? router->table.replicas[0].capacity_blocks : 65536;
        /* whatever the old table held is not in this one: the history must be had again;
         * the map holds up to twice the engine's cache (the most a stream whose removals
         * all arrive can need, with headroom) */
        ib_kvmap_free(&s->map);
        if (ib_kvmap_init(&s->map, s->capacity < (1u << 26) ? s->capacity * 2 : (1u << 27)) != 0)
            s->router = NULL; /* out of memory: nothing to apply to, routed on the model */
        s->synced = 0;
        s->block_mismatch = 0;
        set_mode(kv, s, 0, unusable(s) != IB_KVR_NONE ? unusable(s) : IB_KVR_CONNECTING);
    }
}

static void apply(struct ib_kv *kv, sub_t *s, uint64_t seq, const void *payload, size_t len)
{
    ib_proxy_t *px = kv->px;
    s->synced = 1;
    s->next_seq = seq + 1;
    inc(&ST(s)->batches, 1);
    if (s->router == NULL || s->map.keys == NULL || unusable(s) != IB_KVR_NONE) {
        atomic_store_explicit(&ST(s)->next_seq, s->next_seq, memory_order_release);
        return; /* nothing to apply to, or its facts cannot be keyed */
    }
    struct apply_ctx a = {kv, s};
    ib_kve_visitor_t v = {on_stored, on_removed, on_cleared, &a};
    ib_kve_batch_t b;
    ib_kve_error_t err;
    (void)px;
    if (ib_kve_decode(&kv->dec, payload, len, &v, &b, &err) != 0) {
        inc(&ST(s)->decode_errors[err], 1);
        atomic_store_explicit(&ST(s)->next_seq, s->next_seq, memory_order_release);
        return;
    }
    for (int e = 0; e < IB_KVE__COUNT; e++)
        if (b.errors[e] > 0)
            inc(&ST(s)->decode_errors[e], b.errors[e]);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    double lag = (double)now.tv_sec + now.tv_nsec * 1e-9 - b.ts;
    if (lag < 0)
        lag = 0; /* the engine's clock is ahead */
    int k = 0;
    while (k < IB_KV_LAG_BUCKETS && lag > lag_bounds[k])
        k++;
    inc(&ST(s)->lag_bucket[k], 1);
    inc(&ST(s)->lag_sum_us, (uint64_t)(lag * 1e6));
    inc(&ST(s)->lag_count, 1);
    /* last: a reader that sees this sequence sees the batch's facts (tests wait on it) */
    atomic_store_explicit(&ST(s)->next_seq, s->next_seq, memory_order_release);
}

/* ---- the sequence state machine ---- */

static void hold(struct ib_kv *kv, sub_t *s, uint64_t seq, zmq_msg_t *payload);
static void start_replay(struct ib_kv *kv, sub_t *s, uint64_t from);
static void note_restart(struct ib_kv *kv, sub_t *s, uint64_t first_seq);
static void drain_held(struct ib_kv *kv, sub_t *s);
static void end_replay(struct ib_kv *kv, sub_t *s, int ok);

/* Whether a replay may be asked now: there is a socket, and the last one did not just fail. */
static int may_replay(const sub_t *s) { return s->ep.replay[0] != '\0' && ib_now_ns() >= s->replay_backoff_ns; }

/* A batch from the live stream (<held> 0) or from those held during a replay (1): a held
 * one older than expected was replayed already, a live one means the engine restarted. */
static void on_batch(struct ib_kv *kv, sub_t *s, uint64_t seq, zmq_msg_t *payload, int held)
{
    const void *p = zmq_msg_data(payload);
    size_t len = zmq_msg_size(payload);
    if (s->replaying) { /* a replay runs (perhaps started by a held batch before this one) */
        hold(kv, s, seq, payload);
        return;
    }
    if (!s->synced) {
        if (seq == 0) {
            baseline(kv, s); /* the engine's first batch: nothing came before */
            apply(kv, s, seq, p, len);
            note_restart(kv, s, seq);
        } else if (may_replay(s)) {
            hold(kv, s, seq, payload);
            start_replay(kv, s, 0);
        } else {
            lost(kv, s); /* joined late, and no replay to learn what came before */
            apply(kv, s, seq, p, len);
            note_restart(kv, s, seq);
        }
        return;
    }
    if (seq == s->next_seq) {
        apply(kv, s, seq, p, len);
    } else if (seq > s->next_seq) {
        inc(&ST(s)->gaps, 1);
        if (may_replay(s)) {
            hold(kv, s, seq, payload);
            start_replay(kv, s, s->next_seq);
        } else {
            lost(kv, s);
            apply(kv, s, seq, p, len);
        }
    } else if (!held) { /* earlier than expected, live: the engine restarted */
        s->seq_before = s->next_seq;
        s->synced = 0;
        on_batch(kv, s, seq, payload, 0); /* its facts are cleared in there */
        note_restart(kv, s, seq);         /* counted after: whoever sees it sees them gone */
    } /* earlier than expected, held: a replay already applied it */
}

static void hold(struct ib_kv *kv, sub_t *s, uint64_t seq, zmq_msg_t *payload)
{
    if (s->held == NULL && (s->held = calloc(HOLD_MAX, sizeof(*s->held))) == NULL) {
        lost(kv, s);
        return;
    }
    if (s->nheld == HOLD_MAX) { /* the replay is too slow for the live stream: give up on it */
        end_replay(kv, s, 0);
        on_batch(kv, s, seq, payload, 0);
        return;
    }
    held_t *h = &s->held[s->nheld++];
    h->seq = seq;
    zmq_msg_init(&h->payload);
    zmq_msg_move(&h->payload, payload);
}

/* Applies the held batches in order. One of them may start another replay (a gap among
 * them): the rest are then held again, in a fresh list. */
static void drain_held(struct ib_kv *kv, sub_t *s)
{
    held_t *h = s->held;
    uint32_t n = s->nheld;
    s->held = NULL;
    s->nheld = 0;
    for (uint32_t i = 0; i < n; i++) {
        on_batch(kv, s, h[i].seq, &h[i].payload, 1);
        zmq_msg_close(&h[i].payload);
    }
    free(h);
}

static void close_dealer(sub_t *s)
{
    if (s->dealer != NULL)
        zmq_close(s->dealer);
    s->dealer = NULL;
}

/* Asks the engine for its batches from <from> on; the live ones wait in held[]. */
static void start_replay(struct ib_kv *kv, sub_t *s, uint64_t from)
{
    inc(&ST(s)->replays, 1);
    if (!s->synced) { /* the whole history: from nothing, trusted once the replay is complete */
        forget(kv, s);
        s->rebuild_left = 0;
        s->synced = 1;
        s->next_seq = from;
        set_mode(kv, s, 0, unusable(s) != IB_KVR_NONE ? unusable(s) : IB_KVR_CONNECTING);
    }
    s->replaying = 1;
    s->replay_deadline_ns = ib_now_ns() + (uint64_t)REPLAY_TIMEOUT_MS * 1000000ull;
    uint8_t be[8];
    for (int i = 0; i < 8; i++)
        be[i] = (uint8_t)(from >> (56 - 8 * i));
    int zero = 0;
    if (s->dealer == NULL &&
        ((s->dealer = zmq_socket(kv->zctx, ZMQ_DEALER)) == NULL ||
         zmq_setsockopt(s->dealer, ZMQ_LINGER, &zero, sizeof(zero)) != 0 || zmq_connect(s->dealer, s->ep.replay) != 0))
        end_replay(kv, s, 0);
    else if (zmq_send(s->dealer, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0 || zmq_send(s->dealer, be, 8, ZMQ_DONTWAIT) < 0)
        end_replay(kv, s, 0);
}

/* The replay is over: it gave what was missing (<ok>), or not (the history is lost and the
 * held batches are applied on top of nothing). Then the held batches, in order. */
static void end_replay(struct ib_kv *kv, sub_t *s, int ok)
{
    s->replaying = 0;
    if (!ok) /* no new replay for a while: the gaps meanwhile are losses, not a replay storm */
        s->replay_backoff_ns = ib_now_ns() + (uint64_t)REPLAY_TIMEOUT_MS * 1000000ull;
    if (ok && s->reason == IB_KVR_CONNECTING && unusable(s) == IB_KVR_NONE)
        set_mode(kv, s, 1, IB_KVR_NONE); /* the engine's whole history, from its first batch */
    if (ok && s->seq_before > 0)
        note_restart(kv, s, s->next_seq); /* what it holds now ends before where we stood */
    if (!ok) {
        inc(&ST(s)->replay_failures, 1);
        close_dealer(s); /* late answers go with it */
        lost(kv, s);
        if (s->nheld > 0)
            s->next_seq = s->held[0].seq;
    }
    drain_held(kv, s);
}

/* One answer frame set from the replay socket: ["", seq, payload]. */
static void on_replay(struct ib_kv *kv, sub_t *s, zmq_msg_t *f, int nf)
{
    if (!s->replaying || nf != 3 || zmq_msg_size(&f[0]) != 0 || zmq_msg_size(&f[1]) != 8) {
        if (s->replaying && nf != 3)
            inc(&ST(s)->dropped[IB_KVD_FRAMES], 1);
        return;
    }
    uint64_t seq = seq_of(&f[1]);
    if (seq == UINT64_MAX) { /* the end marker, -1 */
        end_replay(kv, s, 1);
        return;
    }
    if (seq < s->next_seq)
        return;
    if (seq > s->next_seq) { /* the engine no longer keeps what we missed */
        lost(kv, s);
    }
    apply(kv, s, seq, zmq_msg_data(&f[2]), zmq_msg_size(&f[2]));
}

/* The connection to the engine came back after it dropped: the engine may have restarted,
 * and its sequence may already be past where ours stood, so it cannot tell. Start over
 * from its whole history (a replay from 0) or, without a replay socket, from its next
 * batch as a lost history; a restart is counted once the new history is seen to be
 * shorter than the old one. */
static void on_reconnected(struct ib_kv *kv, sub_t *s)
{
    s->seq_before = s->synced ? s->next_seq : s->seq_before;
    s->synced = 0;
    if (may_replay(s) && !s->replaying && unusable(s) == IB_KVR_NONE)
        start_replay(kv, s, 0);
}

/* A restarted engine's history is shorter than what we had of it. */
static void note_restart(struct ib_kv *kv, sub_t *s, uint64_t first_seq)
{
    if (s->seq_before > 0 && first_seq < s->seq_before)
        inc(&ST(s)->restarts, 1);
    s->seq_before = 0;
}

/* One event of the SUB's monitor: [event id (2 bytes) + value (4), endpoint]. */
static void on_monitor(struct ib_kv *kv, sub_t *s, zmq_msg_t *f, int nf)
{
    if (nf < 1 || zmq_msg_size(&f[0]) < 2)
        return;
    uint16_t ev;
    memcpy(&ev, zmq_msg_data(&f[0]), 2);
    if (ev == ZMQ_EVENT_DISCONNECTED) {
        s->disconnected = 1;
    } else if (ev == ZMQ_EVENT_CONNECTED && s->disconnected) {
        s->disconnected = 0;
        on_reconnected(kv, s);
    }
}

/* ---- subscriptions ---- */

static void unsubscribe(struct ib_kv *kv, sub_t *s)
{
    if (!s->active)
        return;
    forget(kv, s);
    if (s->router != NULL)
        ib_affinity_set_precise(&s->router->table, s->slot, 0);
    for (uint32_t i = 0; i < s->nheld; i++)
        zmq_msg_close(&s->held[i].payload);
    free(s->held);
    close_dealer(s);
    if (s->sock != NULL) {
        zmq_socket_monitor(s->sock, NULL, 0);
        zmq_close(s->sock);
    }
    if (s->monitor != NULL)
        zmq_close(s->monitor);
    ib_kvmap_free(&s->map);
    ib_buf_free(&s->keys);
    atomic_store_explicit(&ST(s)->mode, IB_KV_OFF, memory_order_relaxed);
    memset(s, 0, sizeof(*s));
}

static int subscribe(struct ib_kv *kv, sub_t *s, uint32_t slot)
{
    ib_proxy_t *px = kv->px;
    memset(s, 0, sizeof(*s));
    s->slot = slot;
    s->epoch = atomic_load(&px->replicas[slot].epoch);
    s->ep = px->kv_ep[slot];
    ib_kv_stats_t *st = &px->kv_stats[slot];
    memset(st, 0, sizeof(*st));
    s->sock = zmq_socket(kv->zctx, ZMQ_SUB);
    int zero = 0, hwm = 100000;
    int64_t maxsize = IB_KVE_MAX_PAYLOAD;
    if (s->sock == NULL || zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof(zero)) != 0 ||
        zmq_setsockopt(s->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm)) != 0 ||
        zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxsize, sizeof(maxsize)) != 0 ||
        zmq_setsockopt(s->sock, ZMQ_SUBSCRIBE, "", 0) != 0 || zmq_connect(s->sock, s->ep.events) != 0) {
        fprintf(stderr, "ibrain: replica %s: KV events at %s: %s\n", px->replicas[slot].name, s->ep.events,
                zmq_strerror(errno));
        if (s->sock != NULL)
            zmq_close(s->sock);
        memset(s, 0, sizeof(*s));
        return -1;
    }
    /* connection events: an engine that comes back may be a new one (on_reconnected) */
    char mon[64];
    snprintf(mon, sizeof(mon), "inproc://ib-kv-monitor-%u-%u", slot, s->epoch);
    if (zmq_socket_monitor(s->sock, mon, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) == 0 &&
        (s->monitor = zmq_socket(kv->zctx, ZMQ_PAIR)) != NULL) {
        int zero2 = 0;
        zmq_setsockopt(s->monitor, ZMQ_LINGER, &zero2, sizeof(zero2));
        if (zmq_connect(s->monitor, mon) != 0) {
            zmq_close(s->monitor);
            s->monitor = NULL;
        }
    }
    s->active = 1;
    refresh_route(kv, s);
    set_mode(kv, s, 0, unusable(s) != IB_KVR_NONE ? unusable(s) : IB_KVR_CONNECTING);
    /* what the engine holds now, without waiting for its next batch */
    if (s->ep.replay[0] != '\0' && unusable(s) == IB_KVR_NONE)
        start_replay(kv, s, 0);
    fprintf(stderr, "ibrain: replica %s: subscribed to its KV events at %s%s%s\n", px->replicas[slot].name,
            s->ep.events, s->ep.replay[0] ? ", replay at " : "", s->ep.replay);
    return 0;
}

/* Forgets the routers retired since the last look (rtab_lock held): the snapshot that
 * retired one freed it, facts and all. */
static void drop_retired(struct ib_kv *kv)
{
    for (uint32_t i = 0; i < IB_MAX_REPLICAS; i++) {
        sub_t *s = &kv->subs[i];
        if (s->active && s->router != NULL && router_serial(kv->px, s->router) != s->router_serial)
            s->router = NULL;
    }
}

/* Matches subscriptions to the table (rtab_lock held): new replicas with an endpoint are
 * subscribed, gone or changed ones dropped, and each one's workload re-read. */
static void reconcile(struct ib_kv *kv)
{
    ib_proxy_t *px = kv->px;
    const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
    uint32_t nslots = atomic_load(&px->nslots);
    drop_retired(kv);
    for (uint32_t i = 0; i < IB_MAX_REPLICAS; i++) {
        sub_t *s = &kv->subs[i];
        int named = 0;
        for (uint32_t w = 0; w < rt->nworkloads && !named; w++)
            for (uint32_t k = 0; k < rt->wl[w].nslots; k++)
                named |= rt->wl[w].slots[k] == i;
        int wants = i < nslots && named && atomic_load(&px->replicas[i].in_use) && px->kv_ep[i].events[0] != '\0';
        if (s->active && (!wants || s->epoch != atomic_load(&px->replicas[i].epoch) ||
                          memcmp(&s->ep, &px->kv_ep[i], sizeof(s->ep)) != 0))
            unsubscribe(kv, s);
        if (wants && !s->active)
            subscribe(kv, s, i);
        else if (s->active)
            refresh_route(kv, s);
    }
}

/* Reads one message (all its frames) from <sock>: the frame count, at most <max> kept. */
static int recv_frames(void *sock, zmq_msg_t *f, int max)
{
    int n = 0, more = 1;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return n == 0 ? -1 : n;
        }
        more = zmq_msg_more(&m);
        if (n < max)
            f[n] = m;
        else
            zmq_msg_close(&m);
        n++;
    }
    return n;
}

static void close_frames(zmq_msg_t *f, int n, int max)
{
    for (int i = 0; i < n && i < max; i++)
        zmq_msg_close(&f[i]);
}

static void on_live(struct ib_kv *kv, sub_t *s, zmq_msg_t *f, int nf)
{
    if (nf != 3 || zmq_msg_size(&f[1]) != 8) {
        inc(&ST(s)->dropped[IB_KVD_FRAMES], 1);
        return;
    }
    size_t tl = strlen(s->ep.topic);
    if (tl > 0 && (zmq_msg_size(&f[0]) != tl || memcmp(zmq_msg_data(&f[0]), s->ep.topic, tl) != 0)) {
        inc(&ST(s)->dropped[IB_KVD_TOPIC], 1);
        return;
    }
    on_batch(kv, s, seq_of(&f[1]), &f[2], 0);
}

/* Takes rtab_lock and brings the subscriptions up to the table in force: a table published
 * since (its epoch moved) may have retired routers they point to. */
static void lock_current(struct ib_kv *kv, int force)
{
    ib_proxy_t *px = kv->px;
    pthread_mutex_lock(&px->rtab_lock);
    uint64_t e = atomic_load_explicit(&px->epoch, memory_order_acquire);
    if (force || e != kv->last_epoch) {
        reconcile(kv);
        kv->last_epoch = e;
        kv->last_reconcile_ns = ib_now_ns();
    }
}

static void *kv_main(void *arg)
{
    struct ib_kv *kv = arg;
    ib_proxy_t *px = kv->px;
    zmq_pollitem_t items[3 * IB_MAX_REPLICAS];
    sub_t *owner[3 * IB_MAX_REPLICAS];
    while (!atomic_load_explicit(&kv->stop, memory_order_relaxed)) {
        uint64_t now = ib_now_ns();
        lock_current(kv, now - kv->last_reconcile_ns > (uint64_t)RECONCILE_MS * 1000000ull);
        pthread_mutex_unlock(&px->rtab_lock);
        int n = 0;
        for (uint32_t i = 0; i < IB_MAX_REPLICAS; i++) {
            sub_t *s = &kv->subs[i];
            if (!s->active)
                continue;
            if (s->replaying && now > s->replay_deadline_ns) {
                lock_current(kv, 0);
                if (s->active && s->replaying)
                    end_replay(kv, s, 0);
                pthread_mutex_unlock(&px->rtab_lock);
            }
            if (!s->active)
                continue;
            items[n] = (zmq_pollitem_t){s->sock, 0, ZMQ_POLLIN, 0};
            owner[n++] = s;
            if (s->dealer != NULL) {
                items[n] = (zmq_pollitem_t){s->dealer, 0, ZMQ_POLLIN, 0};
                owner[n++] = s;
            }
            if (s->monitor != NULL) {
                items[n] = (zmq_pollitem_t){s->monitor, 0, ZMQ_POLLIN, 0};
                owner[n++] = s;
            }
        }
        if (zmq_poll(items, n, 100) <= 0)
            continue;
        for (int i = 0; i < n; i++) {
            if (!(items[i].revents & ZMQ_POLLIN))
                continue;
            sub_t *s = owner[i];
            for (int k = 0; k < MAX_PER_TURN && !atomic_load_explicit(&kv->stop, memory_order_relaxed); k++) {
                lock_current(kv, 0);
                /* gone since the poll: unsubscribed, or a replay that ended closed it */
                if (!s->active ||
                    (items[i].socket != s->sock && items[i].socket != s->dealer && items[i].socket != s->monitor)) {
                    pthread_mutex_unlock(&px->rtab_lock);
                    break;
                }
                zmq_msg_t f[3];
                int nf = recv_frames(items[i].socket, f, 3);
                if (nf >= 0) {
                    if (items[i].socket == s->sock)
                        on_live(kv, s, f, nf);
                    else if (items[i].socket == s->monitor)
                        on_monitor(kv, s, f, nf);
                    else
                        on_replay(kv, s, f, nf);
                    close_frames(f, nf, 3);
                }
                pthread_mutex_unlock(&px->rtab_lock);
                if (nf < 0)
                    break;
            }
        }
    }
    pthread_mutex_lock(&px->rtab_lock);
    drop_retired(kv);
    for (uint32_t i = 0; i < IB_MAX_REPLICAS; i++)
        unsubscribe(kv, &kv->subs[i]);
    pthread_mutex_unlock(&px->rtab_lock);
    return NULL;
}

int ib_kv_start(ib_proxy_t *px)
{
    struct ib_kv *kv = calloc(1, sizeof(*kv));
    if (kv == NULL)
        return -1;
    kv->px = px;
    kv->last_epoch = UINT64_MAX;
    ib_kve_decoder_init(&kv->dec);
    kv->zctx = zmq_ctx_new();
    if (kv->zctx != NULL)
        zmq_ctx_set(kv->zctx, ZMQ_BLOCKY, 0); /* terminating never waits on a socket's linger */
    if (kv->zctx == NULL || pthread_create(&kv->thread, NULL, kv_main, kv) != 0) {
        if (kv->zctx != NULL)
            zmq_ctx_term(kv->zctx);
        free(kv);
        return -1;
    }
    pthread_setname_np(kv->thread, "ib-kv-events"); /* for top -H and perf/bench-kv-events.sh */
    px->kv = kv;
    return 0;
}

void ib_kv_stop(ib_proxy_t *px)
{
    struct ib_kv *kv = px->kv;
    if (kv == NULL)
        return;
    atomic_store(&kv->stop, 1);
    pthread_join(kv->thread, NULL);
    zmq_ctx_term(kv->zctx);
    ib_kve_decoder_free(&kv->dec);
    free(kv);
    px->kv = NULL;
}

/* ---- /metrics ---- */

int ib_kv_render_metrics(const ib_proxy_t *px, ib_buf_t *b)
{
    uint32_t nslots = atomic_load(&((ib_proxy_t *)px)->nslots);
    int any = 0;
    for (uint32_t i = 0; i < nslots; i++)
        any |= atomic_load(&px->kv_stats[i].mode) != IB_KV_OFF;
    if (!any)
        return 0;
    int rc = ib_buf_try_printf(
        b, "# HELP ibrain_kv_routing_mode How a replica with KV-cache events is routed: 1 for its mode and reason "
           "(precise: on its engine's events; approximate: on ibrain's model, and why).\n"
           "# TYPE ibrain_kv_routing_mode gauge\n");
#define EACH_SLOT for (uint32_t i = 0; i < nslots && !rc; i++) \
        if (atomic_load(&px->kv_stats[i].mode) != IB_KV_OFF)
#define NAME px->replicas[i].name
#define LOAD(f) (unsigned long long)atomic_load_explicit((_Atomic uint64_t *)&px->kv_stats[i].f, memory_order_relaxed)
    EACH_SLOT {
        const ib_kv_stats_t *st = &px->kv_stats[i];
        rc = ib_buf_try_printf(b, "ibrain_kv_routing_mode{replica=\"%s\",mode=\"%s\",reason=\"%s\"} 1\n", NAME,
                               ib_kv_mode_name(atomic_load(&st->mode)), ib_kv_reason_name(atomic_load(&st->reason)));
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } counters[] = {
        {"ibrain_kv_event_batches_total", "Event batches received from the replica's engine.", offsetof(ib_kv_stats_t, batches)},
        {"ibrain_kv_blocks_stored_total", "Blocks its engine said it stored (BlockStored).", offsetof(ib_kv_stats_t, blocks_stored)},
        {"ibrain_kv_blocks_removed_total", "Blocks its engine said it removed (BlockRemoved).", offsetof(ib_kv_stats_t, blocks_removed)},
        {"ibrain_kv_blocks_removed_unknown_total", "Removed blocks ibrain did not know (stored before it subscribed or lost).", offsetof(ib_kv_stats_t, unknown_removed)},
        {"ibrain_kv_caches_cleared_total", "AllBlocksCleared events.", offsetof(ib_kv_stats_t, cleared_events)},
        {"ibrain_kv_event_gaps_total", "Gaps in the batches' sequence.", offsetof(ib_kv_stats_t, gaps)},
        {"ibrain_kv_event_replays_total", "Replays asked of the engine's replay socket.", offsetof(ib_kv_stats_t, replays)},
        {"ibrain_kv_event_replay_failures_total", "Replays that failed (no answer in time, or the live stream outran them).", offsetof(ib_kv_stats_t, replay_failures)},
        {"ibrain_kv_engine_restarts_total", "Engine restarts seen (its sequence started again).", offsetof(ib_kv_stats_t, restarts)},
        {"ibrain_kv_history_losses_total", "Times the events' history could not be had: facts cleared, routed on the model until rebuilt.", offsetof(ib_kv_stats_t, losses)},
        {"ibrain_kv_facts", "Blocks ibrain believes the replica's engine holds, from its events.", offsetof(ib_kv_stats_t, facts)},
        {"ibrain_kv_event_next_sequence", "The sequence number of the batch expected next from the engine.", offsetof(ib_kv_stats_t, next_seq)},
    };
    for (size_t c = 0; c < sizeof(counters) / sizeof(counters[0]) && !rc; c++) {
        int gauge = strcmp(counters[c].name, "ibrain_kv_facts") == 0 ||
                    strcmp(counters[c].name, "ibrain_kv_event_next_sequence") == 0;
        rc = ib_buf_try_printf(b, "# HELP %s %s\n# TYPE %s %s\n", counters[c].name, counters[c].help, counters[c].name,
                               gauge ? "gauge" : "counter");
        EACH_SLOT {
            const _Atomic uint64_t *v = (const _Atomic uint64_t *)((const char *)&px->kv_stats[i] + counters[c].off);
            rc = ib_buf_try_printf(b, "%s{replica=\"%s\"} %llu\n", counters[c].name, NAME,
                                   (unsigned long long)atomic_load_explicit((_Atomic uint64_t *)v, memory_order_relaxed));
        }
    }
    static const char *const drops[IB_KVD__COUNT] = {"frames", "topic", "block_size", "orphan", "map_full"};
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_kv_events_dropped_total Event messages or events dropped, by "
                                    "reason (decode errors by the decoder's reason).\n"
                                    "# TYPE ibrain_kv_events_dropped_total counter\n");
    EACH_SLOT {
        for (int k = 0; k < IB_KVD__COUNT && !rc; k++)
            rc = ib_buf_try_printf(b, "ibrain_kv_events_dropped_total{replica=\"%s\",reason=\"%s\"} %llu\n", NAME,
                                   drops[k], LOAD(dropped[k]));
        for (int k = 0; k < IB_KVE__COUNT && !rc; k++)
            rc = ib_buf_try_printf(b, "ibrain_kv_events_dropped_total{replica=\"%s\",reason=\"%s\"} %llu\n", NAME,
                                   ib_kve_error_name((ib_kve_error_t)k), LOAD(decode_errors[k]));
    }
    rc = rc || ib_buf_try_printf(b, "# HELP ibrain_kv_event_lag_seconds From the engine's batch timestamp to the "
                                    "batch applied in ibrain's table.\n# TYPE ibrain_kv_event_lag_seconds histogram\n");
    EACH_SLOT {
        unsigned long long cum = 0;
        for (int k = 0; k <= IB_KV_LAG_BUCKETS && !rc; k++) {
            cum += LOAD(lag_bucket[k]);
            if (k < IB_KV_LAG_BUCKETS)
                rc = ib_buf_try_printf(b, "ibrain_kv_event_lag_seconds_bucket{replica=\"%s\",le=\"%g\"} %llu\n", NAME,
                                       lag_bounds[k], cum);
            else
                rc = ib_buf_try_printf(b, "ibrain_kv_event_lag_seconds_bucket{replica=\"%s\",le=\"+Inf\"} %llu\n",
                                       NAME, cum);
        }
        rc = rc || ib_buf_try_printf(b, "ibrain_kv_event_lag_seconds_sum{replica=\"%s\"} %.6f\n"
                                        "ibrain_kv_event_lag_seconds_count{replica=\"%s\"} %llu\n",
                                     NAME, (double)LOAD(lag_sum_us) / 1e6, NAME, LOAD(lag_count));
    }
#undef EACH_SLOT
#undef NAME
#undef LOAD
    return rc;
}
