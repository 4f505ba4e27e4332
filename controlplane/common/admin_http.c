/* The control-plane daemons' status server (include/ibrain/admin_http.h). */
#include "ibrain/admin_http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "ibrain/clock.h"
#include "ibrain/http1.h"
#include "ibrain/json_write.h"
#include "ibrain/net.h"

struct ib_admin {
    ib_admin_fn fn;
    void *arg;
    int listen_fd;
    int stop_pipe[2]; /* closing [1] ends the thread */
    uint16_t port;
    pthread_t thread;
};

static void error_body(ib_buf_t *b, const char *msg)
{
    char s[160];
    int n = snprintf(s, sizeof(s), "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\"}}\n", msg);
    ib_buf_append(b, s, (size_t)n);
}

int ib_admin_answer(ib_admin_fn fn, void *arg, const char *in, size_t len, ib_buf_t *out)
{
    ib_http_req_t req;
    ib_http_limits_t lim = {IB_ADMIN_MAX_HEAD, 0};
    int rc = ib_http_parse_request(in, len, &lim, &req);
    ib_buf_t body = {0};
    int status;
    const char *ctype = "application/json";
    if (rc <= 0) {
        status = 400;
        error_body(&body, "bad request");
    } else if (req.method.len != 3 || memcmp(req.method.ptr, "GET", 3) != 0) {
        status = 405;
        error_body(&body, "method not allowed");
    } else {
        char path[256];
        size_t pl = req.path.len < sizeof(path) - 1 ? req.path.len : sizeof(path) - 1;
        memcpy(path, req.path.ptr, pl);
        path[pl] = '\0';
        status = fn(arg, path, &body, &ctype);
        if (status == 404 && body.len == 0)
            error_body(&body, "no such route");
    }
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     ib_http_reason(status), ctype, body.len);
    ib_buf_reset(out);
    ib_buf_append(out, head, (size_t)n);
    ib_buf_append(out, body.ptr, body.len);
    ib_buf_free(&body);
    return status;
}

/* One connection, one request. The server has one thread: a client that trickles its head
 * (or never sends one) must not hold it, so the whole head must come within
 * IB_ADMIN_DEADLINE_MS of the accept, and the answer must leave within as long. */
static void serve_one(ib_admin_t *a, int fd)
{
    uint64_t deadline = ib_now_ns() + IB_ADMIN_DEADLINE_MS * 1000000ull;
    char in[IB_ADMIN_MAX_HEAD];
    size_t len = 0;
    ib_http_req_t req;
    ib_http_limits_t lim = {sizeof(in), 0};
    while (len < sizeof(in)) {
        uint64_t now = ib_now_ns();
        struct pollfd p = {fd, POLLIN, 0};
        if (now >= deadline || poll(&p, 1, (int)((deadline - now) / 1000000u) + 1) <= 0)
            break; /* too slow: answered 400 below (or the send fails) */
        ssize_t n = read(fd, in + len, sizeof(in) - len);
        if (n <= 0)
            return;
        len += (size_t)n;
        if (ib_http_parse_request(in, len, &lim, &req) != 0)
            break;
    }
    ib_buf_t out = {0};
    ib_admin_answer(a->fn, a->arg, in, len, &out);
    struct timeval tv = {IB_ADMIN_DEADLINE_MS / 1000, (IB_ADMIN_DEADLINE_MS % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    for (size_t off = 0; off < out.len;) {
        ssize_t n = send(fd, out.ptr + off, out.len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    ib_buf_free(&out);
}

static void *admin_main(void *arg)
{
    ib_admin_t *a = arg;
    for (;;) {
        struct pollfd p[2] = {{a->listen_fd, POLLIN, 0}, {a->stop_pipe[0], POLLIN, 0}};
        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (p[0].revents) {
            int fd = accept4(a->listen_fd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                serve_one(a, fd);
                close(fd);
            }
        }
    }
    return NULL;
}

ib_admin_t *ib_admin_start(const char *listen_addr, ib_admin_fn fn, void *arg, char *err, size_t errlen)
{
    ib_admin_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->fn = fn;
    a->arg = arg;
    a->stop_pipe[0] = a->stop_pipe[1] = -1;
    struct sockaddr_in sa;
    if (ib_parse_hostport(listen_addr, &sa) != 0) {
        snprintf(err, errlen, "wants IPV4:PORT, got '%s'", listen_addr);
        goto fail;
    }
    a->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    socklen_t slen = sizeof(sa);
    if (a->listen_fd < 0 || setsockopt(a->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(a->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(a->listen_fd, 64) != 0 ||
        getsockname(a->listen_fd, (struct sockaddr *)&sa, &slen) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", listen_addr, strerror(errno));
        goto fail;
    }
    a->port = ntohs(sa.sin_port);
    if (pipe2(a->stop_pipe, O_CLOEXEC) != 0 || pthread_create(&a->thread, NULL, admin_main, a) != 0) {
        snprintf(err, errlen, "cannot start the status thread");
        goto fail;
    }
    return a;
fail:
    if (a->listen_fd >= 0)
        close(a->listen_fd);
    if (a->stop_pipe[0] >= 0) {
        close(a->stop_pipe[0]);
        close(a->stop_pipe[1]);
    }
    free(a);
    return NULL;
}

uint16_t ib_admin_port(const ib_admin_t *a) { return a->port; }

void ib_admin_stop(ib_admin_t *a)
{
    if (a == NULL)
        return;
    close(a->stop_pipe[1]);
    pthread_join(a->thread, NULL);
    close(a->stop_pipe[0]);
    close(a->listen_fd);
    free(a);
}
