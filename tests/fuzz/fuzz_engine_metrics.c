/* libFuzzer: an engine's /metrics page as ibrain reads its load from it
 * (include/ibrain/engine_metrics.h). Invariants: no crash or read past the input (it is
 * not NUL-terminated); figures are finite and non-negative, the KV usage a mean of such;
 * success means both running and waiting were found. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/engine_metrics.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *copy = malloc(size ? size : 1); /* exactly <size> bytes: ASan sees any over-read */
    memcpy(copy, data, size);
    ib_engine_load_t l;
    int rc = ib_engine_load_parse(copy, size, &l);
    CHECK(rc == 0 || rc == -1);
    CHECK(isfinite(l.running) && l.running >= 0 && isfinite(l.waiting) && l.waiting >= 0);
    CHECK(isfinite(l.kv_usage) && l.kv_usage >= 0);
    CHECK((rc == 0) == ((l.found & (IB_ENGINE_LOAD_RUNNING | IB_ENGINE_LOAD_WAITING)) ==
                        (IB_ENGINE_LOAD_RUNNING | IB_ENGINE_LOAD_WAITING)));
    free(copy);
    return 0;
}
