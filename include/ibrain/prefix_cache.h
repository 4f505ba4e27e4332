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

/* Who hears about the cache's changes (the engine's KV events publisher); any member may
 * be NULL. Called from inside the cache's functions; a callback must not call back in,
 * except ib_pcache_entry_of(). */
typedef struct ib_pcache_listener {
    /* h[pos] of the insert tagged <tag> was not held and now is, in <entry>; called
     * tail-first (pos descending), after any eviction that made room for it */
    void (*stored)(void *ctx, void *tag, size_t pos, uint32_t entry);
    /* the insert tagged <tag> is complete (every h[0..n) is held) */
    void (*inserted)(void *ctx, void *tag, const uint64_t *h, size_t n);
    /* <entry> is about to leave the cache (evicted or expired); its hash is still readable */
    void (*removed)(void *ctx, uint32_t entry);
    /* every block left (ib_pcache_clear) */
    void (*cleared)(void *ctx);
    void *ctx;
} ib_pcache_listener_t;

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
    uint64_t cleared;
    ib_pcache_listener_t listener;
} ib_prefix_cache_t;

/** Allocates a cache of <capacity_blocks> (> 0). Returns 0, or -1 when out of memory. */
int ib_pcache_init(ib_prefix_cache_t *c, uint32_t capacity_blocks, uint64_t ttl_ns);
void ib_pcache_destroy(ib_prefix_cache_t *c);

/**
 * Returns how many leading hashes of <h>[0..n) the cache holds (unexpired at <now_ns>),
 * and refreshes those blocks. Expired blocks met on the way are dropped.
 */
size_t ib_pcache_match(ib_prefix_cache_t *c, const uint64_t *h, size_t n, uint64_t now_ns);

/** Inserts or refreshes every block of <h>[0..n), evicting LRU blocks as needed. <tag> is
 * handed to the listener. */
void ib_pcache_insert(ib_prefix_cache_t *c, const uint64_t *h, size_t n, uint64_t now_ns, void *tag);

/** The entry holding <hash> (expired or not), or IB_PCACHE_NONE. Changes nothing. */
uint32_t ib_pcache_entry_of(const ib_prefix_cache_t *c, uint64_t hash);

/** Drops every block (vLLM's reset_prefix_cache). */
void ib_pcache_clear(ib_prefix_cache_t *c);

/** 1 when <hash> is present and unexpired at <now_ns> (does not refresh). */
int ib_pcache_contains(const ib_prefix_cache_t *c, uint64_t hash, uint64_t now_ns);

#ifdef __cplusplus
}
#endif
#endif
