/* JSON strings into a buffer (dataplane/util/json_write.c) and the buffer itself (buf.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "ibrain/buf.h"
#include "ibrain/json_write.h"

/* <b>'s contents equal <want> (of <n> bytes). */
static void expect_buf(const ib_buf_t *b, const char *want, size_t n)
{
    assert_int_equal(b->len, n);
    assert_memory_equal(b->ptr, want, n);
}

static void test_buf(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    ib_buf_append(&b, "ab", 2);
    ib_buf_append(&b, NULL, 0);
    ib_buf_printf(&b, "-%d-%s", 42, "x");
    expect_buf(&b, "ab-42-x", 7);
    char big[1000];
    memset(big, 'z', sizeof(big));
    assert_int_equal(ib_buf_try_append(&b, big, sizeof(big)), 0); /* grows past its first 256 */
    assert_int_equal(b.len, 1007);
    assert_true(b.cap >= b.len);
    ib_buf_reserve(&b, 5000);
    assert_true(b.cap >= b.len + 5000);
    /* A size no doubling reaches is refused by the try_ variants, the buffer unchanged. */
    size_t len = b.len, cap = b.cap;
    assert_int_equal(ib_buf_try_reserve(&b, (size_t)-1 / 2), -1);
    size_t huge = (size_t)-1 / 2;
    __asm__ volatile("" : "+r"(huge)); /* a size the compiler cannot see */
    assert_int_equal(ib_buf_try_append(&b, big, huge), -1);
    assert_int_equal(b.len, len);
    assert_int_equal(b.cap, cap);
    ib_buf_reset(&b);
    assert_int_equal(b.len, 0);
    ib_buf_free(&b);
    assert_null(b.ptr);
    assert_int_equal(b.cap, 0);
}

static void test_escapes(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    const char in[] = "say \"hi\" \\ back\n\r\t/";
    ib_json_escape(&b, in, sizeof(in) - 1);
    const char want[] = "say \\\"hi\\\" \\\\ back\\n\\r\\t/";
    expect_buf(&b, want, sizeof(want) - 1);
    ib_buf_free(&b);
}

static void test_control_chars(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    const char in[] = {0x00, 0x01, 0x08, 0x0c, 0x1f, 0x20, 0x7f};
    ib_json_escape(&b, in, sizeof(in));
    const char want[] = "\\u0000\\u0001\\u0008\\u000c\\u001f \x7f";
    expect_buf(&b, want, sizeof(want) - 1);
    ib_buf_free(&b);
}

static void test_utf8_passthrough(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    const char in[] = "caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 \xff"; /* é, 中文, 😀, a stray byte */
    ib_json_escape(&b, in, sizeof(in) - 1);
    expect_buf(&b, in, sizeof(in) - 1);
    ib_buf_reset(&b);
    ib_json_escape(&b, "", 0);
    assert_int_equal(b.len, 0);
    ib_buf_free(&b);
}

static void test_literals(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    ib_json_str(&b, "a\"b");
    ib_json_str(&b, NULL);
    ib_json_strn(&b, "x\ny", 2);
    ib_json_str_or_null(&b, NULL);
    ib_json_str_or_null(&b, "n");
    const char want[] = "\"a\\\"b\"\"\"\"x\\n\"null\"n\"";
    expect_buf(&b, want, sizeof(want) - 1);
    ib_buf_free(&b);
}

static void test_members(void **state)
{
    (void)state;
    ib_buf_t b = {0};
    ib_buf_append(&b, "{", 1);
    ib_json_member_str(&b, "id", "w\t1", 0);
    ib_json_member_u64(&b, "n", 18446744073709551615ull, 1);
    ib_json_member_str(&b, "none", NULL, 1);
    ib_buf_append(&b, "}", 1);
    const char want[] = "{\"id\":\"w\\t1\",\"n\":18446744073709551615,\"none\":\"\"}";
    expect_buf(&b, want, sizeof(want) - 1);
    ib_buf_free(&b);
}

/* A long string with escapes spread through it comes out whole (the copy runs between them). */
static void test_long_runs(void **state)
{
    (void)state;
    char in[5000];
    for (size_t i = 0; i < sizeof(in); i++)
        in[i] = i % 100 == 99 ? '"' : (char)('a' + i % 26);
    ib_buf_t b = {0};
    ib_json_escape(&b, in, sizeof(in));
    assert_int_equal(b.len, sizeof(in) + sizeof(in) / 100);
    size_t j = 0;
    for (size_t i = 0; i < sizeof(in); i++) {
        if (in[i] == '"')
            assert_int_equal(b.ptr[j++], '\\');
        assert_int_equal(b.ptr[j++], in[i]);
    }
    ib_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf),           cmocka_unit_test(test_escapes), cmocka_unit_test(test_control_chars),
        cmocka_unit_test(test_utf8_passthrough), cmocka_unit_test(test_literals), cmocka_unit_test(test_members),
        cmocka_unit_test(test_long_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
