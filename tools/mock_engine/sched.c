/* The mock engine's timing model (include/ibrain/mock_engine.h): a FIFO prefill unit and
 * a continuous-batching decode loop, driven by two deadlines. */
#include "ibrain/mock_engine.h"

#include <assert.h>
#include <string.h>

/* ---- intrusive lists ---- */

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

/* ---- scheduling ---- */

int ib_sched_init(ib_sched_t *s, const ib_sched_config_t *cfg)
{
    memset(s, 0, sizeof(*s));
    if (cfg->max_seqs == 0 || cfg->block_tokens == 0 || cfg->cache_blocks == 0)
        return -1;
    s->cfg = *cfg;
    s->next_step_ns = UINT64_MAX;
    return ib_pcache_init(&s->cache, cfg->cache_blocks, cfg->cache_ttl_ns);
}

void ib_sched_destroy(ib_sched_t *s)
{
    ib_pcache_destroy(&s->cache);
    memset(s, 0, sizeof(*s));
}

static uint64_t step_cost(const ib_sched_t *s)
{
    uint32_t others = s->decoding.count > 0 ? s->decoding.count - 1 : 0;
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
    seq->_prefill_end_ns = now_ns + cost;
    s->prefilling = seq;
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

static void leave_decoding(ib_sched_t *s, ib_seq_t *seq)
{
    fifo_remove(&s->decoding, seq);
    if (s->decoding.count == 0)
        s->next_step_ns = UINT64_MAX;
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
        s->prefilling = NULL;
        release_slot(s, now_ns);
        break;
    case IB_SEQ_DECODING:
        leave_decoding(s, seq);
        release_slot(s, now_ns);
        break;
    case IB_SEQ_NEW:
    case IB_SEQ_DONE:
        return;
    }
    seq->state = IB_SEQ_DONE;
    s->cancelled++;
}

/* Emits token <index> of <seq> at <t>; the last one retires the sequence first. */
static void emit(ib_sched_t *s, ib_seq_t *seq, uint64_t t)
{
    uint32_t index = seq->generated++;
    s->generation_tokens++;
    int last = seq->generated >= seq->max_tokens;
    if (last) {
        if (seq->state == IB_SEQ_DECODING)
            leave_decoding(s, seq);
        seq->state = IB_SEQ_DONE;
        s->finished++;
        release_slot(s, t);
    }
    seq->on_token(seq, index, last);
}

/* The prefill unit finished <seq> at <t>: cache its blocks, first token, join decoding. */
static void finish_prefill(ib_sched_t *s, ib_seq_t *seq, uint64_t t)
{
    ib_pcache_insert(&s->cache, seq->hashes, seq->nblocks, t, seq);
    s->prefilling = NULL;
    seq->first_token_ns = t;
    if (seq->max_tokens > 1) {
        seq->state = IB_SEQ_DECODING;
        fifo_push(&s->decoding, seq);
        if (s->next_step_ns == UINT64_MAX)
            s->next_step_ns = t + step_cost(s);
    }
    start_prefill(s, t);
    emit(s, seq, t);
}

/* One decode step at <t>: a token for every sequence in the batch. */
static void decode_step(ib_sched_t *s, uint64_t t)
{
    s->steps++;
    uint32_t n = s->decoding.count;
    ib_seq_t *seq = s->decoding.head;
    /* Sequences that join during this step's callbacks (none can: prefills end only in
     * finish_prefill) would not be visited: the walk is bounded by the batch size. */
    for (uint32_t i = 0; i < n && seq != NULL; i++) {
        ib_seq_t *next = seq->_next;
        emit(s, seq, t);
        seq = next;
    }
    s->next_step_ns = s->decoding.count > 0 ? t + step_cost(s) : UINT64_MAX;
}

void ib_sched_run(ib_sched_t *s, uint64_t now_ns)
{
    /* Events are processed in time order, each at its own deadline, so a late wake-up
     * does not stretch the model's timeline. */
    for (;;) {
        uint64_t prefill_end = s->prefilling ? s->prefilling->_prefill_end_ns : UINT64_MAX;
        uint64_t t = prefill_end < s->next_step_ns ? prefill_end : s->next_step_ns;
        if (t > now_ns)
            break;
        if (t == prefill_end)
            finish_prefill(s, s->prefilling, t);
        else
            decode_step(s, t);
    }
}

uint64_t ib_sched_next_deadline(const ib_sched_t *s)
{
    uint64_t prefill_end = s->prefilling ? s->prefilling->_prefill_end_ns : UINT64_MAX;
    return prefill_end < s->next_step_ns ? prefill_end : s->next_step_ns;
}
