/*
 * Prefix block hash chain: h_i = XXH3_64(block_i, seed = h_{i-1}), h_{-1} = 0.
 *
 * Two prompts that share their first k full blocks share their first k hashes, and a hash
 * names the whole prefix up to its block, not just the block (as vLLM's block hashes do).
 * Only full blocks are hashed: a partial last block is never cached by an engine either.
 */
#ifndef IBRAIN_HASHCHAIN_H
#define IBRAIN_HASHCHAIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Hashes the full <block_bytes>-sized blocks of <buf>, writing at most <max_out> hashes to
 * <out>. Returns the number written: min(len / block_bytes, max_out). <block_bytes> > 0.
 */
size_t ib_hashchain(const void *buf, size_t len, size_t block_bytes, uint64_t *out, size_t max_out);

/** One link of the chain: the hash of <block> following <prev>. */
uint64_t ib_hashchain_next(uint64_t prev, const void *block, size_t len);

#ifdef __cplusplus
}
#endif
#endif
