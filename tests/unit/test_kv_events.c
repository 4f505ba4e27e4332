/* Engines' KV-cache events: the msgpack decoder (against bytes vLLM's own encoder, msgspec,
 * wrote), both encodings, digests, what it refuses and why; the engine-hash map. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <msgpack.h>

#include "ibrain/kv_events.h"

/* What a visitor saw, as text. */
struct seen {
    char log[512];
};

static void add(struct seen *s, const char *t)
{
    size_t n = strlen(s->log);
    snprintf(s->log + n, sizeof(s->log) - n, "%s", t);
}

static void v_stored(void *ctx, const ib_kve_stored_t *ev)
{
    char t[256];
    int n = snprintf(t, sizeof(t), "S[");
    for (size_t i = 0; i < ev->nhashes; i++)
        n += snprintf(t + n, sizeof(t) - (size_t)n, "%s%llx", i ? "," : "", (unsigned long long)ev->hashes[i]);
    n += snprintf(t + n, sizeof(t) - (size_t)n, "]p%s%llx b%u t", ev->has_parent ? "" : "-",
                  (unsigned long long)(ev->has_parent ? ev->parent : 0), ev->block_size);
    for (size_t i = 0; i < ev->nhashes * ev->block_size; i++)
        n += snprintf(t + n, sizeof(t) - (size_t)n, "%s%u", i ? "," : "", ev->tokens[i]);
    snprintf(t + n, sizeof(t) - (size_t)n, " ");
    add(ctx, t);
}

static void v_removed(void *ctx, const uint64_t *h, size_t n)
{
    char t[128];
    int k = snprintf(t, sizeof(t), "R[");
    for (size_t i = 0; i < n; i++)
        k += snprintf(t + k, sizeof(t) - (size_t)k, "%s%llx", i ? "," : "", (unsigned long long)h[i]);
    snprintf(t + k, sizeof(t) - (size_t)k, "] ");
    add(ctx, t);
}

static void v_cleared(void *ctx) { add(ctx, "C "); }

static int decode(ib_kve_decoder_t *d, const void *p, size_t n, struct seen *s, ib_kve_batch_t *b, ib_kve_error_t *e)
{
    s->log[0] = '\0';
    ib_kve_visitor_t v = {v_stored, v_removed, v_cleared, s};
    return ib_kve_decode(d, p, n, &v, b, e);
}

/* msgspec 0.23's encoding of vLLM 0.11's KVEventBatch(ts=1.5, events=[BlockStored(
 * block_hashes=[2**64-1], parent_block_hash=None, token_ids=[1,2], block_size=2,
 * lora_id=None, medium="GPU"), BlockRemoved([5], "GPU"), AllBlocksCleared()],
 * data_parallel_rank=0). */
static const uint8_t golden[] = {
    0x93, 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0, 0x93,
    0x97, 0xab, 'B', 'l', 'o', 'c', 'k', 'S', 't', 'o', 'r', 'e', 'd', 0x91, 0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xc0, 0x92, 0x01, 0x02, 0x02, 0xc0, 0xa3, 'G', 'P', 'U',
    0x93, 0xac, 'B', 'l', 'o', 'c', 'k', 'R', 'e', 'm', 'o', 'v', 'e', 'd', 0x91, 0x05, 0xa3, 'G', 'P', 'U',
    0x91, 0xb0, 'A', 'l', 'l', 'B', 'l', 'o', 'c', 'k', 's', 'C', 'l', 'e', 'a', 'r', 'e', 'd', 0x00};

static void test_vllm_bytes(void **state)
{
    (void)state;
    ib_kve_decoder_t d;
    ib_kve_decoder_init(&d);
    struct seen s;
    ib_kve_batch_t b;
    ib_kve_error_t e;
    assert_int_equal(decode(&d, golden, sizeof(golden), &s, &b, &e), 0);
    assert_string_equal(s.log, "S[ffffffffffffffff]p-0 b2 t1,2 R[5] C ");
    assert_true(b.ts == 1.5);
    assert_int_equal(b.events, 3);
    /* every cut is refused as msgpack, and so is a trailing byte */
    for (size_t n = 0; n < sizeof(golden); n++) {
        assert_int_equal(decode(&d, golden, n, &s, &b, &e), -1);
        assert_int_equal(e, IB_KVE_MSGPACK);
        assert_string_equal(s.log, "");
    }
    uint8_t longer[sizeof(golden) + 1];
    memcpy(longer, golden, sizeof(golden));
    longer[sizeof(golden)] = 0xc0;
    assert_int_equal(decode(&d, longer, sizeof(longer), &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_MSGPACK);
    ib_kve_decoder_free(&d);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* Maps with "type" (later vLLM), digests as bytes, a parent, and a map batch. */
static void test_map_encoding_and_digests(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "ts");
    msgpack_pack_double(&pk, 2.25);
    pack_str(&pk, "events");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_map(&pk, 8);
    pack_str(&pk, "type");
    pack_str(&pk, "BlockStored");
    pack_str(&pk, "block_hashes");
    msgpack_pack_array(&pk, 2);
    uint8_t digest[32];
    for (int i = 0; i < 32; i++)
        digest[i] = (uint8_t)i;
    msgpack_pack_bin(&pk, 32);
    msgpack_pack_bin_body(&pk, digest, 32); /* low 64 bits: 18191a1b1c1d1e1f */
    msgpack_pack_uint64(&pk, 7);
    pack_str(&pk, "parent_block_hash");
    msgpack_pack_uint64(&pk, 9);
    pack_str(&pk, "token_ids");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint32(&pk, 151644);
    msgpack_pack_uint32(&pk, 8);
    pack_str(&pk, "block_size");
    msgpack_pack_uint32(&pk, 1);
    pack_str(&pk, "lora_id");
    msgpack_pack_nil(&pk);
    pack_str(&pk, "medium");
    pack_str(&pk, "GPU");
    pack_str(&pk, "lora_name");
    msgpack_pack_nil(&pk);
    msgpack_pack_map(&pk, 3);
    pack_str(&pk, "type");
    pack_str(&pk, "BlockRemoved");
    pack_str(&pk, "block_hashes");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_uint64(&pk, 7);
    pack_str(&pk, "medium");
    msgpack_pack_nil(&pk);
    pack_str(&pk, "data_parallel_rank");
    msgpack_pack_nil(&pk);
    ib_kve_decoder_t d;
    ib_kve_decoder_init(&d);
    struct seen s;
    ib_kve_batch_t b;
    ib_kve_error_t e;
    assert_int_equal(decode(&d, sb.data, sb.size, &s, &b, &e), 0);
    assert_string_equal(s.log, "S[18191a1b1c1d1e1f,7]p9 b1 t151644,8 R[7] ");
    assert_true(b.ts == 2.25);
    msgpack_sbuffer_destroy(&sb);
    ib_kve_decoder_free(&d);
}

/* One batch [1.0, [event], 0] with <event> packed by <fn>; returns the decode result. */
static int one(ib_kve_decoder_t *d, void (*fn)(msgpack_packer *), struct seen *s, ib_kve_batch_t *b, ib_kve_error_t *e)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_array(&pk, 3);
    msgpack_pack_double(&pk, 1.0);
    msgpack_pack_array(&pk, 2);
    fn(&pk);
    msgpack_pack_array(&pk, 1); /* and an AllBlocksCleared after it, always delivered */
    pack_str(&pk, "AllBlocksCleared");
    msgpack_pack_int(&pk, 0);
    int rc = decode(d, sb.data, sb.size, s, b, e);
    msgpack_sbuffer_destroy(&sb);
    return rc;
}

static void stored_head(msgpack_packer *pk, uint32_t n)
{
    msgpack_pack_array(pk, n);
    pack_str(pk, "BlockStored");
}
static void ev_unknown(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 2);
    pack_str(pk, "BlockMoved");
    msgpack_pack_nil(pk);
}
static void ev_bad_tokens(msgpack_packer *pk) /* 2 hashes, block 2, 3 tokens */
{
    stored_head(pk, 7);
    msgpack_pack_array(pk, 2), msgpack_pack_uint64(pk, 1), msgpack_pack_uint64(pk, 2);
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 3), msgpack_pack_int(pk, 1), msgpack_pack_int(pk, 2), msgpack_pack_int(pk, 3);
    msgpack_pack_int(pk, 2), msgpack_pack_nil(pk), pack_str(pk, "GPU");
}
static void ev_lora(msgpack_packer *pk)
{
    stored_head(pk, 7);
    msgpack_pack_array(pk, 1), msgpack_pack_uint64(pk, 1);
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 1), msgpack_pack_int(pk, 1);
    msgpack_pack_int(pk, 1), msgpack_pack_int(pk, 3), pack_str(pk, "GPU");
}
static void ev_cpu(msgpack_packer *pk)
{
    msgpack_pack_array(pk, 3);
    pack_str(pk, "BlockRemoved");
    msgpack_pack_array(pk, 1), msgpack_pack_uint64(pk, 1);
    pack_str(pk, "CPU");
}
static void ev_negative_token(msgpack_packer *pk)
{
    stored_head(pk, 7);
    msgpack_pack_array(pk, 1), msgpack_pack_uint64(pk, 1);
    msgpack_pack_nil(pk);
    msgpack_pack_array(pk, 1), msgpack_pack_int(pk, -1);
    msgpack_pack_int(pk, 1), msgpack_pack_nil(pk), pack_str(pk, "GPU");
}
static void ev_short(msgpack_packer *pk) /* BlockStored without its token ids */
{
    stored_head(pk, 3);
    msgpack_pack_array(pk, 1), msgpack_pack_uint64(pk, 1);
    msgpack_pack_nil(pk);
}
static void ev_not_event(msgpack_packer *pk) { msgpack_pack_int(pk, 42); }

static void test_bad_events_are_skipped_and_counted(void **state)
{
    (void)state;
    ib_kve_decoder_t d;
    ib_kve_decoder_init(&d);
    struct seen s;
    ib_kve_batch_t b;
    ib_kve_error_t e;
    struct {
        void (*fn)(msgpack_packer *);
        ib_kve_error_t why;
    } cases[] = {{ev_unknown, IB_KVE_UNKNOWN_TYPE}, {ev_bad_tokens, IB_KVE_EVENT}, {ev_lora, IB_KVE_UNSUPPORTED},
                 {ev_cpu, IB_KVE_UNSUPPORTED},      {ev_negative_token, IB_KVE_EVENT}, {ev_short, IB_KVE_EVENT},
                 {ev_not_event, IB_KVE_EVENT}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(one(&d, cases[i].fn, &s, &b, &e), 0);
        assert_string_equal(s.log, "C ");
        assert_int_equal(b.events, 1);
        for (int k = 0; k < IB_KVE__COUNT; k++)
            assert_int_equal(b.errors[k], k == (int)cases[i].why ? 1 : 0);
    }
    ib_kve_decoder_free(&d);
}

static void test_refused_batches(void **state)
{
    (void)state;
    ib_kve_decoder_t d;
    ib_kve_decoder_init(&d);
    struct seen s;
    ib_kve_batch_t b;
    ib_kve_error_t e;
    /* an array claiming 2^32 - 1 elements in 5 bytes: refused before msgpack-c allocates */
    static const uint8_t huge[] = {0xdd, 0xff, 0xff, 0xff, 0xff};
    assert_int_equal(decode(&d, huge, sizeof(huge), &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_MSGPACK);
    static const uint8_t hugemap[] = {0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xdf, 0x7f, 0xff, 0xff, 0xff, 0xc0};
    assert_int_equal(decode(&d, hugemap, sizeof(hugemap), &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_MSGPACK);
    static const uint8_t never[] = {0xc1};
    assert_int_equal(decode(&d, never, 1, &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_MSGPACK);
    /* valid msgpack, not an EventBatch */
    static const uint8_t num[] = {0x05}, noevents[] = {0x92, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0x05},
                         strts[] = {0x92, 0xa1, 'x', 0x90};
    assert_int_equal(decode(&d, num, sizeof(num), &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_SHAPE);
    assert_int_equal(decode(&d, noevents, sizeof(noevents), &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_SHAPE);
    assert_int_equal(decode(&d, strts, sizeof(strts), &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_SHAPE);
    /* more events than a batch may have */
    size_t n = 1 + 9 + 5 + IB_KVE_MAX_EVENTS + 1;
    uint8_t *big = calloc(1, n);
    big[0] = 0x92;
    big[1] = 0xcb;
    big[10] = 0xdd;
    uint32_t cnt = IB_KVE_MAX_EVENTS + 1;
    big[11] = (uint8_t)(cnt >> 24), big[12] = (uint8_t)(cnt >> 16), big[13] = (uint8_t)(cnt >> 8), big[14] = (uint8_t)cnt;
    memset(big + 15, 0xc0, cnt);
    assert_int_equal(decode(&d, big, n, &s, &b, &e), -1);
    assert_int_equal(e, IB_KVE_LIMIT);
    free(big);
    assert_string_equal(ib_kve_error_name(IB_KVE_UNKNOWN_TYPE), "unknown_type");
    ib_kve_decoder_free(&d);
}

static void test_kvmap(void **state)
{
    (void)state;
    ib_kvmap_t m;
    assert_int_equal(ib_kvmap_init(&m, 100), 0);
    uint64_t k;
    for (uint64_t i = 0; i < 100; i++)
        assert_int_equal(ib_kvmap_put(&m, i * 0x9e3779b97f4a7c15ull, i + 1000), 0); /* includes hash 0 */
    assert_int_equal(ib_kvmap_put(&m, 12345, 1), -1);                              /* full */
    assert_int_equal(ib_kvmap_put(&m, 0, 77), 0);                                  /* an update fits */
    assert_int_equal(ib_kvmap_get(&m, 0, &k), 1);
    assert_int_equal(k, 77);
    for (uint64_t i = 1; i < 100; i += 2) {
        assert_int_equal(ib_kvmap_del(&m, i * 0x9e3779b97f4a7c15ull, &k), 1);
        assert_int_equal(k, i + 1000);
    }
    assert_int_equal(ib_kvmap_del(&m, 0x9e3779b97f4a7c15ull, &k), 0);
    for (uint64_t i = 2; i < 100; i += 2) {
        assert_int_equal(ib_kvmap_get(&m, i * 0x9e3779b97f4a7c15ull, &k), 1);
        assert_int_equal(k, i + 1000);
    }
    assert_int_equal(m.used, 50);
    ib_kvmap_clear(&m);
    assert_int_equal(ib_kvmap_get(&m, 0, &k), 0);
    assert_int_equal(m.used, 0);
    ib_kvmap_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vllm_bytes),
        cmocka_unit_test(test_map_encoding_and_digests),
        cmocka_unit_test(test_bad_events_are_skipped_and_counted),
        cmocka_unit_test(test_refused_batches),
        cmocka_unit_test(test_kvmap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
