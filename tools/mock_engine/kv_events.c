/*
 * The mock engine's KV-cache events, published as vLLM 0.11 publishes them
 * (vllm/distributed/kv_events.py, ZmqEventPublisher):
 *
 *   PUB    [topic, sequence (8 bytes big-endian, from 0, one per batch), msgpack(EventBatch)]
 *   ROUTER [identity, "", start (8 bytes BE)] in; [identity, "", seq, payload] for every kept
 *          batch from start on, then [identity, "", ff x 8, ""] out
 *
 * EventBatch is [ts, [events], data_parallel_rank]; an event is a tagged array
 * ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium],
 * ["BlockRemoved", block_hashes, medium], ["AllBlocksCleared"] (vLLM <= 0.2x), or with
 * --kv-events-encoding map a map with a "type" key (vLLM after it dropped array_like).
 *
 * Block hashes follow vllm/v1/core/kv_cache_utils.py: hash_fn((parent or NONE_HASH,
 * tuple(block token ids), None)) where hash_fn is sha256 or xxh3_128 over pickle protocol 5
 * or canonical CBOR of that tuple; NONE_HASH is hash_fn(PYTHONHASHSEED) or, unset, 32
 * random bytes. Events carry the low 64 bits as an integer unless
 * VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0 (then the raw digest, as bytes).
 *
 * The cache (prefix_cache.c) tells us what enters and leaves through its listener; events
 * accumulate between flushes and a flush publishes them as one batch, as vLLM does once
 * per scheduler step. The replay socket is served by its own thread; the kept batches are
 * shared with it under a mutex.
 */
#include "ibrain/mock_engine.h"
#include "ibrain/buf.h"
#include "ibrain/ondemand_c.h"

#include <errno.h>
#include <msgpack.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>
#include <zmq.h>

#define DIGEST_MAX 32

typedef struct kept_batch {
    uint64_t seq;
    uint8_t *payload;
    size_t len;
} kept_batch_t;

typedef struct stored_pos {
    size_t pos;
    uint32_t entry;
} stored_pos_t;

struct ib_kvpub {
    ib_kvpub_config_t cfg;
    ib_prefix_cache_t *cache;
    uint32_t block_tokens;
    size_t digest_len;              /* 32 (sha256) or 16 (xxh3_128) */
    uint8_t none_hash[DIGEST_MAX];
    uint8_t (*ext)[DIGEST_MAX];     /* per cache entry: its vLLM block hash */
    /* the batch being built */
    msgpack_sbuffer events;
    msgpack_packer pk;
    uint32_t nevents;
    stored_pos_t *stored;           /* positions of the current insert that were new */
    size_t nstored, stored_cap;
    ib_buf_t ser;                   /* hash input scratch */
    msgpack_sbuffer batch;
    uint64_t next_seq;
    uint64_t published_batches, published_events;
    /* zmq */
    void *zctx, *pub;
    void *router;                   /* owned by the replay thread once it runs */
    pthread_t replay_thread;
    int replay_running;
    _Atomic int stop;
    pthread_mutex_t lock;           /* kept[] */
    kept_batch_t *kept;             /* ring of the last buffer_steps batches */
    uint64_t nkept;                 /* batches ever kept */
};

/* ---- configuration ---- */

static int set_str(char *dst, size_t cap, const ib_json_field_t *f, char *err, size_t errlen)
{
    if (f->type == IB_JSON_NULL) {
        dst[0] = '\0';
        return 0;
    }
    if (f->type != IB_JSON_STRING || f->str.len >= cap) {
        snprintf(err, errlen, "--kv-events-config: \"%.*s\" wants a string of at most %zu bytes", (int)f->key.len,
                 f->key.ptr, cap - 1);
        return -1;
    }
    memcpy(dst, f->str.ptr, f->str.len);
    dst[f->str.len] = '\0';
    return 0;
}

struct parse_ctx {
    ib_kvpub_config_t *cfg;
    char *err;
    size_t errlen;
    int publisher_zmq;
};

static int key_is(const ib_json_field_t *f, const char *k)
{
    return f->key.len == strlen(k) && memcmp(f->key.ptr, k, f->key.len) == 0;
}

static int config_field(void *vctx, const ib_json_field_t *f)
{
    struct parse_ctx *pc = vctx;
    ib_kvpub_config_t *c = pc->cfg;
    if (key_is(f, "enable_kv_cache_events")) {
        if (f->type != IB_JSON_BOOL)
            goto bad_type;
        c->enabled = (int)f->num;
    } else if (key_is(f, "publisher")) {
        char pub[16];
        if (set_str(pub, sizeof(pub), f, pc->err, pc->errlen) != 0)
            return -1;
        if (strcmp(pub, "zmq") != 0 && strcmp(pub, "null") != 0) {
            snprintf(pc->err, pc->errlen, "--kv-events-config: publisher \"%s\": the mock has \"zmq\" and \"null\"", pub);
            return -1;
        }
        pc->publisher_zmq = strcmp(pub, "zmq") == 0;
    } else if (key_is(f, "endpoint")) {
        return set_str(c->endpoint, sizeof(c->endpoint), f, pc->err, pc->errlen);
    } else if (key_is(f, "replay_endpoint")) {
        return set_str(c->replay_endpoint, sizeof(c->replay_endpoint), f, pc->err, pc->errlen);
    } else if (key_is(f, "topic")) {
        return set_str(c->topic, sizeof(c->topic), f, pc->err, pc->errlen);
    } else if (key_is(f, "buffer_steps") || key_is(f, "hwm") || key_is(f, "max_queue_size")) {
        if (f->type != IB_JSON_NUMBER || !f->int_ok || f->num < 1 || f->num > 10000000)
            goto bad_type;
        if (key_is(f, "buffer_steps"))
            c->buffer_steps = (uint32_t)f->num;
        else if (key_is(f, "hwm"))
            c->hwm = (int)f->num;
    } else {
        snprintf(pc->err, pc->errlen, "--kv-events-config: unknown key \"%.*s\"", (int)f->key.len, f->key.ptr);
        return -1;
    }
    return 0;
bad_type:
    snprintf(pc->err, pc->errlen, "--kv-events-config: \"%.*s\" has the wrong type or range", (int)f->key.len,
             f->key.ptr);
    return -1;
}

void ib_kvpub_config_defaults(ib_kvpub_config_t *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->endpoint, sizeof(c->endpoint), "tcp://*:5557");
    c->buffer_steps = 10000;
    c->hwm = 100000;
    c->encoding = IB_KVENC_ARRAY;
    c->algo = IB_KVH_SHA256;
    c->int_hashes = 1;
}

int ib_kvpub_config_parse(ib_kvpub_config_t *c, const char *json, char *err, size_t errlen)
{
    ib_json_parser_t *p = ib_json_parser_new(1 << 16);
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    struct parse_ctx pc = {c, err, errlen, 0};
    err[0] = '\0';
    size_t len = strlen(json);
    int rc = ib_json_object_fields(p, json, len, len, config_field, &pc);
    ib_json_parser_free(p);
    if (rc != 0) {
        if (err[0] == '\0')
            snprintf(err, errlen, "--kv-events-config: not a JSON object");
        return -1;
    }
    /* vLLM 0.11 makes a null publisher unless "publisher" says zmq */
    c->enabled = c->enabled && pc.publisher_zmq;
    return 0;
}

int ib_kvpub_algo_parse(const char *name, ib_kv_hash_algo_t *out)
{
    static const char *const names[] = {"sha256", "sha256_cbor", "xxhash", "xxhash_cbor"};
    for (int i = 0; i < 4; i++)
        if (strcmp(name, names[i]) == 0) {
            *out = (ib_kv_hash_algo_t)i;
            return 0;
        }
    return -1;
}

const char *ib_kvpub_algo_name(ib_kv_hash_algo_t a)
{
    static const char *const names[] = {"sha256", "sha256_cbor", "xxhash", "xxhash_cbor"};
    return (unsigned)a < 4 ? names[a] : "?";
}

/* ---- vLLM's block hash ---- */

static int is_cbor(const ib_kvpub_t *p) { return p->cfg.algo == IB_KVH_SHA256_CBOR || p->cfg.algo == IB_KVH_XXHASH_CBOR; }

static void digest(const ib_kvpub_t *p, const void *data, size_t len, uint8_t *out)
{
    if (p->cfg.algo == IB_KVH_SHA256 || p->cfg.algo == IB_KVH_SHA256_CBOR) {
        SHA256(data, len, out);
    } else {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
        memcpy(out, c.digest, 16);
    }
}

static int put_u8(ib_buf_t *b, uint8_t v) { return ib_buf_try_append(b, &v, 1); }

static int put_le(ib_buf_t *b, uint64_t v, int n)
{
    uint8_t x[8];
    for (int i = 0; i < n; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    return ib_buf_try_append(b, x, (size_t)n);
}

static int put_be(ib_buf_t *b, uint64_t v, int n)
{
    uint8_t x[8];
    for (int i = 0; i < n; i++)
        x[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    return ib_buf_try_append(b, x, (size_t)n);
}

/* cbor2.dumps(x, canonical=True) heads: major type <mt>, argument <v> in the shortest form */
static int cbor_head(ib_buf_t *b, uint8_t mt, uint64_t v)
{
    if (v < 24)
        return put_u8(b, (uint8_t)(mt << 5 | v));
    if (v < 0x100)
        return put_u8(b, (uint8_t)(mt << 5 | 24)) || put_u8(b, (uint8_t)v);
    if (v < 0x10000)
        return put_u8(b, (uint8_t)(mt << 5 | 25)) || put_be(b, v, 2);
    if (v < 0x100000000ull)
        return put_u8(b, (uint8_t)(mt << 5 | 26)) || put_be(b, v, 4);
    return put_u8(b, (uint8_t)(mt << 5 | 27)) || put_be(b, v, 8);
}

/* pickle.dumps(x, protocol=5) of one int, as CPython's save_long writes it */
static int pickle_int(ib_buf_t *b, uint32_t v)
{
    if (v < 0x100)
        return put_u8(b, 'K') || put_u8(b, (uint8_t)v);
    if (v < 0x10000)
        return put_u8(b, 'M') || put_le(b, v, 2);
    if (v < 0x80000000u)
        return put_u8(b, 'J') || put_le(b, v, 4);
    return put_u8(b, 0x8a) || put_u8(b, 5) || put_le(b, v, 5); /* LONG1: 5 bytes, sign byte 0 */
}

/* Wraps the pickle body b[9..] (after PROTO and FRAME's 9 bytes) in its frame. */
static void pickle_frame(ib_buf_t *b)
{
    uint64_t n = b->len - 11; /* what follows PROTO (2 bytes) and FRAME (1 + 8), STOP included */
    for (int i = 0; i < 8; i++)
        ((uint8_t *)b->ptr)[3 + i] = (uint8_t)(n >> (8 * i));
}

/* The bytes hash_fn hashes for (parent, tuple(tokens), None). */
static int serialize_block(ib_kvpub_t *p, const uint8_t *parent, const uint32_t *tok, size_t n)
{
    ib_buf_t *b = &p->ser;
    ib_buf_reset(b);
    int rc = 0;
    if (is_cbor(p)) {
        rc |= put_u8(b, 0x83);
        rc |= cbor_head(b, 2, p->digest_len) || ib_buf_try_append(b, parent, p->digest_len);
        rc |= cbor_head(b, 4, n);
        for (size_t i = 0; i < n; i++)
            rc |= cbor_head(b, 0, tok[i]);
        rc |= put_u8(b, 0xf6);
        return rc;
    }
    static const uint8_t head[11] = {0x80, 5, 0x95};
    rc |= ib_buf_try_append(b, head, sizeof(head));
    rc |= put_u8(b, 'C') || put_u8(b, (uint8_t)p->digest_len) || ib_buf_try_append(b, parent, p->digest_len);
    rc |= put_u8(b, 0x94); /* MEMOIZE */
    if (n == 0) {
        rc |= put_u8(b, ')'); /* EMPTY_TUPLE, a singleton: not memoized */
    } else {
        if (n > 3)
            rc |= put_u8(b, '(');
        for (size_t i = 0; i < n; i++)
            rc |= pickle_int(b, tok[i]);
        rc |= put_u8(b, n == 1 ? 0x85 : n == 2 ? 0x86 : n == 3 ? 0x87 : 't');
        rc |= put_u8(b, 0x94);
    }
    rc |= put_u8(b, 'N') || put_u8(b, 0x87) || put_u8(b, 0x94) || put_u8(b, '.');
    if (rc == 0)
        pickle_frame(b);
    return rc;
}

/* hash_fn(PYTHONHASHSEED): the seed string, pickled or CBOR-encoded, then hashed. */
static int seed_hash(ib_kvpub_t *p, const char *seed)
{
    ib_buf_t *b = &p->ser;
    ib_buf_reset(b);
    size_t n = strlen(seed);
    int rc = 0;
    if (is_cbor(p)) {
        rc |= cbor_head(b, 3, n) || ib_buf_try_append(b, seed, n);
    } else {
        static const uint8_t head[11] = {0x80, 5, 0x95};
        rc |= ib_buf_try_append(b, head, sizeof(head));
        if (n < 256)
            rc |= put_u8(b, 0x8c) || put_u8(b, (uint8_t)n); /* SHORT_BINUNICODE */
        else
            rc |= put_u8(b, 'X') || put_le(b, n, 4);        /* BINUNICODE */
        rc |= ib_buf_try_append(b, seed, n) || put_u8(b, 0x94) || put_u8(b, '.');
        if (rc == 0)
            pickle_frame(b);
    }
    if (rc == 0)
        digest(p, b->ptr, b->len, p->none_hash);
    return rc;
}

/* ---- msgpack ---- */

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* A block hash as events carry it. */
static void pack_hash(ib_kvpub_t *p, msgpack_packer *pk, const uint8_t *d)
{
    if (p->cfg.int_hashes) {
        uint64_t v = 0;
        for (size_t i = p->digest_len - 8; i < p->digest_len; i++)
            v = v << 8 | d[i];
        msgpack_pack_uint64(pk, v);
    } else {
        msgpack_pack_bin(pk, p->digest_len);
        msgpack_pack_bin_body(pk, d, p->digest_len);
    }
}

/* The event's head: its tag first in an array of <nfields> + 1, or a map with "type". */
static void pack_event_head(ib_kvpub_t *p, const char *type, uint32_t nfields)
{
    if (p->cfg.encoding == IB_KVENC_ARRAY) {
        msgpack_pack_array(&p->pk, nfields + 1);
    } else {
        msgpack_pack_map(&p->pk, nfields + 1);
        pack_str(&p->pk, "type");
    }
    pack_str(&p->pk, type);
    p->nevents++;
}

static void pack_key(ib_kvpub_t *p, const char *key)
{
    if (p->cfg.encoding == IB_KVENC_MAP)
        pack_str(&p->pk, key);
}

/* ---- the cache's listener ---- */

static void on_removed(void *ctx, uint32_t entry)
{
    ib_kvpub_t *p = ctx;
    pack_event_head(p, "BlockRemoved", 2);
    pack_key(p, "block_hashes");
    msgpack_pack_array(&p->pk, 1);
    pack_hash(p, &p->pk, p->ext[entry]);
    pack_key(p, "medium");
    pack_str(&p->pk, "GPU");
}

static void on_cleared(void *ctx)
{
    ib_kvpub_t *p = ctx;
    pack_event_head(p, "AllBlocksCleared", 0);
}

static void on_stored(void *ctx, void *tag, size_t pos, uint32_t entry)
{
    ib_kvpub_t *p = ctx;
    (void)tag;
    if (p->nstored == p->stored_cap) {
        size_t cap = p->stored_cap ? p->stored_cap * 2 : 64;
        stored_pos_t *n = realloc(p->stored, cap * sizeof(*n));
        if (n == NULL)
            return; /* the block goes unannounced, as under a full vLLM queue */
        p->stored = n;
        p->stored_cap = cap;
    }
    p->stored[p->nstored++] = (stored_pos_t){pos, entry};
}

/* One BlockStored for the new blocks [a, b] of the prompt (ascending), after they have
 * their vLLM hashes. */
static void pack_stored(ib_kvpub_t *p, const uint8_t *parent, const uint32_t *tokens, size_t a, size_t b,
                        const stored_pos_t *items)
{
    int map = p->cfg.encoding == IB_KVENC_MAP;
    pack_event_head(p, "BlockStored", map ? 7 : 6);
    pack_key(p, "block_hashes");
    msgpack_pack_array(&p->pk, (uint32_t)(b - a + 1));
    for (size_t i = 0; i <= b - a; i++)
        pack_hash(p, &p->pk, p->ext[items[i].entry]);
    pack_key(p, "parent_block_hash");
    if (parent != NULL)
        pack_hash(p, &p->pk, parent);
    else
        msgpack_pack_nil(&p->pk);
    pack_key(p, "token_ids");
    size_t B = p->block_tokens, ntok = (b - a + 1) * B;
    msgpack_pack_array(&p->pk, (uint32_t)ntok);
    for (size_t i = 0; i < ntok; i++)
        msgpack_pack_uint32(&p->pk, tokens[a * B + i]);
    pack_key(p, "block_size");
    msgpack_pack_uint32(&p->pk, p->block_tokens);
    pack_key(p, "lora_id");
    msgpack_pack_nil(&p->pk);
    pack_key(p, "medium");
    pack_str(&p->pk, "GPU");
    if (map) { /* the map form came with vLLM releases that also send lora_name */
        pack_str(&p->pk, "lora_name");
        msgpack_pack_nil(&p->pk);
    }
}

static void on_inserted(void *ctx, void *tag, const uint64_t *h, size_t n)
{
    ib_kvpub_t *p = ctx;
    const ib_seq_t *seq = tag;
    (void)n;
    size_t k = p->nstored;
    p->nstored = 0;
    if (k == 0 || seq == NULL || seq->token_ids == NULL)
        return;
    /* stored tail-first: put them in prompt order */
    for (size_t i = 0; i < k / 2; i++) {
        stored_pos_t t = p->stored[i];
        p->stored[i] = p->stored[k - 1 - i];
        p->stored[k - 1 - i] = t;
    }
    for (size_t i = 0; i < k;) {
        size_t j = i;
        while (j + 1 < k && p->stored[j + 1].pos == p->stored[j].pos + 1)
            j++;
        size_t a = p->stored[i].pos, b = p->stored[j].pos;
        const uint8_t *parent = NULL;
        if (a > 0) {
            uint32_t e = ib_pcache_entry_of(p->cache, h[a - 1]);
            parent = e != IB_PCACHE_NONE ? p->ext[e] : NULL;
        }
        const uint8_t *prev = parent != NULL ? parent : p->none_hash;
        for (size_t q = i; q <= j; q++) {
            uint8_t *out = p->ext[p->stored[q].entry];
            if (serialize_block(p, prev, seq->token_ids + p->stored[q].pos * p->block_tokens, p->block_tokens) != 0)
                memset(out, 0, DIGEST_MAX);
            else
                digest(p, p->ser.ptr, p->ser.len, out);
            prev = out;
        }
        pack_stored(p, parent, seq->token_ids, a, b, p->stored + i);
        i = j + 1;
    }
}

/* ---- publishing ---- */

static int bind_rule(const char *ep)
{
    return strchr(ep, '*') != NULL || strstr(ep, "::") != NULL || strncmp(ep, "ipc://", 6) == 0 ||
           strncmp(ep, "inproc://", 9) == 0;
}

static void keep(ib_kvpub_t *p, uint64_t seq, const void *payload, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return;
    memcpy(copy, payload, len);
    pthread_mutex_lock(&p->lock);
    kept_batch_t *k = &p->kept[p->nkept % p->cfg.buffer_steps];
    free(k->payload);
    *k = (kept_batch_t){seq, copy, len};
    p->nkept++;
    pthread_mutex_unlock(&p->lock);
}

void ib_kvpub_flush(ib_kvpub_t *p)
{
    if (p->nevents == 0)
        return;
    msgpack_sbuffer_clear(&p->batch);
    msgpack_packer bp;
    msgpack_packer_init(&bp, &p->batch, msgpack_sbuffer_write);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    msgpack_pack_array(&bp, 3);
    msgpack_pack_double(&bp, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
    msgpack_pack_array(&bp, p->nevents);
    msgpack_sbuffer_write(&p->batch, p->events.data, p->events.size);
    msgpack_pack_int(&bp, 0); /* data_parallel_rank: the mock is one rank */
    uint64_t seq = p->next_seq++;
    uint8_t seqbe[8];
    for (int i = 0; i < 8; i++)
        seqbe[i] = (uint8_t)(seq >> (56 - 8 * i));
    int drop = 0;
    for (uint32_t i = 0; i < p->cfg.ndrop; i++)
        drop |= p->cfg.drop_seq[i] == seq;
    /* PUB never blocks: past the HWM a subscriber misses batches, and sees the gap */
    if (!drop) {
        zmq_send(p->pub, p->cfg.topic, strlen(p->cfg.topic), ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_send(p->pub, seqbe, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        zmq_send(p->pub, p->batch.data, p->batch.size, ZMQ_DONTWAIT);
    }
    if (p->router != NULL)
        keep(p, seq, p->batch.data, p->batch.size);
    p->published_batches++;
    p->published_events += p->nevents;
    msgpack_sbuffer_clear(&p->events);
    p->nevents = 0;
}

static void *replay_main(void *arg)
{
    ib_kvpub_t *p = arg;
    while (!atomic_load_explicit(&p->stop, memory_order_relaxed)) {
        zmq_pollitem_t it = {p->router, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 100) <= 0)
            continue;
        zmq_msg_t f[4];
        int nf = 0, more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, p->router, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (nf < 4)
                f[nf++] = m;
            else
                zmq_msg_close(&m);
        }
        /* [identity, "", start]: anything else is ignored, as vLLM does */
        if (nf == 3 && zmq_msg_size(&f[1]) == 0 && zmq_msg_size(&f[2]) == 8) {
            const uint8_t *s = zmq_msg_data(&f[2]);
            uint64_t start = 0;
            for (int i = 0; i < 8; i++)
                start = start << 8 | s[i];
            const void *id = zmq_msg_data(&f[0]);
            size_t idlen = zmq_msg_size(&f[0]);
            pthread_mutex_lock(&p->lock);
            uint64_t first = p->nkept > p->cfg.buffer_steps ? p->nkept - p->cfg.buffer_steps : 0;
            for (uint64_t i = first; i < p->nkept; i++) {
                const kept_batch_t *k = &p->kept[i % p->cfg.buffer_steps];
                if (k->seq < start)
                    continue;
                uint8_t seqbe[8];
                for (int b = 0; b < 8; b++)
                    seqbe[b] = (uint8_t)(k->seq >> (56 - 8 * b));
                zmq_send(p->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT);
                zmq_send(p->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
                zmq_send(p->router, seqbe, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT);
                zmq_send(p->router, k->payload, k->len, ZMQ_DONTWAIT);
            }
            pthread_mutex_unlock(&p->lock);
            static const uint8_t end[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
            zmq_send(p->router, id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT);
            zmq_send(p->router, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
            zmq_send(p->router, end, 8, ZMQ_SNDMORE | ZMQ_DONTWAIT);
            zmq_send(p->router, "", 0, ZMQ_DONTWAIT);
        }
        for (int i = 0; i < nf; i++)
            zmq_msg_close(&f[i]);
    }
    return NULL;
}

ib_kvpub_t *ib_kvpub_create(const ib_kvpub_config_t *cfg, ib_prefix_cache_t *cache, uint32_t block_tokens, char *err,
                            size_t errlen)
{
    ib_kvpub_t *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->cfg = *cfg;
    p->cache = cache;
    p->block_tokens = block_tokens;
    p->digest_len = cfg->algo == IB_KVH_SHA256 || cfg->algo == IB_KVH_SHA256_CBOR ? 32 : 16;
    pthread_mutex_init(&p->lock, NULL);
    msgpack_sbuffer_init(&p->events);
    msgpack_sbuffer_init(&p->batch);
    msgpack_packer_init(&p->pk, &p->events, msgpack_sbuffer_write);
    p->ext = calloc(cache->capacity, sizeof(*p->ext));
    p->kept = calloc(cfg->buffer_steps, sizeof(*p->kept));
    if (p->ext == NULL || p->kept == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (cfg->have_seed) {
        if (seed_hash(p, cfg->seed) != 0) {
            snprintf(err, errlen, "out of memory");
            goto fail;
        }
    } else if (RAND_bytes(p->none_hash, DIGEST_MAX) != 1) {
        snprintf(err, errlen, "no random bytes for NONE_HASH");
        goto fail;
    }
    p->zctx = zmq_ctx_new();
    p->pub = p->zctx ? zmq_socket(p->zctx, ZMQ_PUB) : NULL;
    if (p->pub == NULL) {
        snprintf(err, errlen, "zmq: %s", zmq_strerror(errno));
        goto fail;
    }
    int linger = 0;
    zmq_setsockopt(p->pub, ZMQ_SNDHWM, &cfg->hwm, sizeof(cfg->hwm));
    zmq_setsockopt(p->pub, ZMQ_LINGER, &linger, sizeof(linger));
    if ((bind_rule(cfg->endpoint) ? zmq_bind(p->pub, cfg->endpoint) : zmq_connect(p->pub, cfg->endpoint)) != 0) {
        snprintf(err, errlen, "events endpoint %s: %s", cfg->endpoint, zmq_strerror(errno));
        goto fail;
    }
    if (cfg->replay_endpoint[0] != '\0') {
        p->router = zmq_socket(p->zctx, ZMQ_ROUTER);
        if (p->router == NULL || zmq_setsockopt(p->router, ZMQ_LINGER, &linger, sizeof(linger)) != 0 ||
            zmq_bind(p->router, cfg->replay_endpoint) != 0) {
            snprintf(err, errlen, "replay endpoint %s: %s", cfg->replay_endpoint, zmq_strerror(errno));
            goto fail;
        }
        if (pthread_create(&p->replay_thread, NULL, replay_main, p) != 0) {
            snprintf(err, errlen, "cannot start the replay thread");
            goto fail;
        }
        p->replay_running = 1;
    }
    cache->listener = (ib_pcache_listener_t){on_stored, on_inserted, on_removed, on_cleared, p};
    return p;
fail:
    ib_kvpub_destroy(p);
    return NULL;
}

void ib_kvpub_destroy(ib_kvpub_t *p)
{
    if (p == NULL)
        return;
    if (p->cache != NULL && p->cache->listener.ctx == p)
        memset(&p->cache->listener, 0, sizeof(p->cache->listener));
    if (p->replay_running) {
        atomic_store(&p->stop, 1);
        pthread_join(p->replay_thread, NULL);
    }
    if (p->router != NULL)
        zmq_close(p->router);
    if (p->pub != NULL)
        zmq_close(p->pub);
    if (p->zctx != NULL)
        zmq_ctx_term(p->zctx);
    if (p->kept != NULL)
        for (uint32_t i = 0; i < p->cfg.buffer_steps; i++)
            free(p->kept[i].payload);
    free(p->kept);
    free(p->ext);
    free(p->stored);
    ib_buf_free(&p->ser);
    msgpack_sbuffer_destroy(&p->events);
    msgpack_sbuffer_destroy(&p->batch);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ---- the debug page: what the cache holds now ---- */

int ib_kvpub_render_blocks(const ib_kvpub_t *p, ib_buf_t *b)
{
    const ib_prefix_cache_t *c = p->cache;
    int rc = ib_buf_try_printf(b, "{\"block_size\":%u,\"hash_algo\":\"%s\",\"int_block_hashes\":%s,"
                                  "\"published_batches\":%llu,\"published_events\":%llu,\"blocks\":[",
                               p->block_tokens, ib_kvpub_algo_name(p->cfg.algo), p->cfg.int_hashes ? "true" : "false",
                               (unsigned long long)p->published_batches, (unsigned long long)p->published_events);
    int first = 1;
    for (uint32_t s = 0; s <= c->slot_mask && rc == 0; s++) {
        if (c->slots[s] == 0)
            continue;
        uint32_t e = c->slots[s] - 1;
        const uint8_t *d = p->ext[e];
        rc = ib_buf_try_printf(b, "%s{\"prefix_key\":\"%016llx\",\"block_hash\":", first ? "" : ",",
                               (unsigned long long)c->entries[e].hash);
        if (rc == 0 && p->cfg.int_hashes) {
            uint64_t v = 0;
            for (size_t i = p->digest_len - 8; i < p->digest_len; i++)
                v = v << 8 | d[i];
            rc = ib_buf_try_printf(b, "%llu}", (unsigned long long)v);
        } else if (rc == 0) {
            rc = ib_buf_try_printf(b, "\"");
            for (size_t i = 0; i < p->digest_len && rc == 0; i++)
                rc = ib_buf_try_printf(b, "%02x", d[i]);
            if (rc == 0)
                rc = ib_buf_try_printf(b, "\"}");
        }
        first = 0;
    }
    return rc != 0 ? rc : ib_buf_try_printf(b, "]}");
}
