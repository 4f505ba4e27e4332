/*
 * The blocking HTTP/1.1 client of the tools and the control plane (include/ibrain/http1.h):
 * one request per connection (Connection: close), the response read to the end and its
 * body de-chunked. Not for the data path.
 */
#include "ibrain/http1.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "ibrain/net.h"

#define MAX_RESPONSE_BYTES (64u << 20)

int ib_http_response_parse(char *buf, size_t len, int *status, size_t *body_off, size_t *body_len)
{
    struct phr_header hdrs[IB_HTTP_MAX_HEADERS];
    size_t nh = IB_HTTP_MAX_HEADERS, msglen;
    int minor, code;
    const char *msg;
    int hl = phr_parse_response(buf, len, &minor, &code, &msg, &msglen, hdrs, &nh, 0);
    if (hl <= 0 || code < 100) /* picohttpparser takes any three digits: "020" is no status */
        return -1;
    int chunked = 0;
    long long clen = -1;
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hdrs[i];
        if (ib_http_name_is(h, "transfer-encoding")) {
            chunked = h->value_len >= 7 && strncasecmp(h->value + h->value_len - 7, "chunked", 7) == 0;
        } else if (ib_http_name_is(h, "content-length")) {
            char tmp[24], *end;
            if (h->value_len == 0 || h->value_len >= sizeof(tmp))
                return -1;
            memcpy(tmp, h->value, h->value_len);
            tmp[h->value_len] = '\0';
            clen = strtoll(tmp, &end, 10);
            if (*end != '\0' || clen < 0)
                return -1;
        }
    }
    size_t blen = len - (size_t)hl;
    if (chunked) {
        struct phr_chunked_decoder dec;
        memset(&dec, 0, sizeof(dec));
        dec.consume_trailer = 1;
        if (phr_decode_chunked(&dec, buf + hl, &blen) < 0) /* -1 malformed, -2 cut short */
            return -1;
    } else if (clen >= 0) {
        if ((unsigned long long)clen > blen)
            return -1;
        blen = (size_t)clen;
    }
    *status = code;
    *body_off = (size_t)hl;
    *body_len = blen;
    return 0;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int ib_http_request(const char *hostport, const char *method, const char *path, const char *headers,
                    const char *body, size_t blen, int timeout_ms, ib_buf_t *resp)
{
    struct sockaddr_in sa;
    if (ib_parse_hostport(hostport, &sa) != 0 || sa.sin_port == 0)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    ib_buf_t in = {0};
    int status = -1;
    /* GET and HEAD carry no body and say nothing of one; every other method says its length. */
    int bodyless = blen == 0 && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0);
    if (ib_buf_try_printf(&in, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", method, path, hostport) != 0 ||
        (!bodyless && ib_buf_try_printf(&in, "Content-Length: %zu\r\n", blen) != 0) ||
        (blen > 0 && ib_buf_try_printf(&in, "Content-Type: application/json\r\n") != 0) ||
        ib_buf_try_printf(&in, "%s\r\n", headers ? headers : "") != 0)
        goto out;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || write_all(fd, in.ptr, in.len) != 0 ||
        (blen > 0 && write_all(fd, body, blen) != 0))
        goto out;
    /* Read to the end (the server closes); a timeout ends the read too, and the response
     * then counts only when its framing says it is complete. */
    ib_buf_reset(&in);
    for (;;) {
        if (in.len >= MAX_RESPONSE_BYTES || ib_buf_try_reserve(&in, 65536) != 0)
            goto out;
        ssize_t k = read(fd, in.ptr + in.len, in.cap - in.len - 1);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        in.len += (size_t)k;
    }
    size_t off, len;
    int code;
    if (ib_http_response_parse(in.ptr, in.len, &code, &off, &len) != 0 || ib_buf_try_reserve(resp, len + 1) != 0)
        goto out;
    ib_buf_append(resp, in.ptr + off, len);
    resp->ptr[resp->len] = '\0';
    status = code;
out:
    ib_buf_free(&in);
    close(fd);
    return status;
}

int ib_http_get(const char *hostport, const char *path, int timeout_ms, ib_buf_t *body)
{
    return ib_http_request(hostport, "GET", path, NULL, NULL, 0, timeout_ms, body);
}
