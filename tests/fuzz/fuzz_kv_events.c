/* libFuzzer: an engine's KV-cache event batch (include/ibrain/kv_events.h, ib_kve_decode),
 * as ibrain's events thread receives it from any publisher. Invariants: no crash, leak or
 * unbounded allocation; a refused batch hands over no event and says why; a stored event
 * has hashes, a positive block size and exactly hashes x block size token ids; the events
 * handed over plus those counted as skipped are the batch's. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz.h"

#include "ibrain/kv_events.h"

static uint32_t seen;
static volatile uint64_t sink; /* keeps the reads below */

static void on_stored(void *ctx, const ib_kve_stored_t *ev)
{
    (void)ctx;
    CHECK(ev->nhashes > 0 && ev->nhashes <= IB_KVE_MAX_BLOCKS);
    CHECK(ev->block_size > 0);
    CHECK((uint64_t)ev->nhashes * ev->block_size <= IB_KVE_MAX_TOKENS);
    uint64_t sum = ev->parent;
    for (size_t i = 0; i < ev->nhashes; i++)
        sum += ev->hashes[i];
    for (size_t i = 0; i < ev->nhashes * ev->block_size; i++)
        sum += ev->tokens[i]; /* read every token: ASan checks the array's extent */
    sink = sum;
    seen++;
}

static void on_removed(void *ctx, const uint64_t *h, size_t n)
{
    (void)ctx;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += h[i];
    sink = sum;
    seen++;
}

static void on_cleared(void *ctx)
{
    (void)ctx;
    seen++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ib_kve_decoder_t d;
    ib_kve_visitor_t v = {on_stored, on_removed, on_cleared, NULL};
    ib_kve_batch_t b;
    ib_kve_error_t err = IB_KVE__COUNT;
    seen = 0;
    int rc = ib_kve_decode(&d, data, size, &v, &b, &err);
    if (rc != 0) {
        CHECK(rc == -1);
        CHECK(seen == 0);
        CHECK(err == IB_KVE_MSGPACK || err == IB_KVE_SHAPE || err == IB_KVE_LIMIT);
        return 0;
    }
    CHECK(b.events == seen);
    uint64_t skipped = 0;
    for (int k = 0; k < IB_KVE__COUNT; k++)
        skipped += b.errors[k];
    CHECK(b.events + skipped <= IB_KVE_MAX_EVENTS);
    return 0;
}
