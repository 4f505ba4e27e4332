/* libFuzzer: the chat template renderers on requests built straight from the input (not
 * through JSON), so that they see shapes the parser would never hand them: any bytes in
 * roles and contents, empty and repeated roles, <think> markers, long histories.
 * Input: messages separated by 0x00, role and content by 0x01, content parts by 0x02.
 * Invariants: no crash or leak; every template renders; a user message's content appears
 * verbatim in the ChatML rendering; completions render to the concatenated prompts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/chat.h"

#define MAX_MSGS 64
#define MAX_PARTS 256

static int contains(const ib_buf_t *b, const char *p, size_t n)
{
    if (n == 0)
        return 1;
    return memmem(b->ptr, b->len, p, n) != NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ib_chat_message_t msgs[MAX_MSGS];
    ib_span_t parts[MAX_PARTS];
    uint32_t nm = 0, np = 0;
    const char *p = (const char *)data, *end = p + size;
    while (p < end && nm < MAX_MSGS && np < MAX_PARTS) {
        const char *stop = memchr(p, 0, (size_t)(end - p));
        if (stop == NULL)
            stop = end;
        const char *sep = memchr(p, 1, (size_t)(stop - p));
        ib_chat_message_t *m = &msgs[nm++];
        m->role = (ib_span_t){p, sep ? (size_t)(sep - p) : (size_t)(stop - p)};
        m->first_part = np;
        m->nparts = 0;
        for (const char *c = sep ? sep + 1 : stop; c < stop && np < MAX_PARTS;) {
            const char *q = memchr(c, 2, (size_t)(stop - c));
            if (q == NULL)
                q = stop;
            parts[np++] = (ib_span_t){c, (size_t)(q - c)};
            m->nparts++;
            c = q + 1;
        }
        p = stop + 1;
    }
    ib_oai_request_t req = {.kind = IB_API_CHAT, .messages = msgs, .nmessages = nm, .parts = parts, .nparts = np};
    for (int t = IB_TEMPLATE_CHATML; t <= IB_TEMPLATE_PLAIN; t++) {
        ib_buf_t out = {0};
        CHECK(ib_chat_render((ib_chat_template_t)t, &req, &out) == 0);
        if (t == IB_TEMPLATE_CHATML)
            for (uint32_t i = 0; i < nm; i++)
                if (msgs[i].role.len == 4 && memcmp(msgs[i].role.ptr, "user", 4) == 0 && msgs[i].nparts == 1)
                    CHECK(contains(&out, parts[msgs[i].first_part].ptr, parts[msgs[i].first_part].len));
        ib_buf_free(&out);
    }
    size_t total = 0;
    for (uint32_t i = 0; i < np; i++)
        total += parts[i].len;
    ib_oai_request_t comp = {.kind = IB_API_COMPLETION, .parts = parts, .nparts = np};
    ib_buf_t out = {0};
    CHECK(ib_chat_render(IB_TEMPLATE_CHATML, &comp, &out) == 0);
    CHECK(out.len == total);
    ib_buf_free(&out);
    return 0;
}
