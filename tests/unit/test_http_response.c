/* HTTP/1.1 response heads and body framing from a replica (dataplane/http/response.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "ibrain/http1.h"

static int parse(const char *s, ib_http_resp_t *r) { return ib_http_parse_response(s, strlen(s), 4096, r); }

static void test_length_body(void **state)
{
    (void)state;
    ib_http_resp_t r;
    const char *s = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello";
    int n = parse(s, &r);
    assert_int_equal(n, (int)(strstr(s, "\r\n\r\n") - s + 4));
    assert_int_equal(r.status, 200);
    assert_int_equal(r.framing, IB_FRAMING_LENGTH);
    assert_int_equal(r.content_length, 5);
    assert_true(r.keepalive);
    assert_false(r.sse);
    assert_int_equal(r.reason.len, 2);
    /* Fed in two pieces, then bytes past the body are dropped. */
    ib_http_body_t b;
    ib_http_body_init(&b, &r);
    char p1[] = "hel";
    size_t k = 3;
    assert_int_equal(ib_http_body_feed(&b, p1, &k), 0);
    assert_int_equal(k, 3);
    char p2[] = "loEXTRA";
    k = 7;
    assert_int_equal(ib_http_body_feed(&b, p2, &k), 1);
    assert_int_equal(k, 2);
    assert_int_equal(ib_http_body_eof(&b), 1);
}

static void test_no_body(void **state)
{
    (void)state;
    ib_http_resp_t r;
    assert_true(parse("HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n", &r) > 0);
    assert_int_equal(r.framing, IB_FRAMING_NONE);
    assert_true(parse("HTTP/1.1 304 Not Modified\r\n\r\n", &r) > 0);
    assert_int_equal(r.framing, IB_FRAMING_NONE);
    assert_true(parse("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", &r) > 0);
    assert_int_equal(r.framing, IB_FRAMING_NONE);
    ib_http_body_t b;
    ib_http_body_init(&b, &r);
    char x[] = "junk";
    size_t k = 4;
    assert_int_equal(ib_http_body_feed(&b, x, &k), 1);
    assert_int_equal(k, 0);
}

static void test_chunked_sse(void **state)
{
    (void)state;
    ib_http_resp_t r;
    const char *s = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
                    "Transfer-Encoding: Chunked\r\nContent-Length: 99\r\n\r\n";
    assert_int_equal(parse(s, &r), (int)strlen(s));
    assert_int_equal(r.framing, IB_FRAMING_CHUNKED); /* chunked overrides Content-Length */
    assert_true(r.sse);
    ib_http_body_t b;
    ib_http_body_init(&b, &r);
    char c1[] = "6\r\ndata: \r\n3";
    size_t k = strlen(c1);
    assert_int_equal(ib_http_body_feed(&b, c1, &k), 0);
    assert_int_equal(k, 6);
    assert_memory_equal(c1, "data: ", 6);
    char c2[] = "\r\nabc\r\n0\r\n\r\nNEXT";
    k = strlen(c2);
    assert_int_equal(ib_http_body_feed(&b, c2, &k), 1);
    assert_int_equal(k, 3);
    assert_memory_equal(c2, "abc", 3);
    /* A broken chunk size. */
    ib_http_body_init(&b, &r);
    char bad[] = "zz\r\n";
    k = strlen(bad);
    assert_int_equal(ib_http_body_feed(&b, bad, &k), -1);
    /* Cut short by a close. */
    ib_http_body_init(&b, &r);
    assert_int_equal(ib_http_body_eof(&b), -1);
}

static void test_close_delimited(void **state)
{
    (void)state;
    ib_http_resp_t r;
    assert_true(parse("HTTP/1.0 200 OK\r\n\r\n", &r) > 0);
    assert_int_equal(r.framing, IB_FRAMING_CLOSE);
    assert_false(r.keepalive);
    assert_true(parse("HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n", &r) > 0);
    assert_int_equal(r.framing, IB_FRAMING_CLOSE);
    assert_false(r.keepalive);
    ib_http_body_t b;
    ib_http_body_init(&b, &r);
    char x[] = "anything";
    size_t k = 8;
    assert_int_equal(ib_http_body_feed(&b, x, &k), 0);
    assert_int_equal(k, 8);
    assert_int_equal(ib_http_body_eof(&b), 1);
}

static void test_interim_skipped(void **state)
{
    (void)state;
    ib_http_resp_t r;
    const char *s = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    int n = parse(s, &r);
    assert_int_equal(n, (int)strlen(s) - 2);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.nheaders, 1);
    /* Only the interim head so far: more is needed. */
    assert_int_equal(parse("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2", &r), 0);
}

static void test_incomplete_and_limits(void **state)
{
    (void)state;
    ib_http_resp_t r;
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Le", &r), 0);
    char big[6000];
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    memset(big + 20, 'a', sizeof(big) - 21);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(parse(big, &r), -1); /* still incomplete, but over the limit */
}

static void test_refused(void **state)
{
    (void)state;
    ib_http_resp_t r;
    const char *bad[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",   /* conflicting lengths */
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",                      /* not digits */
        "HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 9999999999999999999\r\n\r\n",    /* too long */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",        /* a coding we don't decode */
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",     /* never asked for */
        "HTTP/1.1 200 OK\r\n folded\r\n\r\n",
        "HTTX/1.1 200 OK\r\n\r\n",
        "HTTP/1.1 20 OK\r\n\r\n",
        "HTTP/1.1 020 OK\r\nContent-Length: 0\r\n\r\n",                /* no status: not an interim head */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int n = parse(bad[i], &r);
        if (n != -1)
            fail_msg("accepted: %s (%d)", bad[i], n);
    }
    /* Equal repeated lengths are one length. */
    assert_true(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length:  5 \r\n\r\n", &r) > 0);
    assert_int_equal(r.content_length, 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_length_body),     cmocka_unit_test(test_no_body),
        cmocka_unit_test(test_chunked_sse),     cmocka_unit_test(test_close_delimited),
        cmocka_unit_test(test_interim_skipped), cmocka_unit_test(test_incomplete_and_limits),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
