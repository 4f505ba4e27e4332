/* HTTP/1.1 request heads with a proxy's framing rules (include/ibrain/http1.h). */
#include "ibrain/http1.h"

#include <string.h>
#include <strings.h>

int ib_http_is_hop_by_hop(const struct phr_header *h)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
                                      "trailer",    "upgrade",    "proxy-authorization", "proxy-authenticate", "expect"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        if (ib_http_name_is(h, hop[i]))
            return 1;
    return 0;
}

int ib_http_value_has_token(const char *v, size_t n, const char *token)
{
    size_t tn = strlen(token);
    size_t i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t start = i;
        while (i < n && v[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v[end - 1] == ' ' || v[end - 1] == '\t'))
            end--;
        if (end - start == tn && strncasecmp(v + start, token, tn) == 0)
            return 1;
    }
    return 0;
}

int ib_http_parse_content_length(const char *v, size_t n, int64_t *out)
{
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t'))
        n--;
    while (n > 0 && (*v == ' ' || *v == '\t'))
        v++, n--;
    if (n == 0 || n > 18)
        return -1;
    int64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        x = x * 10 + (v[i] - '0');
    }
    *out = x;
    return 0;
}

int ib_http_parse_request(const char *buf, size_t len, const ib_http_limits_t *lim, ib_http_req_t *out)
{
    const char *method, *path;
    size_t method_len, path_len;
    out->nheaders = IB_HTTP_MAX_HEADERS;
    int n = phr_parse_request(buf, len, &method, &method_len, &path, &path_len, &out->minor_version, out->headers,
                              &out->nheaders, 0);
    if (n == -2) {
        /* Incomplete: too long already, or too many headers to ever fit? */
        if (len > lim->max_head_bytes)
            return -431;
        return 0;
    }
    if (n < 0) {
        /* picohttpparser also fails when the header array is full: tell that apart. */
        if (out->nheaders == IB_HTTP_MAX_HEADERS || len > lim->max_head_bytes) {
            size_t lines = 0;
            for (size_t i = 0; i < len; i++)
                lines += buf[i] == '\n';
            if (lines > IB_HTTP_MAX_HEADERS || len > lim->max_head_bytes)
                return -431;
        }
        return -400;
    }
    if ((size_t)n > lim->max_head_bytes)
        return -431;
    out->method = (ib_span_t){method, method_len};
    out->path = (ib_span_t){path, path_len};
    out->head_len = (size_t)n;
    out->content_length = -1;
    out->chunked = 0;
    out->expect_continue = 0;
    out->request_id = (ib_span_t){NULL, 0};
    out->session_id = (ib_span_t){NULL, 0};
    if (out->minor_version != 0 && out->minor_version != 1)
        return -505;
    out->keepalive = out->minor_version == 1;
    int have_te = 0;
    for (size_t i = 0; i < out->nheaders; i++) {
        const struct phr_header *h = &out->headers[i];
        if (h->name == NULL) /* a folded continuation line (obsolete): refuse */
            return -400;
        if (ib_http_name_is(h, "content-length")) {
            int64_t cl;
            if (ib_http_parse_content_length(h->value, h->value_len, &cl) != 0)
                return -400;
            if (out->content_length >= 0 && out->content_length != cl)
                return -400;
            out->content_length = cl;
        } else if (ib_http_name_is(h, "transfer-encoding")) {
            /* Only "chunked" alone is supported (RFC 9112 6.1: chunked must be last). */
            if (have_te)
                return -400;
            if (!(h->value_len == 7 && strncasecmp(h->value, "chunked", 7) == 0))
                return -501;
            have_te = 1;
            out->chunked = 1;
        } else if (ib_http_name_is(h, "connection")) {
            if (ib_http_value_has_token(h->value, h->value_len, "close"))
                out->keepalive = 0;
            else if (ib_http_value_has_token(h->value, h->value_len, "keep-alive"))
                out->keepalive = 1;
        } else if (ib_http_name_is(h, "expect")) {
            if (!(h->value_len == 12 && strncasecmp(h->value, "100-continue", 12) == 0))
                return -417;
            out->expect_continue = out->minor_version == 1;
        } else if (ib_http_name_is(h, "x-request-id")) {
            out->request_id = (ib_span_t){h->value, h->value_len};
        } else if (ib_http_name_is(h, "x-session-id")) {
            out->session_id = (ib_span_t){h->value, h->value_len};
        }
    }
    /* RFC 9112 6.3: both framings is a smuggling vector; a proxy must refuse it. */
    if (out->chunked && out->content_length >= 0)
        return -400;
    if (out->chunked && out->minor_version == 0)
        return -400;
    if (out->content_length > (int64_t)lim->max_body_bytes)
        return -413;
    return n;
}

const char *ib_http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status >= 400 && status < 500 ? "Bad Request" : "Internal Server Error";
    }
}
