/* Request understanding: the simdjson shim, chat templates, the prefix hash chain. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/chat.h"
#include "ibrain/hashchain.h"
#include "ibrain/oai_error.h"
#include "ibrain/ondemand_c.h"

static ib_json_parser_t *P;

static int setup(void **state)
{
    (void)state;
    P = ib_json_parser_new(1 << 22);
    return P == NULL;
}

static int teardown(void **state)
{
    (void)state;
    ib_json_parser_free(P);
    return 0;
}

static int parse(ib_api_kind_t kind, const char *body, ib_oai_request_t *r, ib_json_error_t *e)
{
    memset(e, 0, sizeof(*e));
    return ib_oai_parse(P, kind, body, strlen(body), strlen(body), r, e);
}

static int span_is(ib_span_t s, const char *lit) { return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0; }

static void test_chat_valid(void **state)
{
    (void)state;
    ib_oai_request_t r;
    ib_json_error_t e;
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"image_url\","
                       "\"image_url\":{\"url\":\"x\"}},{\"text\":\"b\\u00e9\\n\",\"type\":\"text\"}]},"
                       "{\"role\":\"assistant\",\"content\":null}],"
                       "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"max_completion_tokens\":7,"
                       "\"user\":\"u1\",\"session_id\":\"s9\",\"temperature\":0.5,\"tools\":[{\"x\":[1,2]}]}";
    assert_int_equal(parse(IB_API_CHAT, body, &r, &e), 0);
    assert_true(span_is(r.model, "m"));
    assert_int_equal(r.nmessages, 3);
    assert_true(span_is(r.messages[0].role, "system"));
    assert_int_equal(r.messages[1].nparts, 2);
    assert_true(span_is(r.parts[r.messages[1].first_part], "a"));
    assert_true(span_is(r.parts[r.messages[1].first_part + 1], "b\xc3\xa9\n"));
    assert_int_equal(r.messages[2].nparts, 0);
    assert_true(r.stream);
    assert_true(r.include_usage);
    assert_int_equal(r.max_tokens, 7);
    assert_true(span_is(r.user, "u1"));
    assert_true(span_is(r.session_id, "s9"));
}

/* A string content with no escape is taken as it lies in the body (no copy); one with an
 * escape is unescaped. */
static void test_content_in_place(void **state)
{
    (void)state;
    ib_oai_request_t r;
    ib_json_error_t e;
    const char *body = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"plain text \\u00e9?\" },"
                       "{\"role\":\"user\",\"content\":\"no escape, caf\xc3\xa9\"\n}]}";
    static char buf[256 + IB_JSON_PADDING]; /* padded: parsed where it lies, not copied */
    size_t len = strlen(body);
    memcpy(buf, body, len + 1);
    body = buf;
    memset(&e, 0, sizeof(e));
    assert_int_equal(ib_oai_parse(P, IB_API_CHAT, buf, len, len + IB_JSON_PADDING, &r, &e), 0);
    ib_span_t a = r.parts[r.messages[0].first_part], b = r.parts[r.messages[1].first_part];
    assert_true(span_is(a, "plain text \xc3\xa9?"));
    assert_true(span_is(b, "no escape, caf\xc3\xa9"));
    assert_true(b.ptr > body && b.ptr + b.len < body + strlen(body)); /* in place */
    assert_true(a.ptr < body || a.ptr >= body + strlen(body));        /* unescaped elsewhere */
}

static void test_completion_valid(void **state)
{
    (void)state;
    ib_oai_request_t r;
    ib_json_error_t e;
    assert_int_equal(parse(IB_API_COMPLETION, "{\"prompt\":\"hi\",\"model\":\"m\",\"max_tokens\":null}", &r, &e), 0);
    assert_int_equal(r.nparts, 1);
    assert_int_equal(r.max_tokens, -1);
    assert_false(r.stream);
    assert_int_equal(parse(IB_API_COMPLETION, "{\"prompt\":[\"a\",\"b\"],\"model\":\"m\"}", &r, &e), 0);
    assert_int_equal(r.nparts, 2);
}

static void test_huge_string(void **state)
{
    (void)state;
    size_t n = 1 << 21;
    char *body = malloc(n + 100);
    int k = sprintf(body, "{\"model\":\"m\",\"prompt\":\"");
    memset(body + k, 'x', n);
    strcpy(body + k + n, "\"}");
    ib_oai_request_t r;
    ib_json_error_t e;
    assert_int_equal(parse(IB_API_COMPLETION, body, &r, &e), 0);
    assert_int_equal(r.parts[0].len, n);
    free(body);
}

struct bad_case {
    ib_api_kind_t kind;
    const char *body;
    const char *param; /* expected param, NULL for none */
};

static void test_invalid_bodies(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {IB_API_CHAT, "", NULL},
        {IB_API_CHAT, "[]", NULL},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]", NULL},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]} x", NULL},
        {IB_API_CHAT, "{\"model\":\"m\" \"messages\":[]}", NULL},
        {IB_API_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model"},
        {IB_API_CHAT, "{\"model\":5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "model"},
        {IB_API_CHAT, "{\"model\":\"m\"}", "messages"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":{}}", "messages"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[]}", "messages"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[1]}", "messages[0]"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"content\":\"x\"}]}", "messages[0].role"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"user\",\"content\":3}]}",
         "messages[1].content"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
         "messages[0].content"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[\"x\"]}]}", "messages[0].content"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"\\x\"}]}", "messages[0].content"},
        /* a raw control character in a string (JSON wants it escaped), where the content
         * is taken as it lies (no escape in it) and where it is unescaped */
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\ty\"}]}", NULL},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\\n\x01\"}]}", NULL},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":1}", "stream"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":-2}", "max_tokens"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"user\":[]}", "user"},
        {IB_API_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream_options\":3}",
         "stream_options"},
        {IB_API_COMPLETION, "{\"model\":\"m\",\"prompt\":[1,2]}", "prompt"},
        {IB_API_COMPLETION, "{\"model\":\"m\",\"prompt\":[]}", "prompt"},
        {IB_API_COMPLETION, "{\"model\":\"m\",\"prompt\":{}}", "prompt"},
        {IB_API_COMPLETION, "{\"model\":\"m\",\"messages\":[]}", "prompt"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ib_oai_request_t r;
        ib_json_error_t e;
        int rc = parse(cases[i].kind, cases[i].body, &r, &e);
        if (rc != -1)
            fail_msg("case %zu (%s) parsed", i, cases[i].body);
        assert_int_equal(e.status, 400);
        assert_true(e.message[0] != '\0');
        if (cases[i].param == NULL) {
            if (e.param != NULL)
                fail_msg("case %zu: param %s, expected none", i, e.param);
        } else if (e.param == NULL || strcmp(e.param, cases[i].param) != 0) {
            fail_msg("case %zu: param %s, expected %s (%s)", i, e.param ? e.param : "(none)", cases[i].param, e.message);
        }
    }
}

static void test_padding_respected(void **state)
{
    (void)state;
    /* A body whose buffer has the padding is parsed in place; spans point into it or into
     * the parser's string buffer, never past the body. */
    const char *json = "{\"model\":\"m\",\"prompt\":\"abc\"}";
    size_t len = strlen(json);
    char *buf = malloc(len + IB_JSON_PADDING);
    memcpy(buf, json, len);
    memset(buf + len, 0, IB_JSON_PADDING);
    ib_oai_request_t r;
    ib_json_error_t e;
    assert_int_equal(ib_oai_parse(P, IB_API_COMPLETION, buf, len, len + IB_JSON_PADDING, &r, &e), 0);
    assert_true(span_is(r.parts[0], "abc"));
    free(buf);
}

static void test_json_pointer(void **state)
{
    (void)state;
    const char *d = "{\"choices\":[{\"delta\":{\"content\":\"hi \\\"x\\\"\"}}],\"usage\":{\"completion_tokens\":12},"
                    "\"n\":null,\"a\":[1,2,3]}";
    ib_span_t s;
    int64_t v;
    assert_int_equal(ib_json_pointer_string(P, d, strlen(d), "/choices/0/delta/content", &s), 0);
    assert_true(span_is(s, "hi \"x\""));
    assert_int_equal(ib_json_pointer_string(P, d, strlen(d), "/choices/1/delta/content", &s), 1);
    assert_int_equal(ib_json_pointer_string(P, d, strlen(d), "/n", &s), 1);
    assert_int_equal(ib_json_pointer_string(P, d, strlen(d), "/usage", &s), -1);
    assert_int_equal(ib_json_pointer_int(P, d, strlen(d), "/usage/completion_tokens", &v), 0);
    assert_int_equal(v, 12);
    int64_t *arr;
    size_t n;
    assert_int_equal(ib_json_pointer_int_array(P, d, strlen(d), "/a", &arr, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(arr[2], 3);
    free(arr);
    assert_int_equal(ib_json_pointer_string(P, "{bad", 4, "/x", &s), -1);
}

/* ---- templates ---- */

static void render(ib_chat_template_t t, const char *body, const char *expect)
{
    ib_oai_request_t r;
    ib_json_error_t e;
    assert_int_equal(parse(IB_API_CHAT, body, &r, &e), 0);
    ib_buf_t out = {0};
    assert_int_equal(ib_chat_render(t, &r, &out), 0);
    if (out.len != strlen(expect) || memcmp(out.ptr, expect, out.len) != 0)
        fail_msg("rendered:\n%.*s\nexpected:\n%s", (int)out.len, out.ptr, expect);
    ib_buf_free(&out);
}

static const char *CONV = "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"You are terse.\"},"
                          "{\"role\":\"user\",\"content\":\"  Hi!\\n\"},{\"role\":\"assistant\",\"content\":\"Hello.\"},"
                          "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Part 1\"},"
                          "{\"type\":\"text\",\"text\":\"Part 2\"}]}]}";

static void test_llama3_template(void **state)
{
    (void)state;
    render(IB_TEMPLATE_LLAMA3, CONV,
           "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"
           "<|start_header_id|>user<|end_header_id|>\n\nPart 1\nPart 2<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_chatml_template(void **state)
{
    (void)state;
    render(IB_TEMPLATE_CHATML, CONV,
           "<|im_start|>system\nYou are terse.<|im_end|>\n"
           "<|im_start|>user\n  Hi!\n<|im_end|>\n"
           "<|im_start|>assistant\nHello.<|im_end|>\n"
           "<|im_start|>user\nPart 1\nPart 2<|im_end|>\n"
           "<|im_start|>assistant\n");
    /* Qwen3: reasoning of earlier turns is dropped; tool results are grouped as a user turn. */
    render(IB_TEMPLATE_CHATML,
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},"
           "{\"role\":\"assistant\",\"content\":\"<think>\\nhmm\\n</think>\\n\\nA\"},"
           "{\"role\":\"tool\",\"content\":\"r1\"},{\"role\":\"tool\",\"content\":\"r2\"},"
           "{\"role\":\"user\",\"content\":\"q2\"}]}",
           "<|im_start|>user\nq<|im_end|>\n"
           "<|im_start|>assistant\nA<|im_end|>\n"
           "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
           "<|im_start|>user\nq2<|im_end|>\n"
           "<|im_start|>assistant\n");
    /* A trailing assistant message after the last query keeps an (empty) think block. */
    render(IB_TEMPLATE_CHATML,
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"A\"}]}",
           "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nA<|im_end|>\n"
           "<|im_start|>assistant\n");
    /* Several </think>: the content is what follows the last, the reasoning what precedes
     * the first, after its last <think>; decoys that share a first byte ('<') do not match. */
    render(IB_TEMPLATE_CHATML,
           "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\","
           "\"content\":\"x<thin<think>\\nR1\\n</think>mid</thinK></think>\\n\\nEND<\"}]}",
           "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>\nR1\n</think>\n\nEND<<|im_end|>\n"
           "<|im_start|>assistant\n");
}

static void test_template_names(void **state)
{
    (void)state;
    ib_chat_template_t t;
    assert_int_equal(ib_chat_template_parse("llama3", &t), 0);
    assert_int_equal(t, IB_TEMPLATE_LLAMA3);
    assert_int_equal(ib_chat_template_parse("qwen3", &t), 0);
    assert_int_equal(t, IB_TEMPLATE_CHATML);
    assert_int_equal(ib_chat_template_parse("jinja", &t), -1);
}

/* ---- hash chain ---- */

static void test_hashchain_properties(void **state)
{
    (void)state;
    char a[1000], b[1000];
    for (int i = 0; i < 1000; i++)
        a[i] = b[i] = (char)('a' + i % 26);
    b[700] = '#'; /* blocks of 64: blocks 0..9 equal, block 10 differs */
    uint64_t ha[32], hb[32];
    size_t na = ib_hashchain(a, sizeof(a), 64, ha, 32), nb = ib_hashchain(b, sizeof(b), 64, hb, 32);
    assert_int_equal(na, 15); /* full blocks only */
    assert_int_equal(nb, 15);
    for (int i = 0; i < 10; i++)
        assert_true(ha[i] == hb[i]);
    for (int i = 10; i < 15; i++)
        assert_true(ha[i] != hb[i]);
    /* A hash names its whole prefix: equal block content at a different position differs. */
    char c[128];
    memcpy(c, a, 64);
    memcpy(c + 64, a, 64);
    uint64_t hc[2];
    ib_hashchain(c, 128, 64, hc, 2);
    assert_true(hc[0] != hc[1]);
    assert_true(hc[1] == ib_hashchain_next(hc[0], a, 64));
    assert_int_equal(ib_hashchain(a, 1000, 64, ha, 3), 3);
    assert_int_equal(ib_hashchain(a, 63, 64, ha, 3), 0);
}

static void test_error_json(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    ib_oai_error_json(&b, "bad \"x\"\n\x01", "invalid_request_error", "messages[0]", NULL);
    const char *expect = "{\"error\":{\"message\":\"bad \\\"x\\\"\\n\\u0001\",\"type\":\"invalid_request_error\","
                         "\"param\":\"messages[0]\",\"code\":null}}";
    assert_int_equal(b.len, strlen(expect));
    assert_memory_equal(b.ptr, expect, b.len);
    ib_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_valid), cmocka_unit_test(test_content_in_place),       cmocka_unit_test(test_completion_valid),
        cmocka_unit_test(test_huge_string),      cmocka_unit_test(test_invalid_bodies),
        cmocka_unit_test(test_padding_respected), cmocka_unit_test(test_json_pointer),
        cmocka_unit_test(test_llama3_template),  cmocka_unit_test(test_chatml_template),
        cmocka_unit_test(test_template_names),   cmocka_unit_test(test_hashchain_properties),
        cmocka_unit_test(test_error_json),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
