/* The mock engine's timing model (include/ibrain/mock_engine.h). */
#include "ibrain/mock_engine.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* ---- intrusive FIFO ---- */

static void fifo_push(ib_seq_fifo_t *q, ib_seq_t *seq)
{
    seq->_next = NULL;
    seq->_prev = q->tail;
    if (q->tail != NULL)
        q->tail->_next = seq;
    else
        q->head = seq;
    q->tail = seq;
    q->count++;
}

static void fifo_remove(ib_seq_fifo_t *q, ib_seq_t *seq)
{
    if (seq->_prev != NULL)
        seq->_prev->_next = seq->_next;
    else
        q->head = seq->_next;
    if (seq->_next != NULL)
        seq->_next->_prev = seq->_prev;
    else
        q->tail = seq->_prev;
    seq->_prev = seq->_next = NULL;
    q->count--;
}

static ib_seq_t *fifo_pop(ib_seq_fifo_t *q)
{
    ib_seq_t *seq = q->head;
    if (seq != NULL)
        fifo_remove(q, seq);
    return seq;
}

/* ---- timer min-heap on _deadline_ns ---- */

#define HEAP_NONE UINT32_MAX

static void heap_set(ib_sched_t *s, uint32_t i, ib_seq_t *seq)
{
    s->heap[i] = seq;
    seq->_heap_idx = i;
}

static void heap_up(ib_sched_t *s, uint32_t i)
{
    ib_seq_t *seq = s->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (s->heap[parent]->_deadline_ns <= seq->_deadline_ns)
            break;
        heap_set(s, i, s->heap[parent]);
        i = parent;
    }
    heap_set(s, i, seq);
}

static void heap_down(ib_sched_t *s, uint32_t i)
{
    ib_seq_t *seq = s->heap[i];
    for (;;) {
        uint32_t l = 2 * i + 1, m = i;
        uint64_t best = seq->_deadline_ns;
        if (l < s->heap_len && s->heap[l]->_deadline_ns < best)
            m = l, best = s->heap[l]->_deadline_ns;
        if (l + 1 < s->heap_len && s->heap[l + 1]->_deadline_ns < best)
            m = l + 1;
        if (m == i)
            break;
        heap_set(s, i, s->heap[m]);
        i = m;
    }
    heap_set(s, i, seq);
}

static int heap_push(ib_sched_t *s, ib_seq_t *seq, uint64_t deadline_ns)
{
    if (s->heap_len == s->heap_cap) {
        uint32_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        ib_seq_t **h = realloc(s->heap, cap * sizeof(*h));
        if (h == NULL)
            return -1;
        s->heap = h;
        s->heap_cap = cap;
    }
    seq->_deadline_ns = deadline_ns;
    s->heap[s->heap_len] = seq;
    seq->_heap_idx = s->heap_len++;
    heap_up(s, seq->_heap_idx);
    return 0;
}

static void heap_remove(ib_sched_t *s, ib_seq_t *seq)
{
    uint32_t i = seq->_heap_idx;
    assert(i < s->heap_len && s->heap[i] == seq);
    seq->_heap_idx = HEAP_NONE;
    ib_seq_t *last = s->heap[--s->heap_len];
    if (i == s->heap_len)
        return;
    heap_set(s, i, last);
    heap_up(s, i);
    heap_down(s, last->_heap_idx);
}

/* ---- scheduling ---- */

int ib_sched_init(ib_sched_t *s, const ib_sched_config_t *cfg)
{
    memset(s, 0, sizeof(*s));
    if (cfg->max_seqs == 0 || cfg->block_tokens == 0 || cfg->cache_blocks == 0)
        return -1;
    s->cfg = *cfg;
    /* Reserve the heap for every slot up front: at most one timer per admitted sequence. */
    s->heap_cap = cfg->max_seqs;
    s->heap = malloc(s->heap_cap * sizeof(*s->heap));
    if (s->heap == NULL || ib_pcache_init(&s->cache, cfg->cache_blocks, cfg->cache_ttl_ns) != 0) {
        free(s->heap);
        return -1;
    }
    return 0;
}

void ib_sched_destroy(ib_sched_t *s)
{
    ib_pcache_destroy(&s->cache);
    free(s->heap);
    memset(s, 0, sizeof(*s));
}

static uint64_t itl_now(const ib_sched_t *s)
{
    uint32_t others = s->decoding > 0 ? s->decoding - 1 : 0;
    return s->cfg.itl_ns + (uint64_t)others * s->cfg.itl_ns_per_seq;
}

/* Puts the next queued sequence on the prefill unit if it is free. */
static void start_prefill(ib_sched_t *s, uint64_t now_ns)
{
    if (s->prefilling != NULL)
        return;
    ib_seq_t *seq = fifo_pop(&s->queued);
    if (seq == NULL)
        return;
    size_t matched = ib_pcache_match(&s->cache, seq->hashes, seq->nblocks, now_ns);
    uint64_t cached = (uint64_t)matched * s->cfg.block_tokens;
    seq->cached_tokens = cached < seq->prompt_tokens ? (uint32_t)cached : seq->prompt_tokens;
    s->query_tokens += seq->prompt_tokens;
    s->hit_tokens += seq->cached_tokens;
    s->prompt_tokens += seq->prompt_tokens;
    uint64_t cost = s->cfg.overhead_ns + (uint64_t)(seq->prompt_tokens - seq->cached_tokens) * s->cfg.prefill_ns_per_token;
    seq->state = IB_SEQ_PREFILLING;
    s->prefilling = seq;
    /* Cannot fail: the heap holds at most one entry per slot and was sized for all slots. */
    (void)heap_push(s, seq, now_ns + cost);
}

/* A slot was freed: admit the first waiting sequence. */
static void release_slot(ib_sched_t *s, uint64_t now_ns)
{
    assert(s->slots_used > 0);
    s->slots_used--;
    ib_seq_t *next = fifo_pop(&s->waiting);
    if (next != NULL) {
        s->slots_used++;
        next->state = IB_SEQ_QUEUED;
        fifo_push(&s->queued, next);
    }
    start_prefill(s, now_ns);
}

int ib_sched_submit(ib_sched_t *s, ib_seq_t *seq, uint64_t now_ns)
{
    assert(seq->state == IB_SEQ_NEW && seq->max_tokens >= 1);
    seq->submit_ns = now_ns;
    seq->generated = 0;
    seq->cached_tokens = 0;
    seq->_heap_idx = HEAP_NONE;
    if (s->slots_used < s->cfg.max_seqs) {
        s->slots_used++;
        seq->state = IB_SEQ_QUEUED;
        fifo_push(&s->queued, seq);
        start_prefill(s, now_ns);
    } else {
        seq->state = IB_SEQ_WAITING;
        fifo_push(&s->waiting, seq);
    }
    return 0;
}

void ib_sched_cancel(ib_sched_t *s, ib_seq_t *seq, uint64_t now_ns)
{
    switch (seq->state) {
    case IB_SEQ_WAITING:
        fifo_remove(&s->waiting, seq);
        break;
    case IB_SEQ_QUEUED:
        fifo_remove(&s->queued, seq);
        release_slot(s, now_ns);
        break;
    case IB_SEQ_PREFILLING:
        heap_remove(s, seq);
        s->prefilling = NULL;
        release_slot(s, now_ns);
        break;
    case IB_SEQ_DECODING:
        heap_remove(s, seq);
        s->decoding--;
        release_slot(s, now_ns);
        break;
    case IB_SEQ_NEW:
    case IB_SEQ_DONE:
        return;
    }
    seq->state = IB_SEQ_DONE;
    s->cancelled++;
}

/* Emits the next token of <seq> (deadline reached). */
static void emit_token(ib_sched_t *s, ib_seq_t *seq, uint64_t now_ns)
{
    uint32_t index = seq->generated++;
    s->generation_tokens++;
    int last = seq->generated >= seq->max_tokens;
    if (last) {
        seq->state = IB_SEQ_DONE;
        s->decoding--;
        s->finished++;
        release_slot(s, now_ns);
    } else {
        (void)heap_push(s, seq, now_ns + itl_now(s));
    }
    seq->on_token(seq, index, last);
}

void ib_sched_run(ib_sched_t *s, uint64_t now_ns)
{
    while (s->heap_len > 0 && s->heap[0]->_deadline_ns <= now_ns) {
        ib_seq_t *seq = s->heap[0];
        heap_remove(s, seq);
        /* Events are processed at their own deadline so that a late wake-up does not
         * stretch the model's timeline. */
        uint64_t t = seq->_deadline_ns;
        if (seq->state == IB_SEQ_PREFILLING) {
            ib_pcache_insert(&s->cache, seq->hashes, seq->nblocks, t);
            s->prefilling = NULL;
            seq->first_token_ns = t;
            seq->state = IB_SEQ_DECODING;
            s->decoding++;
            start_prefill(s, t);
        }
        emit_token(s, seq, t);
    }
}

uint64_t ib_sched_next_deadline(const ib_sched_t *s)
{
    return s->heap_len > 0 ? s->heap[0]->_deadline_ns : UINT64_MAX;
}
