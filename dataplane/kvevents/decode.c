/*
 * Decoding an engine's EventBatch (include/ibrain/kv_events.h) with msgpack-c's object API.
 *
 * msgpack-c allocates an array's or map's elements when it meets the header, before it
 * has seen them: a 5-byte payload claiming 2^32 elements would ask for 96 GB. So a
 * payload is first walked header by header (bounds(): one pass, no allocation) and refused
 * when a container claims more elements than bytes remain; after that, what msgpack-c
 * allocates is bounded by a small multiple of the payload's size.
 */
#include "ibrain/kv_events.h"

#include <msgpack.h>
#include <stdlib.h>
#include <string.h>

static const char *const error_names[IB_KVE__COUNT] = {"msgpack", "shape", "event", "unknown_type", "limit",
                                                      "unsupported"};

const char *ib_kve_error_name(ib_kve_error_t e) { return (unsigned)e < IB_KVE__COUNT ? error_names[e] : "?"; }

void ib_kve_decoder_init(ib_kve_decoder_t *d) { memset(d, 0, sizeof(*d)); }

void ib_kve_decoder_free(ib_kve_decoder_t *d)
{
    if (d->zone != NULL)
        msgpack_zone_free(d->zone);
    free(d->hashes);
    free(d->tokens);
    memset(d, 0, sizeof(*d));
}

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* 0 when <p>[0..len) is exactly one msgpack value whose containers claim no more elements
 * than bytes remain. */
static int bounds(const uint8_t *p, size_t len)
{
    size_t off = 0;
    uint64_t pending = 1;
    while (pending > 0) {
        if (off >= len)
            return -1; /* truncated */
        uint8_t b = p[off++];
        pending--;
        uint64_t skip = 0, add = 0;
        int lenbytes = 0;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b <= 0x8f) {
            add = 2u * (b & 0x0f);
        } else if (b <= 0x9f) {
            add = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4: case 0xd9: lenbytes = 1; break;                 /* bin8, str8 */
            case 0xc5: case 0xda: lenbytes = 2; break;                 /* bin16, str16 */
            case 0xc6: case 0xdb: lenbytes = 4; break;                 /* bin32, str32 */
            case 0xc7: lenbytes = 1, skip = 1; break;                  /* ext8: len, type */
            case 0xc8: lenbytes = 2, skip = 1; break;
            case 0xc9: lenbytes = 4, skip = 1; break;
            case 0xca: case 0xce: case 0xd2: skip = 4; break;
            case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xd4: skip = 2; break;                                /* fixext 1..16: type + data */
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xde: lenbytes = -2; break;                /* array16, map16 */
            case 0xdd: case 0xdf: lenbytes = -4; break;                /* array32, map32 */
            default: return -1;                                        /* 0xc1: never used */
            }
        }
        if (lenbytes != 0) {
            int n = lenbytes < 0 ? -lenbytes : lenbytes;
            if (len - off < (size_t)n)
                return -1;
            uint64_t v = be(p + off, n);
            off += (size_t)n;
            if (lenbytes > 0)
                skip += v;
            else
                add = (b == 0xde || b == 0xdf) ? 2 * v : v;
        }
        if (len - off < skip)
            return -1;
        off += skip;
        pending += add;
        if (pending > len - off)
            return -1; /* more elements claimed than bytes left */
    }
    return off == len ? 0 : -1; /* trailing bytes: not one value */
}

static int is_str(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o->type == MSGPACK_OBJECT_STR && o->via.str.size == n && memcmp(o->via.str.ptr, s, n) == 0;
}

/* A block hash: an unsigned integer, or a digest read as its low 64 bits (big-endian). */
static int block_hash(const msgpack_object *o, uint64_t *out)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *out = o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { /* a signed 64-bit form of the same bits */
        *out = (uint64_t)o->via.i64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_BIN && o->via.bin.size > 0 && o->via.bin.size <= 64) {
        size_t n = o->via.bin.size, k = n < 8 ? n : 8;
        *out = be((const uint8_t *)o->via.bin.ptr + (n - k), (int)k);
        return 0;
    }
    return -1;
}

static int hash_list(ib_kve_decoder_t *d, const msgpack_object *o, size_t *n, ib_kve_error_t *why)
{
    *why = IB_KVE_EVENT;
    if (o == NULL || o->type != MSGPACK_OBJECT_ARRAY)
        return -1;
    if (o->via.array.size > IB_KVE_MAX_BLOCKS) {
        *why = IB_KVE_LIMIT;
        return -1;
    }
    if (o->via.array.size > d->hashes_cap) {
        uint64_t *h = realloc(d->hashes, o->via.array.size * sizeof(*h));
        if (h == NULL) {
            *why = IB_KVE_LIMIT;
            return -1;
        }
        d->hashes = h;
        d->hashes_cap = o->via.array.size;
    }
    for (uint32_t i = 0; i < o->via.array.size; i++)
        if (block_hash(&o->via.array.ptr[i], &d->hashes[i]) != 0)
            return -1;
    *n = o->via.array.size;
    return 0;
}

/* The medium is the GPU's (or unnamed, as before vLLM named it). */
static int gpu_medium(const msgpack_object *o) { return o == NULL || o->type == MSGPACK_OBJECT_NIL || is_str(o, "GPU"); }

/* The fields of one event by name, from its array (vLLM's order) or its map. */
enum { F_HASHES, F_PARENT, F_TOKENS, F_BLOCK, F_LORA, F_MEDIUM, F__COUNT };

static int fields_of(const msgpack_object *ev, const msgpack_object **type, const msgpack_object *f[F__COUNT],
                     int stored)
{
    memset(f, 0, sizeof(*f) * F__COUNT);
    if (ev->type == MSGPACK_OBJECT_ARRAY) {
        const msgpack_object_array *a = &ev->via.array;
        if (a->size == 0)
            return -1;
        *type = &a->ptr[0];
        /* BlockStored: hashes, parent, tokens, block_size, lora_id, medium (then newer
         * fields); BlockRemoved: hashes, medium */
        static const int stored_order[] = {F_HASHES, F_PARENT, F_TOKENS, F_BLOCK, F_LORA, F_MEDIUM};
        static const int removed_order[] = {F_HASHES, F_MEDIUM};
        const int *order = stored ? stored_order : removed_order;
        uint32_t n = stored ? 6 : 2;
        for (uint32_t i = 0; i < n && i + 1 < a->size; i++)
            f[order[i]] = &a->ptr[i + 1];
        return 0;
    }
    if (ev->type != MSGPACK_OBJECT_MAP)
        return -1;
    static const char *const names[F__COUNT] = {"block_hashes", "parent_block_hash", "token_ids", "block_size",
                                                "lora_id", "medium"};
    *type = NULL;
    for (uint32_t i = 0; i < ev->via.map.size; i++) {
        const msgpack_object_kv *kv = &ev->via.map.ptr[i];
        if (is_str(&kv->key, "type"))
            *type = &kv->val;
        for (int k = 0; k < F__COUNT; k++)
            if (is_str(&kv->key, names[k]))
                f[k] = &kv->val;
    }
    return *type != NULL ? 0 : -1;
}

static const msgpack_object *event_type(const msgpack_object *ev)
{
    if (ev->type == MSGPACK_OBJECT_ARRAY && ev->via.array.size > 0)
        return &ev->via.array.ptr[0];
    if (ev->type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < ev->via.map.size; i++)
            if (is_str(&ev->via.map.ptr[i].key, "type"))
                return &ev->via.map.ptr[i].val;
    return NULL;
}

/* One event to the visitor; the reason it is skipped otherwise. */
static int one_event(ib_kve_decoder_t *d, const msgpack_object *ev, const ib_kve_visitor_t *v, ib_kve_error_t *why)
{
    const msgpack_object *type = event_type(ev), *f[F__COUNT];
    *why = IB_KVE_EVENT;
    if (type == NULL || type->type != MSGPACK_OBJECT_STR)
        return -1;
    if (is_str(type, "AllBlocksCleared")) {
        if (v->cleared)
            v->cleared(v->ctx);
        return 0;
    }
    int stored = is_str(type, "BlockStored");
    if (!stored && !is_str(type, "BlockRemoved")) {
        *why = IB_KVE_UNKNOWN_TYPE;
        return -1;
    }
    if (fields_of(ev, &type, f, stored) != 0)
        return -1;
    size_t n;
    if (hash_list(d, f[F_HASHES], &n, why) != 0)
        return -1;
    if (!gpu_medium(f[F_MEDIUM])) {
        *why = IB_KVE_UNSUPPORTED;
        return -1;
    }
    if (!stored) {
        if (v->removed)
            v->removed(v->ctx, d->hashes, n);
        return 0;
    }
    ib_kve_stored_t s = {.hashes = d->hashes, .nhashes = n};
    const msgpack_object *parent = f[F_PARENT], *tok = f[F_TOKENS], *bs = f[F_BLOCK];
    if (parent == NULL || tok == NULL || bs == NULL || tok->type != MSGPACK_OBJECT_ARRAY ||
        bs->type != MSGPACK_OBJECT_POSITIVE_INTEGER || bs->via.u64 == 0 || bs->via.u64 > 65536)
        return -1;
    if (parent->type != MSGPACK_OBJECT_NIL) {
        if (block_hash(parent, &s.parent) != 0)
            return -1;
        s.has_parent = 1;
    }
    if (f[F_LORA] != NULL && f[F_LORA]->type != MSGPACK_OBJECT_NIL) {
        *why = IB_KVE_UNSUPPORTED; /* a LoRA's blocks: keyed with the adapter by the engine */
        return -1;
    }
    s.block_size = (uint32_t)bs->via.u64;
    uint32_t nt = tok->via.array.size;
    if (nt > IB_KVE_MAX_TOKENS) {
        *why = IB_KVE_LIMIT;
        return -1;
    }
    if (n == 0 || (uint64_t)n * s.block_size != nt)
        return -1;
    if (nt > d->tokens_cap) {
        uint32_t *t = realloc(d->tokens, nt * sizeof(*t));
        if (t == NULL) {
            *why = IB_KVE_LIMIT;
            return -1;
        }
        d->tokens = t;
        d->tokens_cap = nt;
    }
    for (uint32_t i = 0; i < nt; i++) {
        const msgpack_object *t = &tok->via.array.ptr[i];
        if (t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 > UINT32_MAX)
            return -1;
        d->tokens[i] = (uint32_t)t->via.u64;
    }
    s.tokens = d->tokens;
    if (v->stored)
        v->stored(v->ctx, &s);
    return 0;
}

int ib_kve_decode(ib_kve_decoder_t *d, const void *payload, size_t len, const ib_kve_visitor_t *v,
                  ib_kve_batch_t *out, ib_kve_error_t *err)
{
    memset(out, 0, sizeof(*out));
    if (len > IB_KVE_MAX_PAYLOAD) {
        *err = IB_KVE_LIMIT;
        return -1;
    }
    if (len == 0 || bounds(payload, len) != 0) {
        *err = IB_KVE_MSGPACK;
        return -1;
    }
    if (d->zone == NULL && (d->zone = msgpack_zone_new(MSGPACK_ZONE_CHUNK_SIZE)) == NULL) {
        *err = IB_KVE_LIMIT;
        return -1;
    }
    msgpack_zone_clear(d->zone);
    msgpack_object root;
    size_t off = 0;
    if (msgpack_unpack(payload, len, &off, d->zone, &root) != MSGPACK_UNPACK_SUCCESS) {
        *err = IB_KVE_MSGPACK;
        return -1;
    }
    /* [ts, events, data_parallel_rank] (the rank may be absent), or a map of those */
    const msgpack_object *ts = NULL, *events = NULL;
    if (root.type == MSGPACK_OBJECT_ARRAY && root.via.array.size >= 2) {
        ts = &root.via.array.ptr[0];
        events = &root.via.array.ptr[1];
    } else if (root.type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < root.via.map.size; i++) {
            if (is_str(&root.via.map.ptr[i].key, "ts"))
                ts = &root.via.map.ptr[i].val;
            else if (is_str(&root.via.map.ptr[i].key, "events"))
                events = &root.via.map.ptr[i].val;
        }
    }
    if (ts == NULL || events == NULL || events->type != MSGPACK_OBJECT_ARRAY ||
        (ts->type != MSGPACK_OBJECT_FLOAT64 && ts->type != MSGPACK_OBJECT_FLOAT32 &&
         ts->type != MSGPACK_OBJECT_POSITIVE_INTEGER)) {
        *err = IB_KVE_SHAPE;
        return -1;
    }
    if (events->via.array.size > IB_KVE_MAX_EVENTS) {
        *err = IB_KVE_LIMIT;
        return -1;
    }
    out->ts = ts->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (double)ts->via.u64 : ts->via.f64;
    for (uint32_t i = 0; i < events->via.array.size; i++) {
        ib_kve_error_t why;
        if (one_event(d, &events->via.array.ptr[i], v, &why) == 0)
            out->events++;
        else
            out->errors[why]++;
    }
    return 0;
}
