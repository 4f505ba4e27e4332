/* HTTP/1.1 request heads with a proxy's framing rules (dataplane/http/http1.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/http1.h"

static const ib_http_limits_t LIM = {.max_head_bytes = 1024, .max_body_bytes = 1000};

static int parse(const char *s, ib_http_req_t *r) { return ib_http_parse_request(s, strlen(s), &LIM, r); }

static void test_valid_heads(void **state)
{
    (void)state;
    ib_http_req_t r;
    const char *s = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nX-Request-Id: abc\r\n"
                    "X-Session-Id: s1\r\n\r\nbody...";
    int n = parse(s, &r);
    assert_int_equal(n, (int)(strstr(s, "\r\n\r\n") - s + 4));
    assert_int_equal(r.content_length, 12);
    assert_false(r.chunked);
    assert_true(r.keepalive);
    assert_int_equal(r.request_id.len, 3);
    assert_int_equal(r.session_id.len, 2);
    assert_true(parse("GET /health HTTP/1.0\r\n\r\n", &r) > 0);
    assert_false(r.keepalive);
    assert_true(parse("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", &r) > 0);
    assert_true(r.keepalive);
    assert_true(parse("GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n", &r) > 0);
    assert_false(r.keepalive);
    assert_true(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n", &r) > 0);
    assert_true(r.chunked);
    assert_true(r.expect_continue);
    assert_int_equal(r.content_length, -1);
    /* Repeated but equal Content-Length is allowed (RFC 9112 6.3). */
    assert_true(parse("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", &r) > 0);
}

static void test_incomplete(void **state)
{
    (void)state;
    ib_http_req_t r;
    assert_int_equal(parse("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", &r), 0);
    assert_int_equal(parse("GET", &r), 0);
}

static void test_refusals(void **state)
{
    (void)state;
    ib_http_req_t r;
    struct {
        const char *s;
        int status;
    } cases[] = {
        {"GARBAGE\r\n\r\n", -400},
        {"GET /x HTTP/1.1\r\nBad Header\r\n\r\n", -400},
        {"\x01\x02\x03\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -501},
        {"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n", -413},
        {"POST / HTTP/1.1\r\nExpect: something\r\n\r\n", -417},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = parse(cases[i].s, &r);
        if (rc != cases[i].status)
            fail_msg("case %zu: got %d, want %d", i, rc, cases[i].status);
    }
}

static void test_head_limits(void **state)
{
    (void)state;
    ib_http_req_t r;
    char big[2048];
    int n = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX-Big: ");
    memset(big + n, 'a', 1500);
    big[n + 1500] = '\0';
    /* Incomplete and already past the limit: refuse now rather than buffer forever. */
    assert_int_equal(ib_http_parse_request(big, strlen(big), &LIM, &r), -431);
    strcat(big, "\r\n\r\n");
    assert_int_equal(ib_http_parse_request(big, strlen(big), &LIM, &r), -431);
    char many[4096] = "GET / HTTP/1.1\r\n";
    for (int i = 0; i < IB_HTTP_MAX_HEADERS + 5; i++)
        strcat(many, "A: b\r\n");
    strcat(many, "\r\n");
    ib_http_limits_t roomy = {.max_head_bytes = 8192, .max_body_bytes = 10};
    assert_int_equal(ib_http_parse_request(many, strlen(many), &roomy, &r), -431);
}

static void test_hop_by_hop(void **state)
{
    (void)state;
    struct phr_header h = {.name = "Connection", .name_len = 10};
    assert_true(ib_http_is_hop_by_hop(&h));
    h = (struct phr_header){.name = "TRANSFER-ENCODING", .name_len = 17};
    assert_true(ib_http_is_hop_by_hop(&h));
    h = (struct phr_header){.name = "Content-Type", .name_len = 12};
    assert_false(ib_http_is_hop_by_hop(&h));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_heads), cmocka_unit_test(test_incomplete), cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_head_limits), cmocka_unit_test(test_hop_by_hop),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
