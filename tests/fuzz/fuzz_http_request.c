/* libFuzzer: ibrain's HTTP/1.1 request-head parser and chunked body decoding, on
 * arbitrary bytes. Invariants: no crash; a parsed head lies within the input and its
 * framing is unambiguous (never both Content-Length and chunked). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/http1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const ib_http_limits_t lim = {.max_head_bytes = 4096, .max_body_bytes = 1 << 20};
    ib_http_req_t r;
    int n = ib_http_parse_request((const char *)data, size, &lim, &r);
    if (n <= 0) {
        CHECK(n == 0 || n == -400 || n == -413 || n == -417 || n == -431 || n == -501 || n == -505);
        return 0;
    }
    CHECK((size_t)n <= size && (size_t)n == r.head_len);
    CHECK(!(r.chunked && r.content_length >= 0));
    CHECK(r.content_length <= (int64_t)lim.max_body_bytes);
    CHECK(r.method.ptr >= (const char *)data && r.method.ptr + r.method.len <= (const char *)data + size);
    for (size_t i = 0; i < r.nheaders; i++)
        (void)ib_http_is_hop_by_hop(&r.headers[i]);
    if (r.chunked) {
        /* Decode the rest as a chunked body, in place on a copy. */
        size_t len = size - (size_t)n;
        char *body = malloc(len ? len : 1);
        memcpy(body, data + n, len);
        struct phr_chunked_decoder dec = {0};
        dec.consume_trailer = 1;
        size_t sz = len;
        ssize_t rc = phr_decode_chunked(&dec, body, &sz);
        CHECK(rc == -1 || rc == -2 || (size_t)rc + sz <= len);
        CHECK(sz <= len);
        free(body);
    }
    return 0;
}
