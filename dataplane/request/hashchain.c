/* Prefix block hash chain (include/ibrain/hashchain.h). The x86 dispatch header picks the
 * AVX2 XXH3 kernel at run time (~50 GB/s here against ~15 GB/s for the SSE2 default). */
#include "ibrain/hashchain.h"

#include <assert.h>
#include <xxh_x86dispatch.h>
/* And XXH3 inlined (its functions prefixed XXH_INLINE_): a block of up to 240 bytes (64
 * bytes of text, 16 tokens) takes XXH3's scalar short-input path, where the dispatcher's
 * indirect call cost more than the hash. Same function, same values. */
#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t ib_hashchain_next(uint64_t prev, const void *block, size_t len)
{
    if (len <= XXH3_MIDSIZE_MAX)
        return XXH_INLINE_XXH3_64bits_withSeed(block, len, prev);
    /* named: the second include above took back the dispatch header's #define */
    return XXH3_64bits_withSeed_dispatch(block, len, prev);
}

size_t ib_hashchain(const void *buf, size_t len, size_t block_bytes, uint64_t *out, size_t max_out)
{
    assert(block_bytes > 0);
    size_t n = len / block_bytes;
    if (n > max_out)
        n = max_out;
    const unsigned char *p = buf;
    uint64_t h = 0;
    for (size_t i = 0; i < n; i++) {
        h = ib_hashchain_next(h, p + i * block_bytes, block_bytes);
        out[i] = h;
    }
    return n;
}
