/* HTTP/1.1 response heads and body framing from a replica (include/ibrain/http1.h). */
#include "ibrain/http1.h"

#include <assert.h>
#include <string.h>
#include <strings.h>

/* The last comma-separated coding of a Transfer-Encoding value, and whether any other
 * coding comes before it. */
static ib_span_t last_coding(const char *v, size_t n, int *others)
{
    size_t end = n;
    while (end > 0 && (v[end - 1] == ' ' || v[end - 1] == '\t'))
        end--;
    size_t start = end;
    while (start > 0 && v[start - 1] != ',')
        start--;
    *others = 0;
    for (size_t i = 0; i < start; i++)
        if (v[i] != ' ' && v[i] != '\t' && v[i] != ',')
            *others = 1;
    while (start < end && (v[start] == ' ' || v[start] == '\t'))
        start++;
    return (ib_span_t){v + start, end - start};
}

/* Reads the framing headers of <out>'s head. 0, or -1 when they cannot be relayed. */
static int read_framing(ib_http_resp_t *out)
{
    int chunked = 0;
    for (size_t i = 0; i < out->nheaders; i++) {
        const struct phr_header *h = &out->headers[i];
        if (h->name == NULL) /* a folded continuation line (obsolete) */
            return -1;
        if (ib_http_name_is(h, "transfer-encoding")) {
            int others;
            ib_span_t last = last_coding(h->value, h->value_len, &others);
            /* Only chunked alone: another coding would reach the client undecoded. */
            if (chunked || others || !(last.len == 7 && strncasecmp(last.ptr, "chunked", 7) == 0))
                return -1;
            chunked = 1;
        } else if (ib_http_name_is(h, "content-length")) {
            int64_t cl;
            if (ib_http_parse_content_length(h->value, h->value_len, &cl) != 0)
                return -1;
            if (out->content_length >= 0 && out->content_length != cl)
                return -1;
            out->content_length = cl;
        } else if (ib_http_name_is(h, "connection")) {
            if (ib_http_value_has_token(h->value, h->value_len, "close"))
                out->keepalive = 0;
        } else if (ib_http_name_is(h, "content-type")) {
            out->sse = h->value_len >= 17 && strncasecmp(h->value, "text/event-stream", 17) == 0;
        }
    }
    /* RFC 9112 6.3: no body for 204 and 304; chunked overrides a Content-Length. */
    if (out->status == 204 || out->status == 304)
        out->framing = IB_FRAMING_NONE;
    else if (chunked)
        out->framing = IB_FRAMING_CHUNKED;
    else if (out->content_length >= 0)
        out->framing = out->content_length == 0 ? IB_FRAMING_NONE : IB_FRAMING_LENGTH;
    else
        out->framing = IB_FRAMING_CLOSE;
    return 0;
}

int ib_http_parse_response(const char *buf, size_t len, size_t max_head, ib_http_resp_t *out)
{
    size_t off = 0;
    for (;;) {
        const char *msg;
        size_t msglen;
        out->nheaders = IB_HTTP_MAX_HEADERS;
        int n = phr_parse_response(buf + off, len - off, &out->minor_version, &out->status, &msg, &msglen,
                                   out->headers, &out->nheaders, 0);
        if (n == -2)
            return len > max_head ? -1 : 0;
        if (n < 0 || off + (size_t)n > max_head)
            return -1;
        assert(n > 0 && off + (size_t)n <= len);
        off += (size_t)n;
        if (out->status == 101 || out->status < 100)
            return -1; /* a protocol switch ibrain never asked for; no status ("020") */
        if (out->status < 200)
            continue; /* interim (100 Continue, 103 Early Hints): dropped */
        out->reason = (ib_span_t){msg, msglen};
        break;
    }
    out->head_len = off;
    out->content_length = -1;
    out->keepalive = out->minor_version >= 1;
    out->sse = 0;
    if (read_framing(out) != 0)
        return -1;
    assert(out->framing != IB_FRAMING_LENGTH || out->content_length > 0);
    return (int)off;
}

void ib_http_body_init(ib_http_body_t *b, const ib_http_resp_t *r)
{
    memset(b, 0, sizeof(*b));
    b->framing = r->framing;
    b->remaining = r->framing == IB_FRAMING_LENGTH ? r->content_length : 0;
    b->dec.consume_trailer = 1;
}

int ib_http_body_feed(ib_http_body_t *b, char *p, size_t *n)
{
    switch (b->framing) {
    case IB_FRAMING_NONE:
        b->trailing |= *n > 0;
        *n = 0;
        return 1;
    case IB_FRAMING_CLOSE:
        return b->done ? 1 : 0;
    case IB_FRAMING_LENGTH: {
        assert(b->remaining > 0 || b->done);
        size_t take = (int64_t)*n < b->remaining ? *n : (size_t)b->remaining;
        b->trailing |= take < *n;
        b->remaining -= (int64_t)take;
        *n = take; /* bytes past the body are not ours to relay */
        b->done = b->remaining == 0;
        return b->done;
    }
    case IB_FRAMING_CHUNKED: {
        if (b->done) {
            b->trailing |= *n > 0;
            *n = 0;
            return 1;
        }
        ssize_t rc = phr_decode_chunked(&b->dec, p, n);
        if (rc == -1)
            return -1;
        b->done = rc >= 0;
        b->trailing |= rc > 0;
        return b->done;
    }
    }
    return -1;
}

int ib_http_body_eof(ib_http_body_t *b)
{
    if (b->framing == IB_FRAMING_CLOSE) {
        b->done = 1;
        return 1;
    }
    return b->done ? 1 : -1;
}
