/* The http module's shared pieces: reason phrases and the blocking client
 * (dataplane/http/http1.c, client.c), the client against a loopback server thread. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ibrain/http1.h"

static void test_reasons(void **state)
{
    (void)state;
    assert_string_equal(ib_http_reason(200), "OK");
    assert_string_equal(ib_http_reason(201), "Created");
    assert_string_equal(ib_http_reason(400), "Bad Request");
    assert_string_equal(ib_http_reason(401), "Unauthorized");
    assert_string_equal(ib_http_reason(403), "Forbidden");
    assert_string_equal(ib_http_reason(404), "Not Found");
    assert_string_equal(ib_http_reason(405), "Method Not Allowed");
    assert_string_equal(ib_http_reason(409), "Conflict");
    assert_string_equal(ib_http_reason(413), "Payload Too Large");
    assert_string_equal(ib_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(ib_http_reason(502), "Bad Gateway");
    assert_string_equal(ib_http_reason(503), "Service Unavailable");
    assert_string_equal(ib_http_reason(504), "Gateway Timeout");
    /* unknown: a 4xx reads as a client error, anything else as a server error */
    assert_string_equal(ib_http_reason(418), "Bad Request");
    assert_string_equal(ib_http_reason(599), "Internal Server Error");
    assert_string_equal(ib_http_reason(0), "Internal Server Error");
}

/* Parses <resp> (copied: chunked bodies are decoded in place); the body or NULL. */
static int parse(const char *resp, int *status, char *body, size_t cap)
{
    char buf[1024];
    size_t n = strlen(resp), off, len;
    assert_true(n < sizeof(buf));
    memcpy(buf, resp, n);
    if (ib_http_response_parse(buf, n, status, &off, &len) != 0)
        return -1;
    assert_true(len < cap);
    memcpy(body, buf + off, len);
    body[len] = '\0';
    return 0;
}

static void test_parse_framing(void **state)
{
    (void)state;
    int st;
    char body[256];
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", &st, body, sizeof(body)), 0);
    assert_int_equal(st, 200);
    assert_string_equal(body, "hello");
    /* bytes after Content-Length are not the body */
    assert_int_equal(parse("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokEXTRA", &st, body, sizeof(body)), 0);
    assert_int_equal(st, 201);
    assert_string_equal(body, "ok");
    /* no framing: the body runs to the end */
    assert_int_equal(parse("HTTP/1.0 404 Not Found\r\n\r\nnone here", &st, body, sizeof(body)), 0);
    assert_int_equal(st, 404);
    assert_string_equal(body, "none here");
    /* chunked, with a chunk extension and a trailer */
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                           "5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
                           &st, body, sizeof(body)),
                     0);
    assert_string_equal(body, "hello, world");
    assert_int_equal(parse("HTTP/1.1 200 OK\r\ntransfer-encoding: CHUNKED\r\n\r\na\r\n0123456789\r\n0\r\n\r\n", &st,
                           body, sizeof(body)),
                     0);
    assert_string_equal(body, "0123456789");
    assert_int_equal(parse("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", &st, body, sizeof(body)), 0);
    assert_int_equal(st, 204);
    assert_string_equal(body, "");
}

static void test_parse_refusals(void **state)
{
    (void)state;
    int st;
    char body[256];
    assert_int_equal(parse("", &st, body, sizeof(body)), -1);
    assert_int_equal(parse("garbage\r\n\r\n", &st, body, sizeof(body)), -1);
    /* three digits that are no status (found by fuzz_http_client) */
    assert_int_equal(parse("HTTP/1.1 020 OK\r\nContent-Length: 0\r\n\r\n", &st, body, sizeof(body)), -1);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n", &st, body, sizeof(body)), -1); /* head cut */
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort", &st, body, sizeof(body)), -1);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", &st, body, sizeof(body)), -1);
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", &st, body, sizeof(body)),
                     -1); /* cut in a chunk */
    assert_int_equal(parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", &st, body,
                           sizeof(body)),
                     -1); /* not a chunk size */
}

/* ---- the client against a real server ---- */

struct server {
    int fd;
    const char *response; /* written after the request head (and its body) is read */
    char request[2048];   /* what the client sent */
    size_t request_len;
};

static void *serve_one(void *arg)
{
    struct server *s = arg;
    int c = accept(s->fd, NULL, NULL);
    if (c < 0)
        return NULL;
    /* Read until the head is in, then as many body bytes as it announced. */
    size_t want = 0;
    for (;;) {
        ssize_t k = read(c, s->request + s->request_len, sizeof(s->request) - 1 - s->request_len);
        if (k <= 0)
            break;
        s->request_len += (size_t)k;
        s->request[s->request_len] = '\0';
        char *end = strstr(s->request, "\r\n\r\n");
        if (end == NULL)
            continue;
        const char *cl = strstr(s->request, "Content-Length: ");
        if (want == 0)
            want = (size_t)(end + 4 - s->request) + (cl != NULL && cl < end ? (size_t)atoi(cl + 16) : 0);
        if (s->request_len >= want)
            break;
    }
    /* Written in pieces, so that the client reads a response that arrives in parts. */
    size_t n = strlen(s->response), half = n / 2;
    if (write(c, s->response, half) < 0 || (usleep(20000), write(c, s->response + half, n - half)) < 0)
        perror("serve_one");
    close(c);
    return NULL;
}

/* Starts a one-request server on a loopback port; writes "127.0.0.1:PORT" to <hp>. */
static void start_server(struct server *s, pthread_t *t, char *hp, size_t cap)
{
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(s->fd, 4), 0);
    assert_int_equal(getsockname(s->fd, (struct sockaddr *)&sa, &len), 0);
    snprintf(hp, cap, "127.0.0.1:%u", ntohs(sa.sin_port));
    assert_int_equal(pthread_create(t, NULL, serve_one, s), 0);
}

static void stop_server(struct server *s, pthread_t t)
{
    pthread_join(t, NULL);
    close(s->fd);
}

static void test_client_chunked_get(void **state)
{
    (void)state;
    struct server s = {.response = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                                   "6\r\nmetric\r\n3\r\n 42\r\n1\r\n\n\r\n0\r\n\r\n"};
    pthread_t t;
    char hp[32];
    start_server(&s, &t, hp, sizeof(hp));
    ib_buf_t body = {0};
    assert_int_equal(ib_http_get(hp, "/metrics", 2000, &body), 200);
    stop_server(&s, t);
    assert_int_equal(body.len, 10);
    assert_string_equal(body.ptr, "metric 42\n"); /* NUL-terminated */
    assert_non_null(strstr(s.request, "GET /metrics HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "Connection: close\r\n"));
    assert_null(strstr(s.request, "Content-Length")); /* a GET says nothing of a body */
    ib_buf_free(&body);
}

static void test_client_post(void **state)
{
    (void)state;
    struct server s = {.response = "HTTP/1.1 409 Conflict\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}"};
    pthread_t t;
    char hp[32];
    start_server(&s, &t, hp, sizeof(hp));
    ib_buf_t body = {0};
    ib_buf_append(&body, "kept:", 5); /* the body is appended */
    const char req[] = "{\"id\":\"w1\"}";
    assert_int_equal(ib_http_request(hp, "POST", "/v1/workloads", "Authorization: Bearer t\r\n", req,
                                     sizeof(req) - 1, 2000, &body),
                     409);
    stop_server(&s, t);
    assert_string_equal(body.ptr, "kept:{\"error\":\"x\"}");
    assert_non_null(strstr(s.request, "POST /v1/workloads HTTP/1.1\r\n"));
    assert_non_null(strstr(s.request, "Authorization: Bearer t\r\n"));
    assert_non_null(strstr(s.request, "Content-Length: 11\r\n"));
    assert_non_null(strstr(s.request, "Content-Type: application/json\r\n"));
    assert_string_equal(strstr(s.request, "\r\n\r\n") + 4, req);
    ib_buf_free(&body);
}

static void test_client_unreachable(void **state)
{
    (void)state;
    /* a port that was free a moment ago: bound, then closed */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    char hp[32];
    snprintf(hp, sizeof(hp), "127.0.0.1:%u", ntohs(sa.sin_port));
    ib_buf_t body = {0};
    assert_int_equal(ib_http_get(hp, "/", 500, &body), -1);
    assert_int_equal(ib_http_get("not-an-address", "/", 500, &body), -1);
    assert_int_equal(ib_http_get("127.0.0.1:0", "/", 500, &body), -1);
    assert_int_equal(body.len, 0);
    ib_buf_free(&body);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reasons),           cmocka_unit_test(test_parse_framing),
        cmocka_unit_test(test_parse_refusals),    cmocka_unit_test(test_client_chunked_get),
        cmocka_unit_test(test_client_post),       cmocka_unit_test(test_client_unreachable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
