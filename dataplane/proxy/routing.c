/*
 * Routing a chat or completion request: the body is parsed once (simdjson), its workload
 * found by model, the prompt rendered as the engines render it, tokenized when the
 * workload has a tokenizer, its prefix blocks hashed, the context length checked, and
 * the workload's router picks the replica; the choice is recorded for write-back.
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include <xxh_x86dispatch.h>

static void observe_matched(ib_worker_t *w, uint32_t matched, uint32_t blocks)
{
    assert(matched <= blocks);
    int k = 0; /* buckets: 0, 1, 2, 4, ..., 1024, +Inf */
    while (k < IB_NMATCHED && matched > (k == 0 ? 0u : 1u << (k - 1)))
        k++;
    ib_counter_add(&w->m.matched_bucket[k], 1);
    ib_counter_add(&w->m.matched_sum, matched);
    ib_counter_add(&w->m.matched_count, 1);
    ib_counter_add(&w->m.prompt_blocks, blocks);
}

/* With a tokenizer and a context length: prompt tokens + max_tokens (at least 1) over the
 * model's context is a 400 context_length_exceeded, as the engines answer it. */
static int context_exceeded(ib_worker_t *w, uint32_t ctx, const ib_oai_request_t *oreq, ib_api_kind_t kind,
                            ib_routing_error_t *err)
{
    uint64_t prompt = w->prompt.tokens;
    uint64_t completion = oreq->max_tokens > 0 ? (uint64_t)oreq->max_tokens : 1;
    if (ctx == 0 || prompt + completion <= ctx)
        return 0;
    const char *what = kind == IB_API_CHAT ? "messages" : "prompt";
    *err = (ib_routing_error_t){400, "invalid_request_error", what, "context_length_exceeded", NULL, {0}, {0}};
    snprintf(err->message, sizeof(err->message),
             "This model's maximum context length is %u tokens. However, you requested %llu tokens (%llu in the %s, "
             "%llu for the completion). Please reduce the length of the %s or completion.",
             ctx, (unsigned long long)(prompt + completion), (unsigned long long)prompt, what,
             (unsigned long long)completion, what);
    ib_counter_add(&w->m.context_exceeded, 1);
    return 1;
}

/* The tokenizer scratch state of this worker for <t>, created on first use. */
static ib_tok_state_t *tok_state(ib_worker_t *w, const ib_tokenizer_t *t)
{
    if (t == NULL)
        return NULL;
    for (int i = 0; i < IB_WORKER_TOKSTATES; i++) {
        if (w->toks[i].t == t)
            return w->toks[i].s;
        if (w->toks[i].t == NULL) {
            w->toks[i].s = ib_tok_state_new(t);
            if (w->toks[i].s != NULL)
                w->toks[i].t = t;
            return w->toks[i].s;
        }
    }
    return NULL; /* more tokenizers than states: route this workload on bytes */
}

static int refuse(ib_routing_error_t *err, int status, const char *type, const char *param, const char *code,
                  const char *extra, const char *msg)
{
    *err = (ib_routing_error_t){status, type, NULL, code, extra, {0}, {0}};
    if (param != NULL) { /* it may live in the parser's error, on the caller's stack */
        snprintf(err->param_buf, sizeof(err->param_buf), "%s", param);
        err->param = err->param_buf;
    }
    snprintf(err->message, sizeof(err->message), "%s", msg);
    return -2;
}

/* What the router sees of workload <wl>'s replicas for a request of <nblocks> blocks: load,
 * in-flight, usable. */
static void replica_view(ib_worker_t *w, const ib_workload_rt_t *wl, size_t nblocks, int64_t *load, int64_t *inflight,
                         uint8_t *usable)
{
    ib_proxy_t *px = w->px;
    assert(wl->max_slot <= IB_MAX_REPLICAS && wl->nslots <= wl->max_slot);
    memset(usable, 0, wl->max_slot);
    uint64_t now = ib_now_ns();
    for (uint32_t k = 0; k < wl->nslots; k++) {
        uint32_t r = wl->slots[k];
        assert(r < wl->max_slot);
        ib_replica_t *rep = &px->replicas[r];
        /* this instance's figures, plus what the other instances report (write-back) */
        load[r] = ib_replica_pending(rep, px->nworkers) + atomic_load_explicit(&rep->remote_pending, memory_order_relaxed);
        inflight[r] = ib_replica_inflight(rep, px->nworkers) +
                      atomic_load_explicit(&rep->remote_inflight, memory_order_relaxed);
        /* the engine's own counts include traffic no ibrain sent (engine_load.c): its
         * requests in flight, and the queued requests that are not ibrain's (at least
         * those beyond every request ibrain has there) as prefill work, each taken at
         * this one's size (the engines publish no queued tokens) */
        if (ib_engine_load_fresh(px, rep, now)) {
            int64_t waiting = atomic_load_explicit(&rep->engine_waiting, memory_order_relaxed);
            int64_t e = atomic_load_explicit(&rep->engine_running, memory_order_relaxed) + waiting;
            if (waiting > inflight[r])
                load[r] += (waiting - inflight[r]) * (int64_t)nblocks;
            if (e > inflight[r])
                inflight[r] = e;
        }
        usable[r] = (uint8_t)(ib_mask_has(wl->ready, r) && ib_replica_healthy(rep, now));
    }
}

/* The router's choice for the prompt in w->prompt, recorded on <c> and for write-back. */
static int pick(ib_worker_t *w, ib_client_t *c, const ib_rtab_t *rt, const ib_workload_rt_t *wl, size_t nblocks)
{
    int64_t load[IB_MAX_REPLICAS], inflight[IB_MAX_REPLICAS];
    uint8_t usable[IB_MAX_REPLICAS];
    replica_view(w, wl, nblocks, load, inflight, usable);
    c->cand[0] = wl->ready[0];
    c->cand[1] = wl->ready[1];
    c->route_policy = wl->router->policy;
    w->rng = w->rng * 6364136223846793005ull + 1442695040888963407ull;
    ib_aff_walk_t walk; /* the affinity policy's, from pick to commit (not zeroed: 2 KiB) */
    walk.h = NULL;
    ib_route_input_t in = {.hashes = w->prompt.hashes, .nblocks = nblocks, .session_key = c->session_key, .load = load,
                           .inflight = inflight, .usable = usable, .nreplicas = wl->max_slot, .random = w->rng,
                           .walk = &walk};
    ib_route_decision_t d;
    ib_router_pick(wl->router, &in, &d);
    if (d.replica < 0)
        return -1;
    assert((uint32_t)d.replica < wl->max_slot && usable[d.replica]);
    ib_router_commit(wl->router, &in, d.replica);
    if (w->wb.buf != NULL && wl->router->policy == IB_POLICY_AFFINITY) {
        uint32_t wi = (uint32_t)(wl - rt->wl);
        ib_writeback_push(w, rt->version, wi, (uint32_t)d.replica, w->prompt.hashes, nblocks);
        if (c->session_key != 0)
            ib_writeback_push(w, rt->version, wi, (uint32_t)d.replica, &c->session_key, 1);
    }
    c->routed = 1;
    c->route_reason = d.reason;
    c->route_matched = d.matched;
    c->route_blocks = (uint32_t)nblocks;
    ib_counter_add(&w->m.route_reason[wl->router->policy][d.reason], 1);
    observe_matched(w, d.matched, (uint32_t)nblocks);
    return d.replica;
}

int ib_routing_plan(ib_worker_t *w, ib_client_t *c, ib_routing_error_t *err)
{
    assert(c->route == IB_ROUTE_CHAT || c->route == IB_ROUTE_COMPLETIONS);
    ib_proxy_t *px = w->px;
    ib_oai_request_t oreq;
    ib_json_error_t jerr;
    ib_api_kind_t kind = c->route == IB_ROUTE_CHAT ? IB_API_CHAT : IB_API_COMPLETION;
    if (ib_oai_parse(w->json, kind, c->body.ptr, c->body.len, c->body.cap, &oreq, &jerr) != 0)
        return refuse(err, 400, "invalid_request_error", jerr.param, NULL, NULL, jerr.message);
    /* The table stays valid until this loop turn ends (rtab.c). */
    const ib_rtab_t *rt = atomic_load_explicit(&px->rtab, memory_order_acquire);
    if (rt->nworkloads == 0 && rt->version == 0) /* no snapshot yet and no static replica */
        return refuse(err, 503, "server_error", NULL, "no_snapshot", "Retry-After: 1",
                      "no routing snapshot yet: ibrain has no replica to send this to");
    const ib_workload_rt_t *wl = ib_rtab_find(px, rt, oreq.model);
    if (wl == NULL) {
        refuse(err, 404, "invalid_request_error", "model", "model_not_found", NULL, "");
        snprintf(err->message, sizeof(err->message), "The model `%.*s` does not exist.",
                 (int)(oreq.model.len < 100 ? oreq.model.len : 100), oreq.model.ptr);
        return -2;
    }
    assert(wl >= rt->wl && wl < rt->wl + rt->nworkloads);
    if (c->session_key == 0 && oreq.session_id.len > 0)
        c->session_key = XXH3_64bits_withSeed(oreq.session_id.ptr, oreq.session_id.len, 0x5e55) | 1;
    size_t nblocks = 0;
    ib_tok_state_t *ts = tok_state(w, wl->tokenizer);
    uint32_t block = ts != NULL ? wl->block : (wl->tokenizer != NULL ? wl->block * 4 : wl->block);
    if (ib_prompt_build(&w->prompt, wl->tpl, &oreq, ts, block, 4) == 0) {
        nblocks = w->prompt.nblocks;
        if (w->prompt.tokenized) {
            ib_counter_add(&w->m.prompt_tokens, w->prompt.tokens);
            if (context_exceeded(w, wl->context_length, &oreq, kind, err))
                return -2;
        }
    }
    return pick(w, c, rt, wl, nblocks);
}

void ib_routing_request(ib_worker_t *w, ib_client_t *c)
{
    ib_routing_error_t err;
    int replica = ib_routing_plan(w, c, &err);
    if (replica == -2) {
        ib_respond_error(w, c, err.status, err.message, err.type, err.param, err.code, err.extra_headers);
        return;
    }
    /* -1, all replicas ejected: the dispatch's fallback tries the one whose ejection ends
     * first. */
    ib_exchange_dispatch(w, c, replica);
}
