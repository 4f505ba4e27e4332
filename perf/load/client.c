/*
 * ib-load's client loop (include/ibrain/loadrun.h): one thread, one epoll set, HTTP/1.1
 * keep-alive connections, responses parsed with picohttpparser (from libh2o), SSE events
 * read with the simdjson shim.
 */
#include "ibrain/loadrun.h"
#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/json_write.h"
#include "ibrain/net.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/picohttp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

void ib_load_options_defaults(ib_load_options_t *o)
{
    memset(o, 0, sizeof(*o));
    o->host = "127.0.0.1";
    o->ports[0] = 8000;
    o->ntargets = 1;
    o->model = "mock";
    o->chat = 1;
    o->stream = 1;
    o->ignore_eos = 1;
    o->speedup = 1.0;
    o->max_conns = 4096;
    o->timeout_s = 600;
}

void ib_load_result_free(ib_load_result_t *r)
{
    ib_samples_free(&r->ttft_ms);
    ib_samples_free(&r->itl_ms);
    ib_samples_free(&r->e2e_ms);
}

/* ---- run state ---- */

struct pending {          /* a request due at <due_ns> */
    uint64_t due_ns;
    uint32_t item;
    uint32_t turn;
};

struct user {             /* multi-turn conversation state */
    ib_buf_t messages;    /* JSON of the messages so far, without the brackets */
    uint32_t turn;
};

struct conn {
    int fd;
    int connecting;
    ib_buf_t out;
    size_t out_off;
    ib_buf_t in;          /* raw bytes not yet consumed */
    ib_buf_t body;        /* decoded body bytes not yet consumed */
    int head_done, status, chunked, keepalive, done_event, stream_error;
    size_t content_length, body_total;
    struct phr_chunked_decoder dec;
    /* the request on it */
    uint32_t item, turn;
    uint64_t t_send, t_first, t_last, deadline_ns;
    uint32_t chunks;
    int64_t usage_completion, usage_prompt, usage_cached;
    ib_buf_t answer;
    char engine[64];
    char stream_error_code[48]; /* error.code (or type) of an error event in the stream */
    struct conn *next_idle;
    uint32_t target;        /* index into the options' ports */
    uint32_t uses;          /* requests sent on it, this one included */
    const char *io_where;   /* --log-errors: where an io error happened, and errno */
    int io_errno;
    size_t rx_bytes;        /* response bytes read for the request on it */
};

struct run {
    const ib_load_workload_t *w;
    const ib_load_options_t *o;
    ib_load_result_t *r;
    int ep;
    struct sockaddr_in addr[IB_LOAD_MAX_TARGETS];
    ib_json_parser_t *json;
    struct pending *heap;
    size_t heap_len, heap_cap;
    struct user *users;
    struct conn **conns;   /* busy or idle, for timeouts */
    size_t nconns;
    struct conn *idle[IB_LOAD_MAX_TARGETS]; /* per target */
    uint64_t inflight, finished, start_ns;
    uint64_t waiting_for_conn;   /* due but no connection allowed yet */
    ib_buf_t sys, text, tmp;
    FILE *reqlog;                /* --requests-log */
    uint64_t down_until_ns[IB_LOAD_MAX_TARGETS]; /* --failover: a target skipped until then */
    uint32_t next_target;
};

/* ---- pending heap on due_ns ---- */

static int heap_push(struct run *run, struct pending p)
{
    if (run->heap_len == run->heap_cap) {
        size_t cap = run->heap_cap ? run->heap_cap * 2 : 1024;
        struct pending *h = realloc(run->heap, cap * sizeof(*h));
        if (h == NULL)
            return -1;
        run->heap = h;
        run->heap_cap = cap;
    }
    size_t i = run->heap_len++;
    while (i > 0 && run->heap[(i - 1) / 2].due_ns > p.due_ns) {
        run->heap[i] = run->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    run->heap[i] = p;
    return 0;
}

static struct pending heap_pop(struct run *run)
{
    struct pending top = run->heap[0], last = run->heap[--run->heap_len];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l >= run->heap_len)
            break;
        m = l;
        if (l + 1 < run->heap_len && run->heap[l + 1].due_ns < run->heap[l].due_ns)
            m = l + 1;
        if (run->heap[m].due_ns >= last.due_ns)
            break;
        run->heap[i] = run->heap[m];
        i = m;
    }
    if (run->heap_len > 0)
        run->heap[i] = last;
    return top;
}

/* ---- request bodies ---- */

#define LIT(b, s) ib_buf_append((b), (s), sizeof(s) - 1)

static int append_msg(ib_buf_t *b, const char *role, const char *text, size_t n)
{
    if (b->len)
        LIT(b, ",");
    LIT(b, "{\"role\":\"");
    ib_buf_append(b, role, strlen(role));
    LIT(b, "\",\"content\":\"");
    ib_json_escape(b, text, n);
    LIT(b, "\"}");
    return 0;
}

static uint32_t output_tokens(const struct run *run, uint32_t item)
{
    uint32_t n = run->w->items[item].output_tokens;
    if (n == 0)
        n = 1;
    if (run->o->max_output && n > run->o->max_output)
        n = run->o->max_output;
    return n;
}

/* Builds the HTTP request for (item, turn) into <out>. */
static int build_request(struct run *run, uint32_t item, uint32_t turn, uint32_t target, ib_buf_t *out)
{
    const ib_load_workload_t *w = run->w;
    const ib_load_options_t *o = run->o;
    ib_buf_t *msgs = &run->tmp;
    ib_buf_reset(&run->sys);
    ib_buf_reset(&run->text);
    ib_buf_reset(msgs);
    if (w->source == IB_SRC_MULTI_TURN) {
        struct user *u = &run->users[run->w->items[item].group];
        if (turn == 0 && (ib_load_system_prompt(w, 0, &run->sys) || append_msg(&u->messages, "system", run->sys.ptr, run->sys.len)))
            return -1;
        if (ib_load_turn_question(w, w->items[item].group, turn, &run->text) ||
            append_msg(&u->messages, "user", run->text.ptr, run->text.len))
            return -1;
        if (ib_buf_try_append(msgs, u->messages.ptr, u->messages.len))
            return -1;
    } else {
        if (ib_load_item_prompt(w, &w->items[item], &run->sys, &run->text))
            return -1;
        if (run->sys.len && append_msg(msgs, "system", run->sys.ptr, run->sys.len))
            return -1;
        if (append_msg(msgs, "user", run->text.ptr, run->text.len))
            return -1;
    }
    /* The body goes after a header block whose Content-Length we know only at the end:
     * write the body into <out> past a reserved gap, then the header in front. */
    ib_buf_t body = {0};
    int rc = 0;
    LIT(&body, "{\"model\":\"");
    ib_json_escape(&body, o->model, strlen(o->model));
    LIT(&body, "\",");
    if (o->chat) {
        LIT(&body, "\"messages\":[");
        ib_buf_append(&body, msgs->ptr, msgs->len);
        LIT(&body, "]");
    } else {
        /* Completions: the conversation as one prompt string. */
        LIT(&body, "\"prompt\":\"");
        ib_json_escape(&body, run->sys.ptr, run->sys.len);
        ib_json_escape(&body, run->text.ptr, run->text.len);
        LIT(&body, "\"");
    }
    char tail[160];
    snprintf(tail, sizeof(tail), ",\"max_tokens\":%u%s,\"stream\":%s%s}", output_tokens(run, item),
             o->ignore_eos ? ",\"ignore_eos\":true" : "", o->stream ? "true" : "false",
             o->stream ? ",\"stream_options\":{\"include_usage\":true}" : "");
    rc = rc || ib_buf_try_append(&body, tail, strlen(tail));
    char head[512], sess[64] = "";
    if (o->session_header && w->source == IB_SRC_MULTI_TURN)
        snprintf(sess, sizeof(sess), "X-Session-Id: user-%u\r\n", w->items[item].group);
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\nHost: %s:%u\r\nContent-Type: application/json\r\nAccept: %s\r\n%s"
                      "Content-Length: %zu\r\n\r\n",
                      o->chat ? "/v1/chat/completions" : "/v1/completions", o->host, o->ports[target],
                      o->stream ? "text/event-stream" : "application/json", sess, body.len);
    ib_buf_reset(out);
    rc = rc || ib_buf_try_append(out, head, (size_t)hn) || ib_buf_try_append(out, body.ptr, body.len);
    ib_buf_free(&body);
    return rc ? -1 : 0;
}

/* ---- connections ---- */

static void conn_close(struct run *run, struct conn *c)
{
    if (c->fd >= 0) {
        epoll_ctl(run->ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
}

static void conn_reset_response(struct conn *c)
{
    ib_buf_reset(&c->in);
    ib_buf_reset(&c->body);
    ib_buf_reset(&c->answer);
    c->head_done = c->status = c->chunked = c->done_event = c->stream_error = 0;
    c->keepalive = 1;
    c->content_length = SIZE_MAX;
    c->body_total = 0;
    memset(&c->dec, 0, sizeof(c->dec));
    c->dec.consume_trailer = 1;
    c->t_first = c->t_last = 0;
    c->chunks = 0;
    c->usage_completion = c->usage_prompt = c->usage_cached = -1;
    c->engine[0] = '\0';
    c->stream_error_code[0] = '\0';
    c->rx_bytes = 0;
    c->io_where = NULL;
    c->io_errno = 0;
}

static struct conn *conn_new(struct run *run, uint32_t target)
{
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        free(c);
        return NULL;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->target = target;
    if (connect(c->fd, (struct sockaddr *)&run->addr[target], sizeof(run->addr[target])) != 0 && errno != EINPROGRESS) {
        close(c->fd);
        free(c);
        return NULL;
    }
    c->connecting = 1;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(run->ep, EPOLL_CTL_ADD, c->fd, &ev);
    struct conn **cs = realloc(run->conns, (run->nconns + 1) * sizeof(*cs));
    if (cs == NULL) {
        close(c->fd);
        free(c);
        return NULL;
    }
    run->conns = cs;
    run->conns[run->nconns++] = c;
    return c;
}

static void conn_forget(struct run *run, struct conn *c)
{
    conn_close(run, c);
    for (size_t i = 0; i < run->nconns; i++)
        if (run->conns[i] == c) {
            run->conns[i] = run->conns[--run->nconns];
            break;
        }
    ib_buf_free(&c->out);
    ib_buf_free(&c->in);
    ib_buf_free(&c->body);
    ib_buf_free(&c->answer);
    free(c);
}

static void count_engine(ib_load_result_t *r, const char *id)
{
    if (id[0] == '\0')
        return;
    for (uint32_t i = 0; i < r->nengines; i++)
        if (strcmp(r->engines[i].id, id) == 0) {
            r->engines[i].requests++;
            return;
        }
    if (r->nengines < IB_LOAD_MAX_ENGINES) {
        snprintf(r->engines[r->nengines].id, sizeof(r->engines[0].id), "%s", id);
        r->engines[r->nengines++].requests = 1;
    }
}

enum outcome { OK, ERR_STATUS, ERR_IO, ERR_TIMEOUT, ERR_PROTOCOL };

static void count_error(ib_load_result_t *r, int status, const char *kind)
{
    for (uint32_t i = 0; i < r->nerror_kinds; i++)
        if (r->error_kinds[i].status == status && strcmp(r->error_kinds[i].kind, kind) == 0) {
            r->error_kinds[i].count++;
            return;
        }
    if (r->nerror_kinds == IB_LOAD_MAX_ERROR_KINDS) { /* full: the last slot becomes "other" */
        ib_load_error_kind_t *e = &r->error_kinds[IB_LOAD_MAX_ERROR_KINDS - 1];
        e->status = 0;
        snprintf(e->kind, sizeof(e->kind), "other");
        e->count++;
        return;
    }
    ib_load_error_kind_t *e = &r->error_kinds[r->nerror_kinds++];
    e->status = status;
    snprintf(e->kind, sizeof(e->kind), "%s", kind);
    e->count = 1;
}

/* The OpenAI error code of a JSON error body ({"error": {"code": ..., "type": ...}}): the
 * code when it is a string, else the type, else "" (into <out>, <cap> bytes). */
static void error_code(struct run *run, const char *body, size_t len, char *out, size_t cap)
{
    ib_span_t v;
    out[0] = '\0';
    if (len == 0)
        return;
    if (ib_json_pointer_string(run->json, body, len, "/error/code", &v) == 0 && v.len > 0)
        snprintf(out, cap, "%.*s", (int)v.len, v.ptr);
    else if (ib_json_pointer_string(run->json, body, len, "/error/type", &v) == 0 && v.len > 0)
        snprintf(out, cap, "%.*s", (int)v.len, v.ptr);
}

static void schedule_next_turn(struct run *run, struct conn *c, uint64_t now);

/* The request on <c> ended with <how>; record it and put the connection back or drop it. */
static void finish(struct run *run, struct conn *c, enum outcome how)
{
    ib_load_result_t *r = run->r;
    uint64_t now = ib_now_ns();
    /* --failover: the target never had the request (no connection, or the kept-alive one
     * was gone before the request could be written): a client-side balancer sends it to
     * the next target and skips this one for a second. */
    if (run->o->failover && how == ERR_IO && run->o->ntargets > 1 && c->rx_bytes == 0 && c->io_where != NULL &&
        (strcmp(c->io_where, "connect") == 0 || (strcmp(c->io_where, "write") == 0 && c->out_off == 0 && c->uses > 1))) {
        run->down_until_ns[c->target] = now + 1000000000ull;
        run->inflight--;
        r->sent--;
        r->failovers++;
        heap_push(run, (struct pending){now, c->item, c->turn});
        conn_forget(run, c);
        return;
    }
    if (run->reqlog != NULL) {
        static const char *const names[] = {"ok", "status", "io", "timeout", "protocol"};
        fprintf(run->reqlog, "%.3f\t%u\t%s\t%d\t%zu\t%.1f\t%.1f\t%s\t%s\t%s\n", (double)(c->t_send - run->start_ns) / 1e9,
                c->target, names[how], c->status, c->rx_bytes,
                c->t_first ? (double)(c->t_first - c->t_send) / 1e6 : -1.0, (double)(now - c->t_send) / 1e6,
                c->stream_error ? (c->stream_error_code[0] ? c->stream_error_code : "error") : "-",
                how == ERR_IO ? (c->io_where ? c->io_where : "?") : "-", c->engine[0] ? c->engine : "-");
    }
    if (how != OK && run->o->log_errors) {
        static const char *const kinds[] = {"ok", "status", "io", "timeout", "protocol"};
        fprintf(stderr, "ib-load: error at %.3f s: %s", (double)(now - run->start_ns) / 1e9, kinds[how]);
        if (how == ERR_IO)
            fprintf(stderr, " (%s: %s)", c->io_where ? c->io_where : "?", c->io_errno ? strerror(c->io_errno) : "EOF");
        else if (how == ERR_STATUS)
            fprintf(stderr, " (HTTP %d)", c->status);
        fprintf(stderr, ", request %u on its connection, %s, %zu response bytes, %.1f ms after sending\n", c->uses,
                c->head_done ? "head received" : "no head", c->body_total, (double)(now - c->t_send) / 1e6);
    }
    run->inflight--;
    run->finished++;
    switch (how) {
    case OK: {
        r->ok++;
        if (c->t_first == 0)
            c->t_first = now;
        ib_samples_add(&r->ttft_ms, (double)(c->t_first - c->t_send) / 1e6);
        ib_samples_add(&r->e2e_ms, (double)(now - c->t_send) / 1e6);
        r->output_tokens += c->usage_completion >= 0 ? (uint64_t)c->usage_completion : c->chunks;
        if (c->usage_prompt >= 0)
            r->prompt_tokens += (uint64_t)c->usage_prompt;
        if (c->usage_cached >= 0)
            r->cached_tokens += (uint64_t)c->usage_cached;
        count_engine(r, c->engine);
        break;
    }
    case ERR_STATUS: {
        r->err_status++;
        if (c->status >= 400 && c->status < 500)
            r->status_4xx++;
        else
            r->status_5xx++;
        char code[48];
        error_code(run, c->body.ptr, c->body.len, code, sizeof(code));
        count_error(r, c->status, code);
        break;
    }
    case ERR_IO: r->err_io++; count_error(r, 0, "io"); break;
    case ERR_TIMEOUT: r->err_timeout++; count_error(r, 0, "timeout"); break;
    case ERR_PROTOCOL: {
        r->err_protocol++;
        char kind[64];
        if (c->stream_error)
            snprintf(kind, sizeof(kind), "stream %s", c->stream_error_code[0] ? c->stream_error_code : "error");
        count_error(r, 0, c->stream_error ? kind : "protocol");
        break;
    }
    }
    if (run->w->source == IB_SRC_MULTI_TURN && how == OK)
        schedule_next_turn(run, c, now);
    if (how == OK && c->keepalive) {
        conn_reset_response(c);
        c->t_send = 0; /* idle: events on it are the server closing it */
        c->next_idle = run->idle[c->target];
        run->idle[c->target] = c;
        c->deadline_ns = 0;
    } else {
        conn_forget(run, c);
    }
}

static void schedule_next_turn(struct run *run, struct conn *c, uint64_t now)
{
    struct user *u = &run->users[run->w->items[c->item].group];
    if (append_msg(&u->messages, "assistant", c->answer.ptr, c->answer.len) != 0)
        return;
    if (c->turn + 1 < run->w->turns)
        heap_push(run, (struct pending){now + (uint64_t)run->o->think_ms * 1000000ull, c->item, c->turn + 1});
}

/* Parses the response head in c->in. 1 when complete, 0 when more is needed, -1 on error. */
static int parse_head(struct conn *c)
{
    struct phr_header hdrs[64];
    size_t nh = 64;
    int minor, status;
    const char *msg;
    size_t msglen;
    int n;
    for (;;) {
        nh = 64;
        n = phr_parse_response(c->in.ptr, c->in.len, &minor, &status, &msg, &msglen, hdrs, &nh, 0);
        if (n == -2)
            return 0;
        if (n < 0)
            return -1;
        if (status != 100)
            break;
        /* Interim 100 Continue: drop it and parse the next head. */
        memmove(c->in.ptr, c->in.ptr + n, c->in.len - (size_t)n);
        c->in.len -= (size_t)n;
    }
    c->status = status;
    c->keepalive = minor >= 1;
    for (size_t i = 0; i < nh; i++) {
        if (ib_http_name_is(&hdrs[i], "content-length"))
            c->content_length = strtoull(hdrs[i].value, NULL, 10);
        else if (ib_http_name_is(&hdrs[i], "transfer-encoding") && hdrs[i].value_len >= 7 &&
                 strncasecmp(hdrs[i].value + hdrs[i].value_len - 7, "chunked", 7) == 0)
            c->chunked = 1;
        else if (ib_http_name_is(&hdrs[i], "connection"))
            c->keepalive = !(hdrs[i].value_len == 5 && strncasecmp(hdrs[i].value, "close", 5) == 0);
        else if (ib_http_name_is(&hdrs[i], "x-engine-id"))
            snprintf(c->engine, sizeof(c->engine), "%.*s", (int)hdrs[i].value_len, hdrs[i].value);
    }
    memmove(c->in.ptr, c->in.ptr + n, c->in.len - (size_t)n);
    c->in.len -= (size_t)n;
    c->head_done = 1;
    return 1;
}

/* One SSE event's data payload. */
static void on_event(struct run *run, struct conn *c, const char *data, size_t len, uint64_t now)
{
    if (len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        c->done_event = 1;
        return;
    }
    ib_span_t content;
    const char *ptr = run->o->chat ? "/choices/0/delta/content" : "/choices/0/text";
    int rc = ib_json_pointer_string(run->json, data, len, ptr, &content);
    if (rc == 0 && content.len > 0) {
        if (c->t_first == 0)
            c->t_first = now;
        else
            ib_samples_add(&run->r->itl_ms, (double)(now - c->t_last) / 1e6);
        c->t_last = now;
        c->chunks++;
        if (run->w->source == IB_SRC_MULTI_TURN)
            ib_buf_append(&c->answer, content.ptr, content.len);
    }
    if (memmem(data, len, "\"usage\"", 7) != NULL) {
        int64_t v;
        if (ib_json_pointer_int(run->json, data, len, "/usage/completion_tokens", &v) == 0)
            c->usage_completion = v;
        if (ib_json_pointer_int(run->json, data, len, "/usage/prompt_tokens", &v) == 0)
            c->usage_prompt = v;
        if (ib_json_pointer_int(run->json, data, len, "/usage/prompt_tokens_details/cached_tokens", &v) == 0)
            c->usage_cached = v;
    }
    if (memmem(data, len, "\"error\"", 7) != NULL && ib_json_pointer_string(run->json, data, len, "/error/message", &content) == 0) {
        c->stream_error = 1;
        error_code(run, data, len, c->stream_error_code, sizeof(c->stream_error_code));
    }
}

/* Consumes complete SSE events from c->body. */
static void scan_sse(struct run *run, struct conn *c, uint64_t now)
{
    size_t off = 0;
    for (;;) {
        char *end = memmem(c->body.ptr + off, c->body.len - off, "\n\n", 2);
        if (end == NULL)
            break;
        for (char *line = c->body.ptr + off; line < end;) {
            char *nl = memchr(line, '\n', (size_t)(end - line));
            char *le = nl ? nl : end;
            if (le - line >= 5 && memcmp(line, "data:", 5) == 0) {
                char *d = line + 5;
                if (d < le && *d == ' ')
                    d++;
                on_event(run, c, d, (size_t)(le - d), now);
            }
            line = le + 1;
        }
        off = (size_t)(end - c->body.ptr) + 2;
    }
    memmove(c->body.ptr, c->body.ptr + off, c->body.len - off);
    c->body.len -= off;
}

/* Non-streaming: read content and usage from the whole body. */
static void parse_full_body(struct run *run, struct conn *c)
{
    ib_span_t content;
    const char *ptr = run->o->chat ? "/choices/0/message/content" : "/choices/0/text";
    if (ib_json_pointer_string(run->json, c->body.ptr, c->body.len, ptr, &content) == 0 &&
        run->w->source == IB_SRC_MULTI_TURN)
        ib_buf_append(&c->answer, content.ptr, content.len);
    int64_t v;
    if (ib_json_pointer_int(run->json, c->body.ptr, c->body.len, "/usage/completion_tokens", &v) == 0)
        c->usage_completion = v;
    if (ib_json_pointer_int(run->json, c->body.ptr, c->body.len, "/usage/prompt_tokens", &v) == 0)
        c->usage_prompt = v;
    if (ib_json_pointer_int(run->json, c->body.ptr, c->body.len, "/usage/prompt_tokens_details/cached_tokens", &v) == 0)
        c->usage_cached = v;
}

/* Moves newly read bytes through head parsing and body decoding. 1 when the response is
 * complete, 0 when more is needed, -1 on a protocol error. */
static int advance(struct run *run, struct conn *c, uint64_t now)
{
    if (!c->head_done) {
        int rc = parse_head(c);
        if (rc <= 0)
            return rc;
    }
    size_t before = c->body.len;
    int complete = 0;
    if (c->chunked) {
        size_t sz = c->in.len;
        ssize_t rc = phr_decode_chunked(&c->dec, c->in.ptr, &sz);
        if (rc == -1)
            return -1;
        if (ib_buf_try_append(&c->body, c->in.ptr, sz))
            return -1;
        ib_buf_reset(&c->in);
        complete = rc >= 0;
    } else if (c->content_length != SIZE_MAX) {
        size_t want = c->content_length - c->body_total;
        size_t take = c->in.len < want ? c->in.len : want;
        if (ib_buf_try_append(&c->body, c->in.ptr, take))
            return -1;
        c->body_total += take;
        ib_buf_reset(&c->in);
        complete = c->body_total == c->content_length;
    } else {
        /* Read until close. */
        if (ib_buf_try_append(&c->body, c->in.ptr, c->in.len))
            return -1;
        ib_buf_reset(&c->in);
        c->keepalive = 0;
    }
    if (c->status == 200 && run->o->stream && c->body.len > before)
        scan_sse(run, c, now);
    if (complete && c->status == 200 && !run->o->stream)
        parse_full_body(run, c);
    return complete;
}

static void on_readable(struct run *run, struct conn *c)
{
    for (;;) {
        if (ib_buf_try_reserve(&c->in, 65536) != 0) {
            c->io_where = "memory", c->io_errno = ENOMEM;
            finish(run, c, ERR_IO);
            return;
        }
        ssize_t n = read(c->fd, c->in.ptr + c->in.len, c->in.cap - c->in.len);
        if (n > 0) {
            c->in.len += (size_t)n;
            uint64_t now = ib_now_ns();
            if (c->t_send == 0) { /* bytes on an idle connection: the server closed it */
                ib_buf_reset(&c->in);
                continue;
            }
            c->rx_bytes += (size_t)n;
            int rc = advance(run, c, now);
            if (rc < 0) {
                finish(run, c, ERR_PROTOCOL);
                return;
            }
            if (rc > 0) {
                enum outcome how = c->status / 100 != 2 ? ERR_STATUS
                                   : c->stream_error || (run->o->stream && !c->done_event) ? ERR_PROTOCOL
                                                                                          : OK;
                finish(run, c, how);
                return;
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        /* EOF or error */
        if (c->t_send == 0) { /* idle connection closed by the server */
            conn_close(run, c);
            return;
        }
        if (n == 0 && c->head_done && !c->chunked && c->content_length == SIZE_MAX) {
            if (c->status == 200 && !run->o->stream)
                parse_full_body(run, c);
            c->keepalive = 0;
            finish(run, c, c->status / 100 != 2 ? ERR_STATUS : (run->o->stream && !c->done_event) ? ERR_PROTOCOL : OK);
        } else {
            c->io_where = "read", c->io_errno = n < 0 ? errno : 0;
            finish(run, c, ERR_IO);
        }
        return;
    }
}

/* Writes what is pending. Returns 0, or -1 when the request failed (and <c> is gone). */
static int on_writable(struct run *run, struct conn *c)
{
    if (c->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == EINPROGRESS || err == EALREADY)
            return 0;
        if (err != 0) {
            c->io_where = "connect", c->io_errno = err;
            finish(run, c, ERR_IO);
            return -1;
        }
        c->connecting = 0;
    }
    while (c->out_off < c->out.len) {
        ssize_t n = write(c->fd, c->out.ptr + c->out_off, c->out.len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOTCONN))
            return 0;
        c->io_where = "write", c->io_errno = errno;
        finish(run, c, ERR_IO);
        return -1;
    }
    return 0;
}

/* Takes an idle connection to <target> (dropping ones the server closed) or opens one. */
static struct conn *get_conn(struct run *run, uint32_t target)
{
    while (run->idle[target] != NULL) {
        struct conn *c = run->idle[target];
        run->idle[target] = c->next_idle;
        if (c->fd >= 0)
            return c;
        conn_forget(run, c);
    }
    if (run->nconns >= run->o->max_conns)
        return NULL;
    return conn_new(run, target);
}

static int send_one(struct run *run, struct pending p, uint64_t now)
{
    /* Several targets (router replicas behind a client-side balancer): requests take them in
     * turn, skipping those --failover found down in the last second (all down: in turn). */
    uint32_t target = run->next_target++ % run->o->ntargets;
    for (uint32_t k = 0; k < run->o->ntargets && run->down_until_ns[target] > now; k++)
        target = run->next_target++ % run->o->ntargets;
    struct conn *c = get_conn(run, target);
    if (c == NULL)
        return -1;
    conn_reset_response(c);
    c->item = p.item;
    c->turn = p.turn;
    if (build_request(run, p.item, p.turn, c->target, &c->out) != 0) {
        fprintf(stderr, "ib-load: out of memory building a request\n");
        conn_forget(run, c);
        return -1;
    }
    c->out_off = 0;
    c->t_send = now;
    c->uses++;
    c->deadline_ns = now + (uint64_t)(run->o->timeout_s * 1e9);
    run->inflight++;
    run->r->sent++;
    if (!c->connecting)
        (void)on_writable(run, c); /* reused connection: write now (a failure is recorded) */
    return 0;
}

static void check_timeouts(struct run *run, uint64_t now)
{
    for (size_t i = 0; i < run->nconns;) {
        struct conn *c = run->conns[i];
        if (c->deadline_ns != 0 && now > c->deadline_ns) {
            c->deadline_ns = 0;
            finish(run, c, ERR_TIMEOUT); /* may remove conns[i] */
            continue;
        }
        i++;
    }
}

static void progress(struct run *run, uint64_t now, int final)
{
    fprintf(stderr, "\r[%7.1fs] sent %llu  done %llu  ok %llu  errors %llu  in flight %llu   %s",
            (double)(now - run->start_ns) / 1e9, (unsigned long long)run->r->sent, (unsigned long long)run->finished,
            (unsigned long long)run->r->ok, (unsigned long long)(run->finished - run->r->ok),
            (unsigned long long)run->inflight, final ? "\n" : "");
}

int ib_load_run(const ib_load_workload_t *w, const ib_load_options_t *o, ib_load_result_t *r)
{
    memset(r, 0, sizeof(*r));
    struct run run = {.w = w, .o = o, .r = r};
    if (o->ntargets == 0 || o->ntargets > IB_LOAD_MAX_TARGETS) {
        fprintf(stderr, "ib-load: 1 to %d targets\n", IB_LOAD_MAX_TARGETS);
        return -1;
    }
    for (uint32_t t = 0; t < o->ntargets; t++) {
        run.addr[t].sin_family = AF_INET;
        run.addr[t].sin_port = htons(o->ports[t]);
        if (inet_pton(AF_INET, o->host, &run.addr[t].sin_addr) != 1) {
            fprintf(stderr, "ib-load: target host must be an IPv4 address, got '%s'\n", o->host);
            return -1;
        }
    }
    ib_raise_nofile();
    run.ep = epoll_create1(EPOLL_CLOEXEC);
    run.json = ib_json_parser_new(64u << 20);
    if (w->source == IB_SRC_MULTI_TURN)
        run.users = calloc(w->nitems ? w->nitems : 1, sizeof(*run.users));
    if (run.ep < 0 || run.json == NULL || (w->source == IB_SRC_MULTI_TURN && run.users == NULL)) {
        fprintf(stderr, "ib-load: out of resources\n");
        return -1;
    }
    if (o->requests_log != NULL) {
        run.reqlog = fopen(o->requests_log, "w");
        if (run.reqlog == NULL) {
            fprintf(stderr, "ib-load: --requests-log %s: %s\n", o->requests_log, strerror(errno));
            return -1;
        }
        fprintf(run.reqlog, "sent_s\ttarget\toutcome\tstatus\tbytes\tfirst_ms\tend_ms\tstream_error\tio_where\tengine\n");
    }
    run.start_ns = ib_now_ns();
    for (size_t i = 0; i < w->nitems; i++) {
        uint64_t due = o->concurrency ? 0 : run.start_ns + (uint64_t)((double)w->items[i].at_us * 1000.0 / o->speedup);
        heap_push(&run, (struct pending){due, (uint32_t)i, 0});
    }
    uint64_t last_progress = run.start_ns, last_timeout_check = run.start_ns;
    struct epoll_event evs[256];
    for (;;) {
        uint64_t now = ib_now_ns();
        /* Dispatch what is due, within the concurrency and connection limits. */
        while (run.heap_len > 0 && run.heap[0].due_ns <= now && (o->limit == 0 || r->sent < o->limit) &&
               (o->concurrency == 0 || run.inflight < o->concurrency)) {
            struct pending p = heap_pop(&run);
            if (send_one(&run, p, now) != 0) {
                heap_push(&run, p); /* no connection available: try again shortly */
                break;
            }
        }
        int out_of_work = run.heap_len == 0 || (o->limit && r->sent >= o->limit);
        if (out_of_work && run.inflight == 0)
            break;
        int timeout_ms = 100;
        if (run.heap_len > 0 && run.heap[0].due_ns > now) {
            uint64_t d = (run.heap[0].due_ns - now + 999999) / 1000000;
            if (d < (uint64_t)timeout_ms)
                timeout_ms = (int)d;
        }
        int n = epoll_wait(run.ep, evs, 256, timeout_ms);
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            /* A connection finished (and freed) earlier in this batch is not reported again:
             * finish() only frees connections that were removed from epoll first. */
            if ((evs[i].events & (EPOLLOUT | EPOLLERR)) && c->t_send != 0 && c->fd >= 0 &&
                (c->connecting || c->out_off < c->out.len) && on_writable(&run, c) != 0)
                continue; /* the request failed and the connection is gone */
            if (c->fd >= 0 && !c->connecting && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                on_readable(&run, c);
        }
        now = ib_now_ns();
        if (now - last_timeout_check > 200000000ull) {
            check_timeouts(&run, now);
            last_timeout_check = now;
        }
        if (o->progress && now - last_progress >= 1000000000ull) {
            progress(&run, now, 0);
            last_progress = now;
        }
    }
    uint64_t end = ib_now_ns();
    r->duration_s = (double)(end - run.start_ns) / 1e9;
    if (o->progress)
        progress(&run, end, 1);
    while (run.nconns > 0)
        conn_forget(&run, run.conns[0]);
    free(run.conns);
    free(run.heap);
    if (run.users != NULL) {
        for (size_t i = 0; i < w->nitems; i++)
            ib_buf_free(&run.users[i].messages);
        free(run.users);
    }
    ib_buf_free(&run.sys);
    ib_buf_free(&run.text);
    ib_buf_free(&run.tmp);
    ib_json_parser_free(run.json);
    close(run.ep);
    if (run.reqlog != NULL)
        fclose(run.reqlog);
    for (uint32_t i = 1; i < r->nerror_kinds; i++) /* most frequent first */
        for (uint32_t j = i; j > 0 && r->error_kinds[j].count > r->error_kinds[j - 1].count; j--) {
            ib_load_error_kind_t t = r->error_kinds[j];
            r->error_kinds[j] = r->error_kinds[j - 1];
            r->error_kinds[j - 1] = t;
        }
    ib_samples_sort(&r->ttft_ms);
    ib_samples_sort(&r->itl_ms);
    ib_samples_sort(&r->e2e_ms);
    return 0;
}
