/* libFuzzer: a SyncBatch from the Redis stream ib:affinity, as another ibrain instance
 * wrote it (or anything else with write access to the stream), applied by
 * ib_writeback_apply (dataplane/proxy/writeback.c). Invariants: no crash or leak; a batch
 * that does not decode is -1 and changes nothing; the other instances' load figures that
 * routing adds to its own stay within [0, IB_WB_MAX_REMOTE_LOAD]; the affinity table
 * answers a lookup afterwards. The proxy (three replicas, affinity) is made once: what
 * earlier inputs inserted stays, as on a long-running instance. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"

#include "../../dataplane/proxy/internal.h"
#include "../lib/proxy_config.h"

static ib_proxy_t *proxy(void)
{
    static ib_proxy_t *px;
    if (px != NULL)
        return px;
    ib_proxy_config_t cfg;
    ib_test_proxy_config(&cfg, "affinity", "fuzz-self");
    px = ib_proxy_create(&cfg);
    CHECK(px != NULL);
    return px;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ib_proxy_t *px = proxy();
    const ib_rtab_t *rt = atomic_load(&px->rtab);
    uint64_t applied_before = atomic_load(&px->wb_applied);
    int rc = ib_writeback_apply(px, rt, data, size);
    CHECK(rc >= -1);
    if (rc == -1)
        CHECK(atomic_load(&px->wb_applied) == applied_before);
    else
        CHECK(atomic_load(&px->wb_applied) == applied_before + (uint64_t)rc);
    for (int k = 0; k < 8; k++)
        for (uint32_t s = 0; s < IB_MAX_REPLICAS; s++) {
            CHECK(px->wb_remote[k].inflight[s] >= 0 && px->wb_remote[k].inflight[s] <= IB_WB_MAX_REMOTE_LOAD);
            CHECK(px->wb_remote[k].pending[s] >= 0 && px->wb_remote[k].pending[s] <= IB_WB_MAX_REMOTE_LOAD);
        }
    uint64_t h[2] = {1, 2};
    uint32_t matched[IB_AFF_MAX_REPLICAS] = {0};
    ib_affinity_match(&rt->wl[0].router->table, h, 2, matched);
    return 0;
}
