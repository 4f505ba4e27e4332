/* libFuzzer: a whole HTTP/1.1 response as the control plane's blocking client reads it
 * (ib_http_response_parse, dataplane/http/client.c): what a manager, an engine or the
 * Kubernetes API answers the cluster server, the managers and the tools. Invariants: no
 * crash or read past the input (not NUL-terminated); a parsed body lies inside the input,
 * after the head, with a three-digit status. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/http1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1); /* exactly <size> bytes: ASan sees any over-read */
    memcpy(copy, data, size);
    int status = 0;
    size_t off = 0, len = 0;
    if (ib_http_response_parse(copy, size, &status, &off, &len) == 0) {
        CHECK(status >= 100 && status <= 999);
        CHECK(off > 0 && off <= size && len <= size - off);
    }
    free(copy);
    return 0;
}
