/*
 * The mock engine's prefix KV cache model: a bounded LRU set of block hashes (see
 * hashchain.h), as a vLLM/SGLang engine with prefix caching keeps KV blocks.
 *
 *  - capacity in blocks; inserting into a full cache evicts the least recently used block;
 *  - a lookup matches the longest run of leading blocks that are present (a prefix cache
 *    can only reuse a prefix) and refreshes them;
 *  - blocks of one prompt are refreshed last-to-first, so the head of a prompt is the most
 *    recently used and a prompt's tail is evicted before its head (vLLM frees a request's
 *    blocks in reverse order for the same reason);
 *  - optional TTL: a block unused for longer than ttl is gone.
 *
 * Single-threaded: the engine's event loop owns it. Times are caller-supplied (ns).
 */
#ifndef IBRAIN_PREFIX_CACHE_H
#define IBRAIN_PREFIX_CACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IB_PCACHE_NONE UINT32_MAX

typedef struct ib_pcache_entry {
    uint64_t hash;
    uint64_t last_used_ns;
    uint32_t prev; /* towards most recently used */
    uint32_t next; /* towards least recently used */
} ib_pcache_entry_t;

typedef struct ib_prefix_cache {
    uint32_t capacity;      /* in blocks, > 0 */
    uint64_t ttl_ns;        /* 0: blocks never expire */
    ib_pcache_entry_t *entries;
    uint32_t *slots;        /* open addressing: entry index + 1, 0 = empty */
    uint32_t slot_mask;
    uint32_t used;          /* entries in use */
    uint32_t free_head;     /* free list through .next */
    uint32_t mru, lru;      /* ends of the recency list */
    /* counters, in blocks */
    uint64_t inserted;
    uint64_t evicted;
    uint64_t expired;
} ib_prefix_cache_t;

/** Allocates a cache of <capacity_blocks> (> 0). Returns 0, or -1 when out of memory. */
int ib_pcache_init(ib_prefix_cache_t *c, uint32_t capacity_blocks, uint64_t ttl_ns);
void ib_pcache_destroy(ib_prefix_cache_t *c);

/**
 * Returns how many leading hashes of <h>[0..n) the cache holds (unexpired at <now_ns>),
 * and refreshes those blocks. Expired blocks met on the way are dropped.
 */
size_t ib_pcache_match(ib_prefix_cache_t *c, const uint64_t *h, size_t n, uint64_t now_ns);

/** Inserts or refreshes every block of <h>[0..n), evicting LRU blocks as needed. */
void ib_pcache_insert(ib_prefix_cache_t *c, const uint64_t *h, size_t n, uint64_t now_ns);

/** 1 when <hash> is present and unexpired at <now_ns> (does not refresh). */
int ib_pcache_contains(const ib_prefix_cache_t *c, uint64_t hash, uint64_t now_ns);

#ifdef __cplusplus
}
#endif
#endif
