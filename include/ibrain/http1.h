/*
 * HTTP/1.1 for every binary.
 *
 *  - Request heads for ibrain's data plane (http1.c): picohttpparser (from libh2o) does
 *    the parsing; this module applies the limits and the message-framing rules of RFC 9112
 *    that a proxy must enforce (request smuggling: Content-Length with Transfer-Encoding,
 *    repeated or malformed Content-Length, transfer codings other than chunked).
 *  - Response heads from replicas (response.c): interim 1xx dropped, framing, and the body
 *    decoder that tells where a Content-Length or chunked body ends.
 *  - The reason phrases of the statuses the servers answer with.
 *  - A blocking client (client.c) for the tools and the control plane: one request per
 *    connection, chunked responses decoded. Not for the data path.
 */
#ifndef IBRAIN_HTTP1_H
#define IBRAIN_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include "ibrain/buf.h"
#include "ibrain/span.h"
#include "ibrain/picohttp.h"

#ifdef __cplusplus
extern "C" {
#endif

#define IB_HTTP_MAX_HEADERS 64

typedef struct ib_http_limits {
    size_t max_head_bytes;   /* request line + headers; over it -> 431 */
    size_t max_body_bytes;   /* Content-Length over it -> 413 */
} ib_http_limits_t;

typedef struct ib_http_req {
    ib_span_t method;
    ib_span_t path;
    int minor_version;                 /* 0 or 1 */
    struct phr_header headers[IB_HTTP_MAX_HEADERS];
    size_t nheaders;
    size_t head_len;                   /* bytes of the request line and headers */
    int64_t content_length;            /* -1 when absent */
    int chunked;                       /* Transfer-Encoding: chunked */
    int keepalive;                     /* persistent after this request */
    int expect_continue;               /* Expect: 100-continue */
    ib_span_t request_id;              /* X-Request-Id from the client, if any */
    ib_span_t session_id;              /* X-Session-Id, if any */
} ib_http_req_t;

/** How a response body is delimited (RFC 9112 6.3). */
typedef enum ib_http_framing {
    IB_FRAMING_NONE,      /* no body: 204, 304, Content-Length: 0 */
    IB_FRAMING_LENGTH,    /* Content-Length bytes (> 0) */
    IB_FRAMING_CHUNKED,   /* Transfer-Encoding: chunked */
    IB_FRAMING_CLOSE,     /* until the connection closes */
} ib_http_framing_t;

typedef struct ib_http_resp {
    int status;                        /* 200..599 */
    int minor_version;
    ib_span_t reason;
    struct phr_header headers[IB_HTTP_MAX_HEADERS];
    size_t nheaders;
    size_t head_len;                   /* bytes up to the body, interim 1xx heads included */
    ib_http_framing_t framing;
    int64_t content_length;            /* -1 when absent */
    int keepalive;                     /* HTTP/1.1 without Connection: close */
    int sse;                           /* Content-Type: text/event-stream */
} ib_http_resp_t;

/** Where a response body ends, fed the bytes as they arrive. */
typedef struct ib_http_body {
    ib_http_framing_t framing;
    int64_t remaining;                 /* LENGTH: bytes still to come */
    int done;
    int trailing;                      /* bytes came after the body's end (dropped) */
    struct phr_chunked_decoder dec;    /* CHUNKED */
} ib_http_body_t;

/**
 * Parses the request head at the start of <buf>. Returns the head length (> 0) when
 * complete, 0 when more bytes are needed, or -STATUS for a request that must be refused:
 * -400 malformed or ambiguous framing, -413 body over the limit, -417 an Expect other
 * than 100-continue, -431 head over the limit or too many headers, -501 unsupported
 * transfer coding, -505 HTTP version.
 */
int ib_http_parse_request(const char *buf, size_t len, const ib_http_limits_t *lim, ib_http_req_t *out);

/**
 * Parses a replica's response head at the start of <buf>, dropping interim (1xx)
 * responses before it. Returns the bytes up to the body (> 0), 0 when more are needed, or
 * -1 for a response that cannot be relayed: malformed, a head over <max_head> bytes,
 * 101, a bad or conflicting Content-Length, a transfer coding other than chunked alone.
 * Header pointers point into <buf>.
 */
int ib_http_parse_response(const char *buf, size_t len, size_t max_head, ib_http_resp_t *out);

/** Starts decoding the body of <r>. */
void ib_http_body_init(ib_http_body_t *b, const ib_http_resp_t *r);

/**
 * Feeds the next <*n> body bytes at <p>, decoded in place: on return p[0..*n) is body
 * data to relay (bytes after the body's end are dropped). Returns 1 when the body is
 * complete, 0 when more is expected, -1 on broken chunked framing.
 */
int ib_http_body_feed(ib_http_body_t *b, char *p, size_t *n);

/** The connection closed: 1 when that ends the body well (close-delimited, or already
 * complete), -1 when the body was cut short. */
int ib_http_body_eof(ib_http_body_t *b);

/** Parses a Content-Length value (digits, optional surrounding blanks, at most 18
 * digits). 0, or -1 when malformed. */
int ib_http_parse_content_length(const char *v, size_t n, int64_t *out);

/** Does the comma-separated header value contain <token> (case-insensitive)? */
int ib_http_value_has_token(const char *v, size_t n, const char *token);


/** 1 for hop-by-hop headers a proxy must not forward (RFC 9110 7.6.1), else 0. */
int ib_http_is_hop_by_hop(const struct phr_header *h);

/** The reason phrase of <status> (RFC 9110): "Not Found" for 404. An unknown 4xx reads
 * "Bad Request", any other unknown status "Internal Server Error". Never NULL. */
const char *ib_http_reason(int status);

/* ---- blocking client ---- */

/**
 * One HTTP/1.1 request (Connection: close) to <hostport> (IPV4:PORT), waiting at most
 * <timeout_ms> for the connect and for each read or write. <headers> (may be NULL) are
 * extra "Name: value\r\n" lines; <body> is sent as JSON when <blen> > 0. Appends the
 * response body, de-chunked, to <resp> and NUL-terminates it (the NUL not counted in
 * resp->len). Returns the response's status, or -1 when the server cannot be reached or
 * answers no complete HTTP response.
 */
int ib_http_request(const char *hostport, const char *method, const char *path, const char *headers,
                    const char *body, size_t blen, int timeout_ms, ib_buf_t *resp);

/** GET <path>: ib_http_request() without headers or body. The status, or -1. */
int ib_http_get(const char *hostport, const char *path, int timeout_ms, ib_buf_t *body);

/**
 * Parses the complete response in <buf>[0..len) (read until the server closed): its body
 * is <buf>[*body_off .. *body_off + *body_len), decoded in place when chunked, cut at
 * Content-Length when there is one. Returns 0, or -1 when the head is malformed or the
 * body is shorter than its framing says.
 */
int ib_http_response_parse(char *buf, size_t len, int *status, size_t *body_off, size_t *body_len);

/* inline defs */

/** Case-insensitive comparison of a header name with a lower-case literal (inline, so
 * that the literal's length is a constant: the request path compares every header). */
static inline int ib_http_name_is(const struct phr_header *h, const char *lower)
{
    size_t n = strlen(lower);
    return h->name_len == n && strncasecmp(h->name, lower, n) == 0;
}

#ifdef __cplusplus
}
#endif
#endif
