/*
 * What a worker writes to its clients: the double output buffer and its sends, chunk
 * framing of relayed bodies, and ibrain's own responses (local answers and OpenAI-style
 * errors), with their request accounting.
 */
#include "internal.h"

#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "ibrain/oai_error.h"

void ib_count_request(ib_worker_t *w, ib_client_t *c, int status)
{
    c->answered++;
    ib_counter_add(&w->m.requests[c->route][ib_metrics_status_index(status)], 1);
    ib_metrics_observe(w->m.duration_bucket, &w->m.duration_sum_us, &w->m.duration_count, ib_now_ns() - c->t_start);
}

void ib_out_append(ib_client_t *c, const void *p, size_t n) { ib_buf_append(&c->out[c->out_cur], p, n); }

void ib_out_chunk(ib_client_t *c, const char *p, size_t n)
{
    if (n == 0)
        return; /* an empty chunk would end the body */
    if (c->client_chunked) {
        ib_append_uint(&c->out[c->out_cur], n, 16);
        ib_out_append(c, "\r\n", 2);
        ib_out_append(c, p, n);
        ib_out_append(c, "\r\n", 2);
    } else {
        ib_out_append(c, p, n);
    }
}

size_t ib_out_pending(const ib_client_t *c)
{
    assert(!c->sending || c->send_off <= c->out[!c->out_cur].len);
    return c->out[c->out_cur].len + (c->sending ? c->out[!c->out_cur].len - c->send_off : 0);
}

void ib_client_flush(ib_worker_t *w, ib_client_t *c)
{
    if (c->sending || c->closing)
        return;
    if (c->out[c->out_cur].len == 0) {
        /* Closed once its answer is all out: not while a replica still streams it (a
         * half-closed client's stream was cut after its first chunk). */
        if (c->close_after_send && c->state != IB_C_UPSTREAM)
            ib_client_close(w, c);
        return;
    }
    c->out_cur ^= 1;
    assert(c->out[c->out_cur].len == 0); /* the buffer sent last was emptied when its send ended */
    ib_buf_reset(&c->out[c->out_cur]);
    c->sending = 1;
    c->send_off = 0;
    c->send_progress++;
    ib_buf_t *b = &c->out[!c->out_cur];
    struct io_uring_sqe *sqe = ib_get_sqe(w);
    io_uring_prep_send(sqe, c->fd, b->ptr, b->len, MSG_NOSIGNAL);
    ib_set_data(sqe, c, IB_OP_CSEND);
    c->ops++;
}

void ib_respond(ib_worker_t *w, ib_client_t *c, int status, const char *ctype, const char *body, size_t len,
                const char *extra_headers)
{
    assert(status >= 200 && status <= 599);
    assert(!c->head_sent); /* nothing of a relayed response went out before */
    char head[512];
    int close = !c->keepalive || w->draining || status == 400 || status == 408 || status == 413 || status == 431 ||
                status == 501 || status == 505;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nServer: ibrain\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s%s%s%s\r\n",
                     status, ib_http_reason(status), ctype, len, c->request_id[0] ? "X-Request-Id: " : "", c->request_id,
                     c->request_id[0] ? "\r\n" : "", close ? "Connection: close\r\n" : "");
    assert(n > 0 && (size_t)n < sizeof(head));
    if (extra_headers != NULL && (size_t)n + strlen(extra_headers) + 4 < sizeof(head)) {
        n -= 2; /* insert before the blank line, then end the head again */
        n += snprintf(head + n, sizeof(head) - (size_t)n, "%s\r\n\r\n", extra_headers);
    }
    ib_out_append(c, head, (size_t)n);
    ib_out_append(c, body, len);
    c->status = status;
    ib_count_request(w, c, status);
    if (close) {
        c->keepalive = 0;
        c->close_after_send = 1;
    }
    c->state = IB_C_HEAD;
    c->deadline_ns = ib_deadline(w->px->cfg.idle_timeout_ms);
    if (c->up == NULL)
        ib_exchange_trim(c);
    ib_client_flush(w, c);
}

void ib_respond_error(ib_worker_t *w, ib_client_t *c, int status, const char *msg, const char *type,
                      const char *param, const char *code, const char *extra_headers)
{
    ib_buf_reset(&w->scratch);
    ib_oai_error_json(&w->scratch, msg, type, param, code);
    ib_respond(w, c, status, "application/json", w->scratch.ptr, w->scratch.len, extra_headers);
}
