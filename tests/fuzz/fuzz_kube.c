/* libFuzzer: what the kubernetes driver reads (include/ibrain/kube.h). The first byte picks
 * the parser: even, an EndpointSlice object (ib_kube_slice_endpoints); odd, a kubeconfig
 * file (ib_kube_conn_from_kubeconfig, libyaml). Invariants: no crash or leak; endpoints
 * come back NUL-terminated, at most the capacity; a refused kubeconfig says why and holds
 * no memory, an accepted one names an https?:// server with no trailing slash. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"

#include "ibrain/kube.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ib_json_parser_t *p, *inner;
    if (p == NULL) {
        p = ib_json_parser_new(1 << 16);
        inner = ib_json_parser_new(1 << 16);
    }
    if (size == 0)
        return 0;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    if ((data[0] & 1) == 0) {
        ib_kube_endpoint_t eps[8];
        char workload[64];
        int n = ib_kube_slice_endpoints(p, inner, text, len, workload, sizeof(workload), eps, 8);
        CHECK(n >= -1 && n <= 8);
        for (int i = 0; i < n; i++) {
            CHECK(memchr(eps[i].ip, '\0', sizeof(eps[i].ip)) != NULL);
            CHECK(memchr(eps[i].pod, '\0', sizeof(eps[i].pod)) != NULL);
            CHECK(eps[i].ready == 0 || eps[i].ready == 1);
        }
        if (n >= 0)
            CHECK(memchr(workload, '\0', sizeof(workload)) != NULL);
        return 0;
    }
    int fd = memfd_create("kubeconfig", MFD_CLOEXEC);
    CHECK(fd >= 0);
    CHECK(write(fd, text, len) == (ssize_t)len);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    ib_kube_conn_t c;
    char err[512] = "";
    if (ib_kube_conn_from_kubeconfig(path, &c, err, sizeof(err)) == 0) {
        size_t sl = strlen(c.server);
        CHECK(sl > 0 && c.server[sl - 1] != '/');
        ib_kube_conn_free(&c);
    } else {
        CHECK(err[0] != '\0');
    }
    close(fd);
    return 0;
}
