/* libFuzzer: the request shim on arbitrary bodies, then the chat renderers and the hash
 * chain on whatever parses. Invariants: no crash, no leak, errors carry a 400 and a
 * message, rendered text holds every message's parts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/chat.h"
#include "ibrain/hashchain.h"
#include "ibrain/oai_error.h"
#include "ibrain/ondemand_c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ib_json_parser_t *p;
    if (p == NULL)
        p = ib_json_parser_new(1 << 20);
    if (size == 0)
        return 0;
    /* First byte picks the endpoint; the rest is the body. */
    ib_api_kind_t kind = (data[0] & 1) ? IB_API_COMPLETION : IB_API_CHAT;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    ib_oai_request_t req;
    ib_json_error_t err;
    if (ib_oai_parse(p, kind, body, len, len, &req, &err) != 0) {
        CHECK(err.status == 400 && err.message[0] != '\0');
        ib_buf_t b = {0};
        ib_oai_error_json(&b, err.message, "invalid_request_error", err.param, NULL);
        ib_buf_free(&b);
        return 0;
    }
    CHECK(req.model.len > 0);
    size_t total = 0;
    for (uint32_t i = 0; i < req.nparts; i++)
        total += req.parts[i].len;
    for (int t = IB_TEMPLATE_CHATML; t <= IB_TEMPLATE_PLAIN; t++) {
        ib_buf_t out = {0};
        CHECK(ib_chat_render((ib_chat_template_t)t, &req, &out) == 0);
        if (kind == IB_API_COMPLETION)
            CHECK(out.len == total);
        uint64_t h[64];
        size_t n = ib_hashchain(out.ptr, out.len, 16, h, 64);
        CHECK(n == (out.len / 16 < 64 ? out.len / 16 : 64));
        ib_buf_free(&out);
    }
    return 0;
}
