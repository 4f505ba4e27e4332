/*
 * Built-in chat templates (see include/ibrain/chat.h). Each renderer follows the Jinja
 * template of the model family line by line; the comments quote the template's rule.
 * A message whose content is an array of text parts is joined with "\n", as vLLM does
 * before it applies a string-content template.
 */
#include "ibrain/chat.h"

#include <assert.h>
#include <stdint.h>

#include <stdlib.h>
#include <stdio.h>
#include <string.h>

int ib_chat_template_parse(const char *name, ib_chat_template_t *out)
{
    if (strcmp(name, "chatml") == 0 || strcmp(name, "qwen3") == 0 || strcmp(name, "qwen") == 0)
        *out = IB_TEMPLATE_CHATML;
    else if (strcmp(name, "llama3") == 0)
        *out = IB_TEMPLATE_LLAMA3;
    else if (strcmp(name, "plain") == 0)
        *out = IB_TEMPLATE_PLAIN;
    else
        return -1;
    return 0;
}

const char *ib_chat_template_name(ib_chat_template_t t)
{
    switch (t) {
    case IB_TEMPLATE_CHATML: return "chatml";
    case IB_TEMPLATE_LLAMA3: return "llama3";
    case IB_TEMPLATE_PLAIN: return "plain";
    }
    return "unknown";
}

/* ---- small string helpers over ib_span_t ---- */

static int span_eq(ib_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len == n && memcmp(s.ptr, lit, n) == 0;
}

static int span_starts(ib_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len >= n && memcmp(s.ptr, lit, n) == 0;
}

static int span_ends(ib_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    return s.len >= n && memcmp(s.ptr + s.len - n, lit, n) == 0;
}

/* Last occurrence of <lit> in <s>, or NULL. */
static const char *span_rfind(ib_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    assert(n > 0);
    if (s.len < n)
        return NULL;
    /* candidates by their first byte, from the end (memrchr is vectorized: a message's
     * text is scanned at memory speed, not a memcmp per byte) */
    for (size_t end = s.len - n + 1; end > 0;) {
        const char *c = memrchr(s.ptr, lit[0], end);
        if (c == NULL)
            return NULL;
        if (memcmp(c, lit, n) == 0)
            return c;
        end = (size_t)(c - s.ptr);
    }
    return NULL;
}

static const char *span_find(ib_span_t s, const char *lit)
{
    size_t n = strlen(lit);
    assert(n > 0);
    for (const char *p = s.ptr, *end = s.ptr + s.len; (size_t)(end - p) >= n; p++) {
        p = memchr(p, lit[0], (size_t)(end - p) - n + 1); /* candidates by their first byte, as span_rfind */
        if (p == NULL)
            return NULL;
        if (memcmp(p, lit, n) == 0)
            return p;
    }
    return NULL;
}

/* Python's str.isspace(), which Jinja's trim filter (str.strip) uses in the engines. */
static int is_py_space(uint32_t cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* Length of the UTF-8 sequence for a white-space code point at the start of <s>, or 0. */
static size_t space_at(const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    if (n >= 1 && u[0] < 0x80)
        return is_py_space(u[0]) ? 1 : 0;
    if (n >= 2 && (u[0] & 0xE0) == 0xC0 && (u[1] & 0xC0) == 0x80)
        return is_py_space((uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F)) ? 2 : 0;
    if (n >= 3 && (u[0] & 0xF0) == 0xE0 && (u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80)
        return is_py_space((uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F)) ? 3 : 0;
    return 0;
}

static ib_span_t lstrip_nl(ib_span_t s)
{
    while (s.len && s.ptr[0] == '\n')
        s.ptr++, s.len--;
    return s;
}

static ib_span_t rstrip_nl(ib_span_t s)
{
    while (s.len && s.ptr[s.len - 1] == '\n')
        s.len--;
    return s;
}

static ib_span_t trim_ws(ib_span_t s)
{
    for (size_t k; s.len && (k = space_at(s.ptr, s.len)) != 0;)
        s.ptr += k, s.len -= k;
    for (;;) { /* white space at the end is 1 to 3 bytes long */
        size_t k = 0;
        for (size_t w = 1; w <= 3 && w <= s.len && k == 0; w++)
            if (space_at(s.ptr + s.len - w, w) == w)
                k = w;
        if (k == 0)
            return s;
        s.len -= k;
    }
}

#define APPEND_LIT(b, lit) ib_buf_try_append((b), (lit), sizeof(lit) - 1)

/*
 * Content of message <i> as one span. A single part is returned as it lies; several parts
 * are joined with "\n" into <tmp> (reset first), which the span then points into.
 */
static int message_content(const ib_oai_request_t *req, uint32_t i, ib_buf_t *tmp, ib_span_t *out)
{
    const ib_chat_message_t *m = &req->messages[i];
    if (m->nparts == 0) {
        *out = (ib_span_t){"", 0};
        return 0;
    }
    if (m->nparts == 1) {
        *out = req->parts[m->first_part];
        return 0;
    }
    ib_buf_reset(tmp);
    for (uint32_t k = 0; k < m->nparts; k++) {
        ib_span_t p = req->parts[m->first_part + k];
        if ((k && APPEND_LIT(tmp, "\n") != 0) || ib_buf_try_append(tmp, p.ptr, p.len) != 0)
            return -1;
    }
    *out = (ib_span_t){tmp->ptr, tmp->len};
    return 0;
}

/*
 * Llama 3:
 *   {% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'
 *      + message['content'] | trim + '<|eot_id|>' %}
 *   {% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}
 *   ... then '<|start_header_id|>assistant<|end_header_id|>\n\n'
 */
static int render_llama3(const ib_oai_request_t *req, ib_buf_t *out, ib_buf_t *tmp)
{
    if (APPEND_LIT(out, "<|begin_of_text|>") != 0)
        return -1;
    for (uint32_t i = 0; i < req->nmessages; i++) {
        ib_span_t c;
        ib_span_t role = req->messages[i].role;
        if (message_content(req, i, tmp, &c) != 0)
            return -1;
        c = trim_ws(c);
        if (APPEND_LIT(out, "<|start_header_id|>") || ib_buf_try_append(out, role.ptr, role.len) ||
            APPEND_LIT(out, "<|end_header_id|>\n\n") || ib_buf_try_append(out, c.ptr, c.len) || APPEND_LIT(out, "<|eot_id|>"))
            return -1;
    }
    return APPEND_LIT(out, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* The index the Qwen3 template calls ns.last_query_index: the last user message that is
 * not a wrapped tool response. */
static int64_t qwen3_last_query(const ib_oai_request_t *req, ib_buf_t *tmp)
{
    for (uint32_t k = req->nmessages; k-- > 0;) {
        if (!span_eq(req->messages[k].role, "user"))
            continue;
        ib_span_t c;
        if (message_content(req, k, tmp, &c) != 0)
            return -1;
        if (!(span_starts(c, "<tool_response>") && span_ends(c, "</tool_response>")))
            return k;
    }
    return (int64_t)req->nmessages - 1;
}

static int render_chatml(const ib_oai_request_t *req, ib_buf_t *out, ib_buf_t *tmp)
{
    uint32_t n = req->nmessages;
    int64_t last_query = qwen3_last_query(req, tmp);
    for (uint32_t i = 0; i < n; i++) {
        ib_span_t role = req->messages[i].role, c;
        if (message_content(req, i, tmp, &c) != 0)
            return -1;
        int rc = 0;
        if (span_eq(role, "user") || span_eq(role, "system")) {
            /* messages[0] system is emitted first by the template; the loop emits user and
             * later system messages; the output is the same block either way. */
            rc = APPEND_LIT(out, "<|im_start|>") || ib_buf_try_append(out, role.ptr, role.len) || APPEND_LIT(out, "\n") ||
                 ib_buf_try_append(out, c.ptr, c.len) || APPEND_LIT(out, "<|im_end|>\n");
        } else if (span_eq(role, "assistant")) {
            /* {%- if '</think>' in message.content %} content = split('</think>')[-1].lstrip('\n');
             *    reasoning = split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
            ib_span_t content = c, reasoning = {"", 0};
            const char *end_think = span_find(c, "</think>");
            if (end_think != NULL) {
                const char *last = span_rfind(c, "</think>");
                content = lstrip_nl((ib_span_t){last + 8, (size_t)(c.ptr + c.len - (last + 8))});
                ib_span_t head = rstrip_nl((ib_span_t){c.ptr, (size_t)(end_think - c.ptr)});
                const char *open = span_rfind(head, "<think>");
                if (open != NULL)
                    head = (ib_span_t){open + 7, (size_t)(head.ptr + head.len - (open + 7))};
                reasoning = lstrip_nl(head);
            }
            rc = APPEND_LIT(out, "<|im_start|>assistant\n");
            if (!rc && (int64_t)i > last_query && (i == n - 1 || reasoning.len)) {
                ib_span_t r = rstrip_nl(lstrip_nl(reasoning));
                rc = APPEND_LIT(out, "<think>\n") || ib_buf_try_append(out, r.ptr, r.len) || APPEND_LIT(out, "\n</think>\n\n");
                content = lstrip_nl(content);
            }
            rc = rc || ib_buf_try_append(out, content.ptr, content.len) || APPEND_LIT(out, "<|im_end|>\n");
        } else if (span_eq(role, "tool")) {
            if (i == 0 || !span_eq(req->messages[i - 1].role, "tool"))
                rc = APPEND_LIT(out, "<|im_start|>user");
            rc = rc || APPEND_LIT(out, "\n<tool_response>\n") || ib_buf_try_append(out, c.ptr, c.len) ||
                 APPEND_LIT(out, "\n</tool_response>");
            if (!rc && (i == n - 1 || !span_eq(req->messages[i + 1].role, "tool")))
                rc = APPEND_LIT(out, "<|im_end|>\n");
        }
        /* Other roles are not rendered by the Qwen3 template. */
        if (rc)
            return -1;
    }
    return APPEND_LIT(out, "<|im_start|>assistant\n");
}

static int render_plain(const ib_oai_request_t *req, ib_buf_t *out, ib_buf_t *tmp)
{
    for (uint32_t i = 0; i < req->nmessages; i++) {
        ib_span_t c, role = req->messages[i].role;
        if (message_content(req, i, tmp, &c) || ib_buf_try_append(out, role.ptr, role.len) || APPEND_LIT(out, ": ") ||
            ib_buf_try_append(out, c.ptr, c.len) || APPEND_LIT(out, "\n"))
            return -1;
    }
    return APPEND_LIT(out, "assistant: ");
}

int ib_chat_render(ib_chat_template_t t, const ib_oai_request_t *req, ib_buf_t *out)
{
    if (req->kind == IB_API_COMPLETION) {
        for (uint32_t k = 0; k < req->nparts; k++)
            if (ib_buf_try_append(out, req->parts[k].ptr, req->parts[k].len) != 0)
                return -1;
        return 0;
    }
    ib_buf_t tmp = {0};
    int rc;
    switch (t) {
    case IB_TEMPLATE_LLAMA3: rc = render_llama3(req, out, &tmp); break;
    case IB_TEMPLATE_PLAIN: rc = render_plain(req, out, &tmp); break;
    default: rc = render_chatml(req, out, &tmp); break;
    }
    ib_buf_free(&tmp);
    return rc ? -1 : 0;
}
