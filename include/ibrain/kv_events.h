/*
 * Engines' KV-cache events (vLLM's ZmqEventPublisher; SGLang sends the same), consumed off
 * the request path so that a replica is routed on what its engine says it holds.
 *
 * Wire (docs/api.md, "KV-cache events"): ZMQ PUB [topic, sequence (8 bytes big-endian),
 * msgpack EventBatch]; EventBatch [ts, events, data_parallel_rank] (or a map of those);
 * an event a tagged array ["BlockStored", block_hashes, parent_block_hash, token_ids,
 * block_size, lora_id, medium, ...] / ["BlockRemoved", block_hashes, medium, ...] /
 * ["AllBlocksCleared", ...] or a map with "type" and those names. Block hashes are
 * integers or digests (bytes): a digest is read as its low 64 bits (big-endian), as vLLM
 * makes its integer form, so both name a block the same way.
 *
 * ibrain keys blocks its own way (hashchain.h over the token ids, as a request's prompt is
 * keyed), recomputed from each BlockStored's token_ids; the engine's hash only resolves
 * parents and removals (ib_kvmap_t). So the engine's hash algorithm and seed never need
 * to match ibrain's; its block size must be the workload's.
 */
#ifndef IBRAIN_KV_EVENTS_H
#define IBRAIN_KV_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

/* Why a payload or an event was dropped (counted per replica in /metrics). */
typedef enum ib_kve_error {
    IB_KVE_MSGPACK,      /* not one complete msgpack value (garbage, truncated, trailing bytes) */
    IB_KVE_SHAPE,        /* not an EventBatch */
    IB_KVE_EVENT,        /* an event whose fields have the wrong types or sizes */
    IB_KVE_UNKNOWN_TYPE, /* an event type ibrain does not know (skipped; the batch goes on) */
    IB_KVE_LIMIT,        /* more events, hashes or tokens than the limits below */
    IB_KVE_UNSUPPORTED,  /* a LoRA block or another medium than the GPU's (skipped) */
    IB_KVE__COUNT
} ib_kve_error_t;

#define IB_KVE_MAX_EVENTS 65536u     /* per batch */
#define IB_KVE_MAX_BLOCKS 65536u     /* hashes per event */
#define IB_KVE_MAX_TOKENS (1u << 22) /* token ids per event */
#define IB_KVE_MAX_PAYLOAD (64u << 20)

typedef struct ib_kve_stored {
    const uint64_t *hashes;   /* the engine's block hashes, first block first */
    size_t nhashes;
    int has_parent;           /* 0: the first block starts the prompt */
    uint64_t parent;
    const uint32_t *tokens;   /* nhashes x block_size token ids (checked) */
    uint32_t block_size;
} ib_kve_stored_t;

/** What a decoded batch holds, handed over event by event, in order. */
typedef struct ib_kve_visitor {
    void (*stored)(void *ctx, const ib_kve_stored_t *ev);
    void (*removed)(void *ctx, const uint64_t *hashes, size_t n);
    void (*cleared)(void *ctx);
    void *ctx;
} ib_kve_visitor_t;

typedef struct ib_kve_batch {
    double ts;                /* the engine's wall clock when it sent the batch (s) */
    uint32_t events;          /* events handed to the visitor */
    uint32_t errors[IB_KVE__COUNT]; /* events skipped, and why */
} ib_kve_batch_t;

/* Decoder scratch: the msgpack zone and the converted arrays, reused batch to batch. */
typedef struct ib_kve_decoder {
    void *zone;               /* msgpack_zone */
    uint64_t *hashes;
    size_t hashes_cap;
    uint32_t *tokens;
    size_t tokens_cap;
} ib_kve_decoder_t;

/* The engine-hash -> ibrain-key map of one replica: open addressing, bounded. */
typedef struct ib_kvmap {
    uint64_t *keys;           /* engine hash; 0 = empty (hash 0 is stored as 1 << 63) */
    uint64_t *vals;           /* ibrain key */
    uint32_t mask;
    uint32_t used;
    uint32_t max_used;        /* beyond this the map refuses (the engine holds more than its capacity) */
} ib_kvmap_t;

/* ---- decoding (dataplane/kvevents/decode.c) ---- */

void ib_kve_decoder_init(ib_kve_decoder_t *d);
void ib_kve_decoder_free(ib_kve_decoder_t *d);

/**
 * Decodes one EventBatch payload and hands its events to <v> in order. Returns 0 (the
 * batch decoded; events it could not use are counted in <out>->errors and skipped), or -1
 * with the reason in <*err> (IB_KVE_MSGPACK, IB_KVE_SHAPE, IB_KVE_LIMIT): then no event
 * was handed over. Never allocates more than a bounded multiple of <len>.
 */
int ib_kve_decode(ib_kve_decoder_t *d, const void *payload, size_t len, const ib_kve_visitor_t *v,
                  ib_kve_batch_t *out, ib_kve_error_t *err);

const char *ib_kve_error_name(ib_kve_error_t e);

/* ---- the engine-hash map (dataplane/kvevents/kvmap.c) ---- */

/** A map for up to <max_blocks> blocks. 0, or -1 when out of memory. */
int ib_kvmap_init(ib_kvmap_t *m, uint32_t max_blocks);
void ib_kvmap_free(ib_kvmap_t *m);
void ib_kvmap_clear(ib_kvmap_t *m);
/** Sets hash -> key. 0, or -1 when the map is full. */
int ib_kvmap_put(ib_kvmap_t *m, uint64_t hash, uint64_t key);
/** The key of <hash> in <*key>: 1, or 0 when unknown. */
int ib_kvmap_get(const ib_kvmap_t *m, uint64_t hash, uint64_t *key);
/** Removes <hash>; its key in <*key>: 1, or 0 when unknown. */
int ib_kvmap_del(ib_kvmap_t *m, uint64_t hash, uint64_t *key);

#ifdef __cplusplus
}
#endif
#endif
