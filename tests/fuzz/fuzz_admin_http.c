/* libFuzzer: a request head as the control-plane daemons' status server answers it
 * (ib_admin_answer, controlplane/common/admin_http.c: ib-manager's /status and /ready,
 * ib-clusterd's /metrics). Invariants: no crash or read past the input (not
 * NUL-terminated); every input gets one whole response whose status line and
 * Content-Length match; the route callback sees a NUL-terminated path of a GET only. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/admin_http.h"

static int route(void *arg, const char *path, ib_buf_t *body, const char **ctype)
{
    int *calls = arg;
    (*calls)++;
    CHECK(strlen(path) < 256);
    if (strcmp(path, "/status") == 0) {
        ib_buf_append(body, "{\"phase\":\"ready\"}", 17);
        return 200;
    }
    if (strcmp(path, "/metrics") == 0) {
        *ctype = IB_PROM_CTYPE;
        ib_buf_append(body, "up 1\n", 5);
        return 200;
    }
    return 404;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > IB_ADMIN_MAX_HEAD)
        return 0; /* the server reads at most this much */
    char *copy = malloc(size ? size : 1); /* exactly <size> bytes: ASan sees any over-read */
    memcpy(copy, data, size);
    int calls = 0;
    ib_buf_t out = {0};
    int status = ib_admin_answer(route, &calls, copy, size, &out);
    CHECK(status == 200 || status == 400 || status == 404 || status == 405);
    CHECK(calls <= 1 && (calls == 1) == (status == 200 || status == 404));
    char want[32];
    snprintf(want, sizeof(want), "HTTP/1.1 %d ", status);
    CHECK(out.len > strlen(want) && memcmp(out.ptr, want, strlen(want)) == 0);
    char *end = memmem(out.ptr, out.len, "\r\n\r\n", 4);
    CHECK(end != NULL);
    char *cl = memmem(out.ptr, (size_t)(end - out.ptr), "Content-Length: ", 16);
    CHECK(cl != NULL && strtoul(cl + 16, NULL, 10) == out.len - (size_t)(end + 4 - out.ptr));
    ib_buf_free(&out);
    free(copy);
    return 0;
}
