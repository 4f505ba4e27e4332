/*
 * HTTP/1.1 request heads for ibrain's data plane: picohttpparser (from libh2o) does the
 * parsing; this module applies the limits and the message-framing rules of RFC 9112 that
 * a proxy must enforce (request smuggling: Content-Length with Transfer-Encoding, repeated
 * or malformed Content-Length, transfer codings other than chunked).
 */
#ifndef IBRAIN_HTTP1_H
#define IBRAIN_HTTP1_H

#include <stddef.h>
#include <stdint.h>
#include "ibrain/ondemand_c.h"
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

/**
 * Parses the request head at the start of <buf>. Returns the head length (> 0) when
 * complete, 0 when more bytes are needed, or -STATUS for a request that must be refused:
 * -400 malformed or ambiguous framing, -413 body over the limit, -417 an Expect other
 * than 100-continue, -431 head over the limit or too many headers, -501 unsupported
 * transfer coding, -505 HTTP version.
 */
int ib_http_parse_request(const char *buf, size_t len, const ib_http_limits_t *lim, ib_http_req_t *out);

/** Case-insensitive comparison of a header name with a lower-case literal. */
int ib_http_name_is(const struct phr_header *h, const char *lower);

/** 1 for hop-by-hop headers a proxy must not forward (RFC 9110 7.6.1), else 0. */
int ib_http_is_hop_by_hop(const struct phr_header *h);

#ifdef __cplusplus
}
#endif
#endif
