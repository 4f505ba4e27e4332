/*
 * ib-mock-engine's HTTP side, on libh2o's evloop: OpenAI routes, SSE streaming, metrics.
 * The timing and cache model is the scheduler (sched.c); this file turns its token
 * callbacks into responses.
 *
 * Lifetime of a completion: its state (struct stream) is allocated from the request's
 * memory pool with a dispose callback, so it lives exactly as long as h2o keeps the
 * request. Whatever ends first (last token sent, client gone, connection closed) the
 * dispose callback cancels the sequence in the scheduler and frees what it owns.
 */
#include "ibrain/mock_engine.h"
#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/net.h"
#include "ibrain/hashchain.h"
#include "ibrain/oai_error.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/prompt.h"

#include <errno.h>
#include <fcntl.h>
#include <h2o.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct ib_engine {
    ib_engine_config_t cfg;
    ib_sched_t sched;
    ib_json_parser_t *json;
    ib_prompt_t prompt;       /* render, tokenize and hash scratch */
    ib_tokenizer_t *tokenizer; /* NULL: tokens estimated from bytes */
    ib_tok_state_t *tok;
    ib_buf_t scratch;         /* response scratch */
    ib_buf_t model_json;      /* the model name, JSON-escaped */
    char engine_id[128];
    uint64_t next_id;
    uint64_t started_unix;
    int listen_fd;
    int stopping;
    uint64_t stop_deadline_ns;
    ib_engine_metrics_t m;
    ib_kvpub_t *kv;           /* KV-cache events publisher, or NULL */
    h2o_evloop_t *loop;
    h2o_globalconf_t h2o_config;
    h2o_context_t h2o_ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_socket_t *listen_sock;
    h2o_socket_t *signal_sock;
    h2o_socket_t *timer_sock;    /* timerfd armed at the scheduler's next deadline */
    int timer_fd;
    uint64_t timer_armed_ns;     /* deadline the timerfd is set to, UINT64_MAX when disarmed */
};

struct handler {
    h2o_handler_t super;
    ib_engine_t *eng;
};

/* A completion in flight. Allocated from req->pool (see the file comment). */
struct stream {
    h2o_generator_t gen;      /* first: h2o hands it back to proceed/stop */
    ib_engine_t *eng;
    h2o_req_t *req;
    ib_seq_t seq;
    uint64_t *hashes;
    uint32_t *token_ids;      /* with KV events: the prompt's ids, for BlockStored */
    ib_api_kind_t kind;
    int streaming, include_usage, explicit_max;
    int started, inflight, final_queued, final_sent;
    ib_buf_t bufs[2];         /* [cur] is being filled; [!cur] is in flight */
    int cur;
    ib_buf_t text;            /* non-streaming: the generated text */
    uint64_t id;
    uint64_t created;
    uint64_t last_token_ns;   /* for the inter-token latency */
    uint32_t vocab_seed;
};

void ib_engine_config_defaults(ib_engine_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "127.0.0.1:8000";
    cfg->model = "mock";
    cfg->chat_template = IB_TEMPLATE_CHATML;
    cfg->bytes_per_token = 4;
    cfg->max_model_len = 131072;
    cfg->default_max_tokens = 64;
    cfg->max_body_bytes = 8u << 20;
    cfg->drain_timeout_ms = 5000;
    ib_kvpub_config_defaults(&cfg->kv_events);
    cfg->sched = (ib_sched_config_t){
        .max_seqs = 256,
        .block_tokens = 16,
        .cache_blocks = 65536,
        .cache_ttl_ns = 0,
        .overhead_ns = 2000000,        /* 2 ms */
        .prefill_ns_per_token = 20000, /* 20 us: 50k prompt tokens/s */
        .itl_ns = 10000000,            /* 10 ms */
        .itl_ns_per_seq = 20000,       /* +20 us per other decoding sequence */
    };
}

/* ---- responses ---- */

static void add_header(h2o_req_t *req, const h2o_token_t *tok, const char *v, size_t n)
{
    h2o_add_header(&req->pool, &req->res.headers, tok, NULL, v, n);
}

static void add_engine_header(ib_engine_t *eng, h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-engine-id"), 0, NULL, eng->engine_id,
                          strlen(eng->engine_id));
}

/* X-Cached-Tokens: prompt tokens the engine's prefix cache served (the value must live in
 * the request's pool: h2o keeps the pointer, not a copy). */
static void add_cached_tokens_header(h2o_req_t *req, uint32_t cached)
{
    char *v = h2o_mem_alloc_pool(&req->pool, 16);
    int n = snprintf(v, 16, "%u", cached);
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("x-cached-tokens"), 0, NULL, v, (size_t)n);
}

/* Sends <body> as a complete response with an explicit Content-Length (keeps the
 * connection alive; see DEPS.md on h2o). */
static void send_body(ib_engine_t *eng, h2o_req_t *req, ib_engine_route_t r, int status, const char *ctype, const char *body,
                      size_t len)
{
    ib_engine_metrics_http(&eng->m, r, status);
    req->res.status = status;
    req->res.reason = ib_http_reason(status);
    req->res.content_length = len;
    add_header(req, H2O_TOKEN_CONTENT_TYPE, ctype, strlen(ctype));
    add_engine_header(eng, req);
    h2o_send_inline(req, body, len);
}

static void send_error(ib_engine_t *eng, h2o_req_t *req, ib_engine_route_t r, int status, const char *msg, const char *type,
                       const char *param, const char *code)
{
    ib_buf_reset(&eng->scratch);
    ib_oai_error_json(&eng->scratch, msg, type, param, code);
    send_body(eng, req, r, status, "application/json", eng->scratch.ptr, eng->scratch.len);
}

/* ---- completions ---- */

/* Four-byte tokens, so that generated text counts like prompt text (bytes_per_token 4). */
static const char vocab[16][5] = {" the", " and", " for", " you", " are", " was", " not", " but",
                                  " all", " can", " her", " one", " our", " out", " day", " get"};

static const char *token_text(const struct stream *st, uint32_t i)
{
    return vocab[(st->vocab_seed + i * 7u) & 15u];
}

static const char *finish_reason(const struct stream *st) { return st->explicit_max ? "length" : "stop"; }

static int append_usage(ib_buf_t *b, const struct stream *st)
{
    return ib_buf_try_printf(b,
                   "\"usage\":{\"prompt_tokens\":%u,\"completion_tokens\":%u,\"total_tokens\":%u,"
                   "\"prompt_tokens_details\":{\"cached_tokens\":%u}}",
                   st->seq.prompt_tokens, st->seq.generated, st->seq.prompt_tokens + st->seq.generated,
                   st->seq.cached_tokens);
}

/* Appends the SSE event(s) for token <i> to the fill buffer. */
static int append_sse(struct stream *st, uint32_t i, int last)
{
    ib_engine_t *eng = st->eng;
    ib_buf_t *b = &st->bufs[st->cur];
    const char *tok = token_text(st, i);
    const char *fin_open = last ? "\"" : "", *fin = last ? finish_reason(st) : "null", *fin_close = last ? "\"" : "";
    int rc;
    if (st->kind == IB_API_CHAT)
        rc = ib_buf_try_printf(b,
                     "data: {\"id\":\"chatcmpl-%s-%llu\",\"object\":\"chat.completion.chunk\",\"created\":%llu,"
                     "\"model\":\"%.*s\",\"choices\":[{\"index\":0,\"delta\":{%s\"content\":\"%s\"},\"logprobs\":null,"
                     "\"finish_reason\":%s%s%s}]}\n\n",
                     eng->engine_id, (unsigned long long)st->id, (unsigned long long)st->created,
                     (int)eng->model_json.len, eng->model_json.ptr, i == 0 ? "\"role\":\"assistant\"," : "", tok,
                     fin_open, fin, fin_close);
    else
        rc = ib_buf_try_printf(b,
                     "data: {\"id\":\"cmpl-%s-%llu\",\"object\":\"text_completion\",\"created\":%llu,\"model\":\"%.*s\","
                     "\"choices\":[{\"index\":0,\"text\":\"%s\",\"logprobs\":null,\"finish_reason\":%s%s%s}]}\n\n",
                     eng->engine_id, (unsigned long long)st->id, (unsigned long long)st->created,
                     (int)eng->model_json.len, eng->model_json.ptr, tok, fin_open, fin, fin_close);
    if (rc == 0 && last && st->include_usage)
        rc = ib_buf_try_printf(b, "data: {\"id\":\"%s-%s-%llu\",\"object\":\"%s\",\"created\":%llu,\"model\":\"%.*s\",\"choices\":[],",
                     st->kind == IB_API_CHAT ? "chatcmpl" : "cmpl", eng->engine_id, (unsigned long long)st->id,
                     st->kind == IB_API_CHAT ? "chat.completion.chunk" : "text_completion",
                     (unsigned long long)st->created, (int)eng->model_json.len, eng->model_json.ptr) ||
             append_usage(b, st) || ib_buf_try_printf(b, "}\n\n");
    if (rc == 0 && last)
        rc = ib_buf_try_printf(b, "data: [DONE]\n\n");
    return rc;
}

static void start_stream_response(struct stream *st)
{
    h2o_req_t *req = st->req;
    req->res.status = 200;
    req->res.reason = "OK";
    add_header(req, H2O_TOKEN_CONTENT_TYPE, H2O_STRLIT("text/event-stream"));
    add_header(req, H2O_TOKEN_CACHE_CONTROL, H2O_STRLIT("no-cache"));
    add_engine_header(st->eng, req);
    add_cached_tokens_header(req, st->seq.cached_tokens);
    ib_engine_metrics_http(&st->eng->m, st->kind == IB_API_CHAT ? IB_ER_CHAT : IB_ER_COMPLETIONS, 200);
    h2o_start_response(req, &st->gen);
    st->started = 1;
}

/* Hands the fill buffer to h2o unless a send is already in flight (proceed comes back). */
static void flush_stream(struct stream *st)
{
    if (st->inflight || st->final_sent)
        return;
    ib_buf_t *b = &st->bufs[st->cur];
    if (b->len == 0 && !st->final_queued)
        return;
    h2o_iovec_t v = h2o_iovec_init(b->ptr, b->len);
    st->cur ^= 1;
    ib_buf_reset(&st->bufs[st->cur]);
    st->inflight = 1;
    if (st->final_queued)
        st->final_sent = 1;
    h2o_send(st->req, &v, 1, st->final_queued ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

static void on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    struct stream *st = (struct stream *)gen;
    st->inflight = 0;
    flush_stream(st);
}

static void on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    struct stream *st = (struct stream *)gen;
    if (st->seq.state != IB_SEQ_DONE) {
        st->eng->m.disconnects++;
        ib_sched_cancel(&st->eng->sched, &st->seq, ib_now_ns());
    }
}

static void send_full_completion(struct stream *st)
{
    ib_engine_t *eng = st->eng;
    ib_buf_t *b = &eng->scratch;
    ib_buf_reset(b);
    int rc;
    if (st->kind == IB_API_CHAT)
        rc = ib_buf_try_printf(b,
                     "{\"id\":\"chatcmpl-%s-%llu\",\"object\":\"chat.completion\",\"created\":%llu,\"model\":\"%.*s\","
                     "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%.*s\"},"
                     "\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                     eng->engine_id, (unsigned long long)st->id, (unsigned long long)st->created,
                     (int)eng->model_json.len, eng->model_json.ptr, (int)st->text.len, st->text.ptr, finish_reason(st));
    else
        rc = ib_buf_try_printf(b,
                     "{\"id\":\"cmpl-%s-%llu\",\"object\":\"text_completion\",\"created\":%llu,\"model\":\"%.*s\","
                     "\"choices\":[{\"index\":0,\"text\":\"%.*s\",\"logprobs\":null,\"finish_reason\":\"%s\"}],",
                     eng->engine_id, (unsigned long long)st->id, (unsigned long long)st->created,
                     (int)eng->model_json.len, eng->model_json.ptr, (int)st->text.len, st->text.ptr, finish_reason(st));
    rc = rc || append_usage(b, st) || ib_buf_try_printf(b, "}");
    ib_engine_route_t r = st->kind == IB_API_CHAT ? IB_ER_CHAT : IB_ER_COMPLETIONS;
    if (rc != 0) {
        send_error(eng, st->req, r, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    add_cached_tokens_header(st->req, st->seq.cached_tokens);
    send_body(eng, st->req, r, 200, "application/json", b->ptr, b->len);
}

/* The latency histograms and finish reasons, as vLLM observes them, per token. */
static void observe_token(struct stream *st, uint32_t index, int last)
{
    ib_engine_metrics_t *m = &st->eng->m;
    uint64_t now = ib_now_ns();
    if (index == 0)
        ib_engine_hist_observe(&m->ttft, (double)(st->seq.first_token_ns - st->seq.submit_ns) / 1e9);
    else
        ib_engine_hist_observe(&m->itl, (double)(now - st->last_token_ns) / 1e9);
    st->last_token_ns = now;
    if (last) {
        ib_engine_hist_observe(&m->e2e, (double)(now - st->seq.submit_ns) / 1e9);
        if (st->explicit_max)
            m->finished_length++;
        else
            m->finished_stop++;
    }
}

static void on_token(ib_seq_t *seq, uint32_t index, int last)
{
    struct stream *st = seq->owner;
    observe_token(st, index, last);
    if (!st->streaming) {
        if (ib_buf_try_append(&st->text, token_text(st, index), 4) != 0 && !last)
            return;
        if (last)
            send_full_completion(st);
        return;
    }
    if (!st->started)
        start_stream_response(st);
    if (append_sse(st, index, last) != 0) {
        /* Out of memory: end the stream; the client sees it cut short. */
        ib_sched_cancel(&st->eng->sched, seq, ib_now_ns());
        last = 1;
    }
    if (last)
        st->final_queued = 1;
    flush_stream(st);
}

static void on_stream_dispose(void *p)
{
    struct stream *st = p;
    ib_engine_t *eng = st->eng;
    if (st->seq.state != IB_SEQ_DONE && st->seq.state != IB_SEQ_NEW)
        ib_sched_cancel(&eng->sched, &st->seq, ib_now_ns());
    free(st->hashes);
    free(st->token_ids);
    ib_buf_free(&st->bufs[0]);
    ib_buf_free(&st->bufs[1]);
    ib_buf_free(&st->text);
    eng->m.streams_active--;
}

static void handle_completion(ib_engine_t *eng, h2o_req_t *req, ib_api_kind_t kind)
{
    ib_engine_route_t r = kind == IB_API_CHAT ? IB_ER_CHAT : IB_ER_COMPLETIONS;
    ib_oai_request_t oreq;
    ib_json_error_t jerr;
    if (ib_oai_parse(eng->json, kind, req->entity.base, req->entity.len, req->entity.len, &oreq, &jerr) != 0) {
        send_error(eng, req, r, jerr.status, jerr.message, "invalid_request_error", jerr.param, NULL);
        return;
    }
    if (oreq.model.len != strlen(eng->cfg.model) || memcmp(oreq.model.ptr, eng->cfg.model, oreq.model.len) != 0) {
        char msg[192];
        snprintf(msg, sizeof(msg), "The model `%.*s` does not exist.", (int)(oreq.model.len > 100 ? 100 : oreq.model.len),
                 oreq.model.ptr);
        send_error(eng, req, r, 404, msg, "invalid_request_error", "model", "model_not_found");
        return;
    }
    if (oreq.max_tokens == 0) {
        send_error(eng, req, r, 400, "max_tokens must be at least 1", "invalid_request_error",
                   "max_tokens", NULL);
        return;
    }
    /* The KV cache's blocks: block_tokens tokens, or as many 4-byte pseudo-tokens of text. */
    uint32_t block = eng->tok != NULL ? eng->cfg.sched.block_tokens
                                      : eng->cfg.sched.block_tokens * eng->cfg.bytes_per_token;
    if (ib_prompt_build(&eng->prompt, eng->cfg.chat_template, &oreq, eng->tok, block, eng->cfg.bytes_per_token) != 0) {
        send_error(eng, req, r, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    uint64_t prompt_tokens = eng->prompt.tokens;
    if (prompt_tokens == 0)
        prompt_tokens = 1;
    uint64_t max_tokens = oreq.max_tokens > 0 ? (uint64_t)oreq.max_tokens : eng->cfg.default_max_tokens;
    if (prompt_tokens + max_tokens > eng->cfg.max_model_len) {
        char msg[192];
        snprintf(msg, sizeof(msg),
                 "This model's maximum context length is %u tokens. However, you requested %llu tokens "
                 "(%llu in the prompt, %llu for the completion).",
                 eng->cfg.max_model_len, (unsigned long long)(prompt_tokens + max_tokens),
                 (unsigned long long)prompt_tokens, (unsigned long long)max_tokens);
        send_error(eng, req, r, 400, msg, "invalid_request_error", kind == IB_API_CHAT ? "messages" : "prompt",
                   "context_length_exceeded");
        return;
    }

    struct stream *st = h2o_mem_alloc_shared(&req->pool, sizeof(*st), on_stream_dispose);
    memset(st, 0, sizeof(*st));
    st->gen.proceed = on_proceed;
    st->gen.stop = on_stop;
    st->eng = eng;
    st->req = req;
    st->kind = kind;
    st->streaming = oreq.stream;
    st->include_usage = oreq.include_usage;
    st->explicit_max = oreq.max_tokens > 0;
    st->id = ++eng->next_id;
    st->created = (uint64_t)time(NULL);
    st->vocab_seed = (uint32_t)st->id;
    eng->m.streams_active++;

    size_t nblocks = eng->prompt.nblocks;
    if (nblocks > 0) {
        st->hashes = malloc(nblocks * sizeof(*st->hashes));
        if (st->hashes == NULL) {
            send_error(eng, req, r, 500, "out of memory", "server_error", NULL, NULL);
            return;
        }
        memcpy(st->hashes, eng->prompt.hashes, nblocks * sizeof(*st->hashes));
        if (eng->kv != NULL && eng->prompt.tokenized) {
            size_t ntok = nblocks * eng->cfg.sched.block_tokens;
            st->token_ids = malloc(ntok * sizeof(*st->token_ids));
            if (st->token_ids == NULL) {
                send_error(eng, req, r, 500, "out of memory", "server_error", NULL, NULL);
                return;
            }
            memcpy(st->token_ids, eng->prompt.ids.ids, ntok * sizeof(*st->token_ids));
        }
    }
    st->seq.token_ids = st->token_ids;
    st->seq.hashes = st->hashes;
    st->seq.nblocks = nblocks;
    st->seq.prompt_tokens = (uint32_t)prompt_tokens;
    st->seq.max_tokens = (uint32_t)max_tokens;
    st->seq.on_token = on_token;
    st->seq.owner = st;
    ib_sched_submit(&eng->sched, &st->seq, ib_now_ns());
    if (eng->kv != NULL)
        ib_kvpub_flush(eng->kv); /* a lookup may have dropped expired blocks */
}

/* ---- other routes ---- */

/* vLLM's ModelCard (vllm/entrypoints/openai/protocol.py): owned_by "vllm" is how SMG
 * recognises a vLLM worker; root is the model path, here the served name. */
static void handle_models(ib_engine_t *eng, h2o_req_t *req)
{
    ib_buf_t *b = &eng->scratch;
    ib_buf_reset(b);
    unsigned long long t = (unsigned long long)eng->started_unix;
    int m = (int)eng->model_json.len;
    const char *name = eng->model_json.ptr;
    if (ib_buf_try_printf(b,
                          "{\"object\":\"list\",\"data\":[{\"id\":\"%.*s\",\"object\":\"model\",\"created\":%llu,"
                          "\"owned_by\":\"vllm\",\"root\":\"%.*s\",\"parent\":null,\"max_model_len\":%u,"
                          "\"permission\":[{\"id\":\"modelperm-%s\",\"object\":\"model_permission\",\"created\":%llu,"
                          "\"allow_create_engine\":false,\"allow_sampling\":true,\"allow_logprobs\":true,"
                          "\"allow_search_indices\":false,\"allow_view\":true,\"allow_fine_tuning\":false,"
                          "\"organization\":\"*\",\"group\":null,\"is_blocking\":false}]}]}",
                          m, name, t, m, name, eng->cfg.max_model_len, eng->engine_id, t) != 0) {
        send_error(eng, req, IB_ER_MODELS, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    send_body(eng, req, IB_ER_MODELS, 200, "application/json", b->ptr, b->len);
}

/* vLLM's /load with --enable-server-load-tracking: the requests it holds now. */
static void handle_load(ib_engine_t *eng, h2o_req_t *req)
{
    ib_buf_t *b = &eng->scratch;
    ib_buf_reset(b);
    if (ib_buf_try_printf(b, "{\"server_load\":%llu}", (unsigned long long)eng->m.streams_active) != 0) {
        send_error(eng, req, IB_ER_LOAD, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    send_body(eng, req, IB_ER_LOAD, 200, "application/json", b->ptr, b->len);
}

static void handle_metrics(ib_engine_t *eng, h2o_req_t *req)
{
    ib_buf_t *b = &eng->scratch;
    ib_buf_reset(b);
    ib_engine_metrics_http(&eng->m, IB_ER_METRICS, 200); /* counted before rendering so the scrape sees itself */
    eng->m.http[IB_ER_METRICS][0]--;
    if (ib_engine_metrics_render(b, &eng->m, &eng->sched, eng->cfg.model) != 0) {
        send_error(eng, req, IB_ER_METRICS, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    send_body(eng, req, IB_ER_METRICS, 200, "text/plain; version=0.0.4; charset=utf-8", b->ptr, b->len);
}

/* vLLM's POST /tokenize: a chat body ("messages", rendered with the engine's template and
 * generation prompt, as a completion would be prefilled) or a completion body ("prompt"),
 * answered with {"count","max_model_len","tokens","token_strs"}. Routers that score
 * workers on KV events by token ids (the vLLM router's kv_aware) ask for it. */
static void handle_tokenize(ib_engine_t *eng, h2o_req_t *req)
{
    if (eng->tok == NULL) {
        send_error(eng, req, IB_ER_TOKENIZE, 404, "tokenization needs --tokenizer", "invalid_request_error", NULL,
                   NULL);
        return;
    }
    ib_span_t msgs;
    /* present (an array: "not an object", -1), or absent (1) */
    int chat = ib_json_pointer_raw(eng->json, req->entity.base, req->entity.len, "/messages", &msgs) != 1;
    ib_oai_request_t oreq;
    ib_json_error_t jerr;
    if (ib_oai_parse(eng->json, chat ? IB_API_CHAT : IB_API_COMPLETION, req->entity.base, req->entity.len,
                     req->entity.len, &oreq, &jerr) != 0) {
        send_error(eng, req, IB_ER_TOKENIZE, jerr.status, jerr.message, "invalid_request_error", jerr.param, NULL);
        return;
    }
    if (oreq.model.len != strlen(eng->cfg.model) || memcmp(oreq.model.ptr, eng->cfg.model, oreq.model.len) != 0) {
        send_error(eng, req, IB_ER_TOKENIZE, 404, "The model does not exist.", "invalid_request_error", "model",
                   "model_not_found");
        return;
    }
    ib_buf_t *b = &eng->scratch;
    ib_buf_reset(b);
    int rc = ib_prompt_build(&eng->prompt, eng->cfg.chat_template, &oreq, eng->tok, eng->cfg.sched.block_tokens,
                             eng->cfg.bytes_per_token);
    rc = rc || ib_buf_try_printf(b, "{\"count\":%zu,\"max_model_len\":%u,\"tokens\":[", eng->prompt.ids.len,
                                 eng->cfg.max_model_len);
    for (size_t i = 0; i < eng->prompt.ids.len && !rc; i++)
        rc = ib_buf_try_printf(b, i ? ",%u" : "%u", eng->prompt.ids.ids[i]);
    rc = rc || ib_buf_try_printf(b, "],\"token_strs\":null}");
    if (rc != 0) {
        send_error(eng, req, IB_ER_TOKENIZE, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    send_body(eng, req, IB_ER_TOKENIZE, 200, "application/json", b->ptr, b->len);
}

/* vLLM's POST /reset_prefix_cache: every cached block goes (AllBlocksCleared). */
static void handle_reset_cache(ib_engine_t *eng, h2o_req_t *req)
{
    ib_pcache_clear(&eng->sched.cache);
    if (eng->kv != NULL)
        ib_kvpub_flush(eng->kv);
    send_body(eng, req, IB_ER_RESET_CACHE, 200, "application/json", H2O_STRLIT(""));
}

/* The mock's own: the blocks the cache holds now and their event hashes, for tests. */
static void handle_kv_blocks(ib_engine_t *eng, h2o_req_t *req)
{
    if (eng->kv == NULL) {
        send_error(eng, req, IB_ER_KV_BLOCKS, 404, "KV-cache events are not enabled (--kv-events-config)",
                   "invalid_request_error", NULL, NULL);
        return;
    }
    ib_buf_reset(&eng->scratch);
    if (ib_kvpub_render_blocks(eng->kv, &eng->scratch) != 0) {
        send_error(eng, req, IB_ER_KV_BLOCKS, 500, "out of memory", "server_error", NULL, NULL);
        return;
    }
    send_body(eng, req, IB_ER_KV_BLOCKS, 200, "application/json", eng->scratch.ptr, eng->scratch.len);
}

static int path_is(h2o_req_t *req, const char *p)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, p, strlen(p));
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    ib_engine_t *eng = ((struct handler *)self)->eng;
    int is_get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    int is_post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    struct {
        const char *path;
        ib_engine_route_t r;
        int post;
    } routes[] = {{"/v1/chat/completions", IB_ER_CHAT, 1}, {"/v1/completions", IB_ER_COMPLETIONS, 1},
                  {"/v1/models", IB_ER_MODELS, 0},          {"/health", IB_ER_HEALTH, 0},
                  {"/metrics", IB_ER_METRICS, 0},           {"/version", IB_ER_VERSION, 0},
                  {"/load", IB_ER_LOAD, 0},                 {"/reset_prefix_cache", IB_ER_RESET_CACHE, 1},
                  {"/debug/kv_blocks", IB_ER_KV_BLOCKS, 0}, {"/tokenize", IB_ER_TOKENIZE, 1}};
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (!path_is(req, routes[i].path))
            continue;
        if (routes[i].post ? !is_post : !is_get) {
            add_header(req, H2O_TOKEN_ALLOW, routes[i].post ? "POST" : "GET", routes[i].post ? 4 : 3);
            send_error(eng, req, routes[i].r, 405, "method not allowed", "invalid_request_error", NULL, NULL);
            return 0;
        }
        if (eng->stopping && routes[i].post) {
            send_error(eng, req, routes[i].r, 503, "engine is shutting down", "server_error", NULL, NULL);
            return 0;
        }
        switch (routes[i].r) {
        case IB_ER_CHAT: handle_completion(eng, req, IB_API_CHAT); break;
        case IB_ER_COMPLETIONS: handle_completion(eng, req, IB_API_COMPLETION); break;
        case IB_ER_MODELS: handle_models(eng, req); break;
        case IB_ER_HEALTH: send_body(eng, req, IB_ER_HEALTH, 200, "application/json", H2O_STRLIT("{\"status\":\"ok\"}")); break;
        case IB_ER_VERSION: /* the vLLM release whose API the mock mirrors, marked as the mock */
            send_body(eng, req, IB_ER_VERSION, 200, "application/json", H2O_STRLIT("{\"version\":\"0.11.0+ibmock\"}"));
            break;
        case IB_ER_LOAD: handle_load(eng, req); break;
        case IB_ER_RESET_CACHE: handle_reset_cache(eng, req); break;
        case IB_ER_KV_BLOCKS: handle_kv_blocks(eng, req); break;
        case IB_ER_TOKENIZE: handle_tokenize(eng, req); break;
        default: handle_metrics(eng, req); break;
        }
        return 0;
    }
    send_error(eng, req, IB_ER_OTHER, 404, "no such route", "invalid_request_error", NULL, NULL);
    return 0;
}

/* ---- sockets and loop ---- */

static void on_accept(h2o_socket_t *listener, const char *err)
{
    ib_engine_t *eng = listener->data;
    if (err != NULL)
        return;
    for (int i = 0; i < 64; i++) { /* drain the backlog in one wake-up */
        h2o_socket_t *sock = h2o_evloop_socket_accept(listener);
        if (sock == NULL)
            return;
        int one = 1;
        setsockopt(h2o_socket_get_fd(sock), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        h2o_accept(&eng->accept_ctx, sock);
    }
}

static void on_signal(h2o_socket_t *sock, const char *err)
{
    ib_engine_t *eng = sock->data;
    (void)err;
    h2o_buffer_consume(&sock->input, sock->input->size);
    if (!eng->stopping) {
        eng->stopping = 1;
        eng->stop_deadline_ns = ib_now_ns() + (uint64_t)eng->cfg.drain_timeout_ms * 1000000ull;
        if (eng->listen_sock != NULL) {
            h2o_socket_read_stop(eng->listen_sock);
            h2o_socket_close(eng->listen_sock);
            eng->listen_sock = NULL;
        }
        /* Close idle keep-alive connections now, busy ones after their response: h2o 2.2's
         * request_shutdown closes HTTP/1 connections only after their next response, so an
         * idle one (a router's pooled connection) would wait out the 10 s request timeout;
         * a zero timeout expires them on the next loop turn (h2o_timeout_run compares each
         * entry's registration time plus this value with now). */
        eng->h2o_ctx.http1.req_timeout.timeout = 0;
        h2o_context_request_shutdown(&eng->h2o_ctx);
    }
}

static void on_timer(h2o_socket_t *sock, const char *err)
{
    ib_engine_t *eng = sock->data;
    (void)err;
    h2o_buffer_consume(&sock->input, sock->input->size);
    eng->timer_armed_ns = UINT64_MAX; /* one-shot: it fired */
    ib_sched_run(&eng->sched, ib_now_ns());
    if (eng->kv != NULL)
        ib_kvpub_flush(eng->kv); /* one batch per wake-up, as vLLM sends one per step */
}

/* Points the timerfd at the scheduler's next deadline (absolute, ns). */
static void arm_timer(ib_engine_t *eng)
{
    uint64_t next = ib_sched_next_deadline(&eng->sched);
    if (next == eng->timer_armed_ns)
        return;
    struct itimerspec its = {0};
    if (next != UINT64_MAX) {
        its.it_value.tv_sec = (time_t)(next / 1000000000ull);
        its.it_value.tv_nsec = (long)(next % 1000000000ull);
        if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
            its.it_value.tv_nsec = 1; /* all zero would disarm */
    }
    timerfd_settime(eng->timer_fd, TFD_TIMER_ABSTIME, &its, NULL);
    eng->timer_armed_ns = next;
}

ib_engine_t *ib_engine_create(const ib_engine_config_t *cfg)
{
    ib_engine_t *eng = calloc(1, sizeof(*eng));
    if (eng == NULL)
        return NULL;
    eng->cfg = *cfg;
    eng->listen_fd = -1;
    eng->started_unix = (uint64_t)time(NULL);
    ib_engine_metrics_init(&eng->m);
    ib_raise_nofile();
    /* blocked before any thread starts (the KV events' replay thread, libzmq's I/O threads):
     * they inherit the mask, so SIGTERM reaches the loop's signalfd only */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGTERM);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    if (cfg->bytes_per_token == 0) {
        fprintf(stderr, "ib-mock-engine: --bytes-per-token must be at least 1\n");
        goto Error;
    }
    if (ib_sched_init(&eng->sched, &cfg->sched) != 0) {
        fprintf(stderr, "ib-mock-engine: bad scheduler settings (slots, block size and cache size must be > 0)\n");
        goto Error;
    }
    if (cfg->tokenizer != NULL && cfg->tokenizer[0] != '\0') {
        char err[256];
        eng->tokenizer = ib_tokenizer_load(cfg->tokenizer, err, sizeof(err));
        eng->tok = eng->tokenizer != NULL ? ib_tok_state_new(eng->tokenizer) : NULL;
        if (eng->tok == NULL) {
            fprintf(stderr, "ib-mock-engine: --tokenizer: %s\n", eng->tokenizer == NULL ? err : "out of memory");
            goto Error;
        }
    }
    if (cfg->kv_events.enabled) {
        char err[512];
        if (eng->tok == NULL) {
            fprintf(stderr, "ib-mock-engine: --kv-events-config needs --tokenizer (events carry token ids)\n");
            goto Error;
        }
        eng->kv = ib_kvpub_create(&cfg->kv_events, &eng->sched.cache, cfg->sched.block_tokens, err, sizeof(err));
        if (eng->kv == NULL) {
            fprintf(stderr, "ib-mock-engine: KV events: %s\n", err);
            goto Error;
        }
        if (!cfg->kv_events.have_seed)
            fprintf(stderr, "ib-mock-engine: PYTHONHASHSEED is not set: NONE_HASH is random, as in vLLM, so block "
                            "hashes differ on every start\n");
    }
    eng->json = ib_json_parser_new(cfg->max_body_bytes);
    if (eng->json != NULL)
        ib_json_escape(&eng->model_json, cfg->model, strlen(cfg->model));
    if (eng->json == NULL) {
        fprintf(stderr, "ib-mock-engine: out of memory\n");
        goto Error;
    }

    struct sockaddr_in sa;
    if (ib_parse_hostport(cfg->listen, &sa) != 0) {
        fprintf(stderr, "ib-mock-engine: --listen wants IPV4:PORT, got '%s'\n", cfg->listen);
        goto Error;
    }
    int one = 1;
    eng->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (eng->listen_fd < 0 || setsockopt(eng->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(eng->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(eng->listen_fd, 4096) != 0) {
        fprintf(stderr, "ib-mock-engine: cannot listen on %s: %s\n", cfg->listen, strerror(errno));
        goto Error;
    }
    socklen_t salen = sizeof(sa);
    getsockname(eng->listen_fd, (struct sockaddr *)&sa, &salen);
    unsigned port = ntohs(sa.sin_port);
    if (cfg->engine_id != NULL)
        snprintf(eng->engine_id, sizeof(eng->engine_id), "%s", cfg->engine_id);
    else
        snprintf(eng->engine_id, sizeof(eng->engine_id), "engine-%u", port);

    h2o_config_init(&eng->h2o_config);
    eng->h2o_config.max_request_entity_size = cfg->max_body_bytes;
    h2o_hostconf_t *host = h2o_config_register_host(&eng->h2o_config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    struct handler *h = (struct handler *)h2o_create_handler(path, sizeof(*h));
    h->super.on_req = on_req;
    h->eng = eng;
    eng->loop = h2o_evloop_create();
    h2o_context_init(&eng->h2o_ctx, eng->loop, &eng->h2o_config);
    eng->accept_ctx.ctx = &eng->h2o_ctx;
    eng->accept_ctx.hosts = eng->h2o_config.hosts;
    eng->listen_sock = h2o_evloop_socket_create(eng->loop, eng->listen_fd, H2O_SOCKET_FLAG_DONT_READ);
    eng->listen_fd = -1; /* owned by the socket now */
    eng->listen_sock->data = eng;
    h2o_socket_read_start(eng->listen_sock, on_accept);

    int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0) {
        fprintf(stderr, "ib-mock-engine: signalfd: %s\n", strerror(errno));
        goto Error;
    }
    eng->signal_sock = h2o_evloop_socket_create(eng->loop, sfd, 0);
    eng->signal_sock->data = eng;
    h2o_socket_read_start(eng->signal_sock, on_signal);

    /* The scheduler's clock: a timerfd read by the loop, so that token events run inside
     * h2o's loop (libh2o 2.2 aborts in write_pending under load when writes start between
     * two h2o_evloop_run calls) and with ns precision (h2o's own timeouts are in ms). */
    eng->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (eng->timer_fd < 0) {
        fprintf(stderr, "ib-mock-engine: timerfd: %s\n", strerror(errno));
        goto Error;
    }
    eng->timer_armed_ns = UINT64_MAX;
    eng->timer_sock = h2o_evloop_socket_create(eng->loop, eng->timer_fd, 0);
    eng->timer_sock->data = eng;
    h2o_socket_read_start(eng->timer_sock, on_timer);

    if (cfg->port_file != NULL && ib_write_port_file(cfg->port_file, port) != 0) {
        fprintf(stderr, "ib-mock-engine: cannot write %s: %s\n", cfg->port_file, strerror(errno));
        goto Error;
    }
    fprintf(stderr, "ib-mock-engine: %s serving model '%s' on %s:%u (template %s, block %u tokens, cache %u blocks)\n",
            eng->engine_id, cfg->model, inet_ntoa(sa.sin_addr), port, ib_chat_template_name(cfg->chat_template),
            cfg->sched.block_tokens, cfg->sched.cache_blocks);
    return eng;
Error:
    ib_engine_destroy(eng);
    return NULL;
}

int ib_engine_run(ib_engine_t *eng)
{
    for (;;) {
        uint64_t now = ib_now_ns();
        if (eng->stopping && ((eng->m.streams_active == 0 && h2o_linklist_is_empty(&eng->h2o_ctx.http1._conns)) ||
                              now >= eng->stop_deadline_ns))
            break;
        arm_timer(eng);
        h2o_evloop_run(eng->loop, eng->stopping ? 50 : 1000);
    }
    fprintf(stderr, "ib-mock-engine: %s stopped (%llu streams still open)\n", eng->engine_id,
            (unsigned long long)eng->m.streams_active);
    return 0;
}

void ib_engine_destroy(ib_engine_t *eng)
{
    if (eng == NULL)
        return;
    if (eng->listen_fd >= 0)
        close(eng->listen_fd);
    ib_json_parser_free(eng->json);
    ib_prompt_free(&eng->prompt);
    ib_tok_state_free(eng->tok);
    ib_tokenizer_free(eng->tokenizer);
    ib_buf_free(&eng->scratch);
    ib_buf_free(&eng->model_json);
    if (eng->loop != NULL) {
        if (eng->listen_sock != NULL)
            h2o_socket_close(eng->listen_sock);
        if (eng->signal_sock != NULL)
            h2o_socket_close(eng->signal_sock);
        if (eng->timer_sock != NULL)
            h2o_socket_close(eng->timer_sock);
        h2o_evloop_run(eng->loop, 0); /* lets the loop free the closed sockets */
        /* h2o_context_request_shutdown armed HTTP/2's graceful-shutdown timer; h2o 2.2's
         * dispose asserts that every timeout list is empty. */
        if (h2o_timeout_is_linked(&eng->h2o_ctx.http2._graceful_shutdown_timeout))
            h2o_timeout_unlink(&eng->h2o_ctx.http2._graceful_shutdown_timeout);
        /* h2o 2.2's dispose leaves the context's message queue (88 bytes, once per process;
         * destroying it ourselves crashes in 2.2.5): tests/lsan.supp names it. */
        h2o_context_dispose(&eng->h2o_ctx);
        h2o_evloop_destroy(eng->loop);
        h2o_config_dispose(&eng->h2o_config);
    }
    ib_kvpub_destroy(eng->kv);
    if (eng->sched.cache.entries != NULL)
        ib_sched_destroy(&eng->sched);
    free(eng);
}
