/* One replica's engine-hash -> ibrain-key map (include/ibrain/kv_events.h): open
 * addressing with linear probing and backward-shift deletion, sized once. */
#include "ibrain/kv_events.h"

#include <stdlib.h>
#include <string.h>

#define EMPTY 0ull
#define ZERO_STANDIN (1ull << 63) /* engine hash 0 is kept under this (and 1 << 63 under itself) */

static uint64_t stored_form(uint64_t h) { return h == 0 ? ZERO_STANDIN : h; }

static uint32_t home(const ib_kvmap_t *m, uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull; /* engines' hashes may be anything: mix before masking */
    k ^= k >> 33;
    return (uint32_t)k & m->mask;
}

int ib_kvmap_init(ib_kvmap_t *m, uint32_t max_blocks)
{
    memset(m, 0, sizeof(*m));
    if (max_blocks == 0 || max_blocks > (1u << 28))
        return -1;
    uint32_t n = 16;
    while (n < max_blocks * 2u)
        n *= 2;
    m->keys = calloc(n, sizeof(*m->keys));
    m->vals = calloc(n, sizeof(*m->vals));
    if (m->keys == NULL || m->vals == NULL) {
        ib_kvmap_free(m);
        return -1;
    }
    m->mask = n - 1;
    m->max_used = max_blocks;
    return 0;
}

void ib_kvmap_free(ib_kvmap_t *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

void ib_kvmap_clear(ib_kvmap_t *m)
{
    if (m->keys != NULL)
        memset(m->keys, 0, ((size_t)m->mask + 1) * sizeof(*m->keys));
    m->used = 0;
}

static uint32_t find(const ib_kvmap_t *m, uint64_t k)
{
    uint32_t s = home(m, k);
    while (m->keys[s] != EMPTY && m->keys[s] != k)
        s = (s + 1) & m->mask;
    return s;
}

int ib_kvmap_put(ib_kvmap_t *m, uint64_t hash, uint64_t key)
{
    uint64_t k = stored_form(hash);
    uint32_t s = find(m, k);
    if (m->keys[s] == EMPTY) {
        if (m->used >= m->max_used)
            return -1;
        m->keys[s] = k;
        m->used++;
    }
    m->vals[s] = key;
    return 0;
}

int ib_kvmap_get(const ib_kvmap_t *m, uint64_t hash, uint64_t *key)
{
    uint32_t s = find(m, stored_form(hash));
    if (m->keys[s] == EMPTY)
        return 0;
    *key = m->vals[s];
    return 1;
}

int ib_kvmap_del(ib_kvmap_t *m, uint64_t hash, uint64_t *key)
{
    uint32_t s = find(m, stored_form(hash));
    if (m->keys[s] == EMPTY)
        return 0;
    *key = m->vals[s];
    m->used--;
    /* backward shift: move later members of the run into the hole unless their home lies
     * cyclically in (hole, j] */
    uint32_t hole = s, j = s;
    for (;;) {
        j = (j + 1) & m->mask;
        if (m->keys[j] == EMPTY)
            break;
        uint32_t h = home(m, m->keys[j]);
        int between = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j);
        if (!between) {
            m->keys[hole] = m->keys[j];
            m->vals[hole] = m->vals[j];
            hole = j;
        }
    }
    m->keys[hole] = EMPTY;
    return 1;
}
