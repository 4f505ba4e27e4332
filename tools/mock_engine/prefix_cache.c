/* The engine's prefix KV cache model (include/ibrain/prefix_cache.h): an open-addressing
 * hash set of block hashes (linear probing, backward-shift deletion) threaded on an
 * intrusive LRU list, all in arrays sized once at init. */
#include "ibrain/prefix_cache.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

static uint32_t slot_of(const ib_prefix_cache_t *c, uint64_t hash)
{
    /* Block hashes are XXH3 output already; fold the high bits in for small tables. */
    return (uint32_t)(hash ^ (hash >> 32)) & c->slot_mask;
}

int ib_pcache_init(ib_prefix_cache_t *c, uint32_t capacity_blocks, uint64_t ttl_ns)
{
    assert(capacity_blocks > 0 && capacity_blocks < (1u << 30));
    memset(c, 0, sizeof(*c));
    uint32_t nslots = 16;
    while (nslots < capacity_blocks * 2u)
        nslots *= 2;
    c->entries = calloc(capacity_blocks, sizeof(*c->entries));
    c->slots = calloc(nslots, sizeof(*c->slots));
    if (c->entries == NULL || c->slots == NULL) {
        ib_pcache_destroy(c);
        return -1;
    }
    c->capacity = capacity_blocks;
    c->ttl_ns = ttl_ns;
    c->slot_mask = nslots - 1;
    c->mru = c->lru = IB_PCACHE_NONE;
    for (uint32_t i = 0; i < capacity_blocks; i++)
        c->entries[i].next = i + 1 < capacity_blocks ? i + 1 : IB_PCACHE_NONE;
    c->free_head = 0;
    return 0;
}

void ib_pcache_destroy(ib_prefix_cache_t *c)
{
    free(c->entries);
    free(c->slots);
    memset(c, 0, sizeof(*c));
}

/* Slot holding <hash>, or the empty slot where it would go. */
static uint32_t find_slot(const ib_prefix_cache_t *c, uint64_t hash)
{
    uint32_t s = slot_of(c, hash);
    while (c->slots[s] != 0 && c->entries[c->slots[s] - 1].hash != hash)
        s = (s + 1) & c->slot_mask;
    return s;
}

static void list_unlink(ib_prefix_cache_t *c, uint32_t i)
{
    ib_pcache_entry_t *e = &c->entries[i];
    if (e->prev != IB_PCACHE_NONE)
        c->entries[e->prev].next = e->next;
    else
        c->mru = e->next;
    if (e->next != IB_PCACHE_NONE)
        c->entries[e->next].prev = e->prev;
    else
        c->lru = e->prev;
}

static void list_push_mru(ib_prefix_cache_t *c, uint32_t i)
{
    ib_pcache_entry_t *e = &c->entries[i];
    e->prev = IB_PCACHE_NONE;
    e->next = c->mru;
    if (c->mru != IB_PCACHE_NONE)
        c->entries[c->mru].prev = i;
    c->mru = i;
    if (c->lru == IB_PCACHE_NONE)
        c->lru = i;
}

/* Removes the entry in slot <s>: backward-shift the probe run so lookups stay correct. */
static void remove_slot(ib_prefix_cache_t *c, uint32_t s)
{
    uint32_t idx = c->slots[s] - 1;
    if (c->listener.removed != NULL)
        c->listener.removed(c->listener.ctx, idx);
    list_unlink(c, idx);
    c->entries[idx].next = c->free_head;
    c->free_head = idx;
    c->used--;
    uint32_t hole = s, j = s;
    for (;;) {
        j = (j + 1) & c->slot_mask;
        if (c->slots[j] == 0)
            break;
        uint32_t home = slot_of(c, c->entries[c->slots[j] - 1].hash);
        /* Move j into the hole unless its home lies cyclically in (hole, j]. */
        int home_between = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (!home_between) {
            c->slots[hole] = c->slots[j];
            hole = j;
        }
    }
    c->slots[hole] = 0;
}

static int expired(const ib_prefix_cache_t *c, const ib_pcache_entry_t *e, uint64_t now_ns)
{
    return c->ttl_ns != 0 && now_ns > e->last_used_ns && now_ns - e->last_used_ns > c->ttl_ns;
}

int ib_pcache_contains(const ib_prefix_cache_t *c, uint64_t hash, uint64_t now_ns)
{
    uint32_t s = find_slot(c, hash);
    return c->slots[s] != 0 && !expired(c, &c->entries[c->slots[s] - 1], now_ns);
}

size_t ib_pcache_match(ib_prefix_cache_t *c, const uint64_t *h, size_t n, uint64_t now_ns)
{
    size_t k = 0;
    for (; k < n; k++) {
        uint32_t s = find_slot(c, h[k]);
        if (c->slots[s] == 0)
            break;
        if (expired(c, &c->entries[c->slots[s] - 1], now_ns)) {
            remove_slot(c, s);
            c->expired++;
            break;
        }
    }
    /* Refresh tail-first so that the head of the prompt ends most recently used. */
    for (size_t i = k; i-- > 0;) {
        uint32_t idx = c->slots[find_slot(c, h[i])] - 1;
        c->entries[idx].last_used_ns = now_ns;
        list_unlink(c, idx);
        list_push_mru(c, idx);
    }
    return k;
}

void ib_pcache_insert(ib_prefix_cache_t *c, const uint64_t *h, size_t n, uint64_t now_ns, void *tag)
{
    /* A prompt longer than the cache keeps only its head, as an engine would. */
    if (n > c->capacity)
        n = c->capacity;
    for (size_t i = n; i-- > 0;) {
        uint32_t s = find_slot(c, h[i]);
        uint32_t idx;
        if (c->slots[s] != 0) {
            idx = c->slots[s] - 1;
            list_unlink(c, idx);
        } else {
            if (c->used == c->capacity) {
                /* Evict the least recently used block (never one of this prompt's newer
                 * blocks: those are all more recent than anything already present). */
                uint32_t victim = c->lru;
                remove_slot(c, find_slot(c, c->entries[victim].hash));
                c->evicted++;
                s = find_slot(c, h[i]); /* the shift may have moved the empty slot */
            }
            idx = c->free_head;
            c->free_head = c->entries[idx].next;
            c->entries[idx].hash = h[i];
            c->slots[s] = idx + 1;
            c->used++;
            c->inserted++;
            if (c->listener.stored != NULL)
                c->listener.stored(c->listener.ctx, tag, i, idx);
        }
        c->entries[idx].last_used_ns = now_ns;
        list_push_mru(c, idx);
    }
    if (c->listener.inserted != NULL)
        c->listener.inserted(c->listener.ctx, tag, h, n);
}

uint32_t ib_pcache_entry_of(const ib_prefix_cache_t *c, uint64_t hash)
{
    uint32_t s = find_slot(c, hash);
    return c->slots[s] != 0 ? c->slots[s] - 1 : IB_PCACHE_NONE;
}

void ib_pcache_clear(ib_prefix_cache_t *c)
{
    memset(c->slots, 0, ((size_t)c->slot_mask + 1) * sizeof(*c->slots));
    for (uint32_t i = 0; i < c->capacity; i++)
        c->entries[i].next = i + 1 < c->capacity ? i + 1 : IB_PCACHE_NONE;
    c->free_head = 0;
    c->mru = c->lru = IB_PCACHE_NONE;
    c->used = 0;
    c->cleared++;
    if (c->listener.cleared != NULL)
        c->listener.cleared(c->listener.ctx);
}
