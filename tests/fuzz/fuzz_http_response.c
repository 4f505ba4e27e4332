/* libFuzzer: the parser of replicas' response heads and its body decoder
 * (dataplane/http/response.c), on arbitrary bytes. Invariants: no crash; a parsed head
 * lies within the input, its status is final (200..599), its framing agrees with its
 * headers; the body decoder never yields more bytes than it was fed, and a Content-Length
 * body yields exactly its length. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/http1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ib_http_resp_t r;
    int n = ib_http_parse_response((const char *)data, size, 4096, &r);
    if (n <= 0) {
        CHECK(n == 0 || n == -1);
        return 0;
    }
    CHECK((size_t)n <= size && (size_t)n == r.head_len && n <= 4096);
    CHECK(r.status >= 200 && r.status <= 999);
    CHECK(r.nheaders <= IB_HTTP_MAX_HEADERS);
    for (size_t i = 0; i < r.nheaders; i++) {
        const struct phr_header *h = &r.headers[i];
        CHECK(h->name >= (const char *)data && h->name + h->name_len <= (const char *)data + n);
    }
    CHECK(r.framing != IB_FRAMING_LENGTH || r.content_length > 0);
    CHECK(!(r.status == 204 || r.status == 304) || r.framing == IB_FRAMING_NONE);
    /* The rest of the input is the body, fed in pieces whose sizes come from the input. */
    size_t len = size - (size_t)n;
    char *body = malloc(len ? len : 1);
    memcpy(body, data + n, len);
    ib_http_body_t b;
    ib_http_body_init(&b, &r);
    size_t off = 0, out = 0;
    int rc = 0;
    while (off < len && rc == 0) {
        size_t piece = 1 + (size_t)(unsigned char)body[off] % 64;
        if (piece > len - off)
            piece = len - off;
        size_t k = piece;
        rc = ib_http_body_feed(&b, body + off, &k);
        CHECK(rc >= -1 && rc <= 1);
        CHECK(k <= piece);
        out += k;
        off += piece;
    }
    if (r.framing == IB_FRAMING_LENGTH) {
        CHECK(out <= (uint64_t)r.content_length);
        CHECK(rc == 1 ? out == (uint64_t)r.content_length : out < (uint64_t)r.content_length);
    }
    if (rc == 0)
        CHECK(ib_http_body_eof(&b) == (r.framing == IB_FRAMING_CLOSE ? 1 : -1));
    free(body);
    return 0;
}
