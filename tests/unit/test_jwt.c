/* JWT verification: HS256 and RS256 accepted; expired, not yet valid, wrong issuer or
 * audience, bad signature, alg none, algorithm confusion and garbage refused with 401; a
 * missing scope with 403. Tokens are made here with libjwt, RSA keys with OpenSSL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "ibrain/jwt.h"

#define NOW 1800000000L

static const unsigned char secret[] = "a-shared-secret-of-32-bytes-long";
static char *priv_pem, *pub_pem;

static char *bio_string(BIO *b)
{
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)n + 1);
    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    return s;
}

static int setup(void **state)
{
    (void)state;
    EVP_PKEY *k = EVP_RSA_gen(2048);
    BIO *a = BIO_new(BIO_s_mem()), *b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(a, k, NULL, NULL, 0, NULL, NULL);
    PEM_write_bio_PUBKEY(b, k);
    priv_pem = bio_string(a);
    pub_pem = bio_string(b);
    BIO_free(a);
    BIO_free(b);
    EVP_PKEY_free(k);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    free(priv_pem);
    free(pub_pem);
    return 0;
}

/* A token: alg, key, and claims as "name=value" strings (ints when value is a number). */
static char *make(jwt_alg_t alg, const unsigned char *key, int key_len, const char *claims[])
{
    jwt_t *j;
    assert_int_equal(jwt_new(&j), 0);
    for (int i = 0; claims[i] != NULL; i++) {
        char name[64];
        const char *eq = strchr(claims[i], '=');
        snprintf(name, sizeof(name), "%.*s", (int)(eq - claims[i]), claims[i]);
        char *end;
        long v = strtol(eq + 1, &end, 10);
        if (eq[1] == '[') {
            char obj[512];
            snprintf(obj, sizeof(obj), "{\"%s\": %s}", name, eq + 1);
            assert_int_equal(jwt_add_grants_json(j, obj), 0);
        }
        else if (*end == '\0' && end != eq + 1)
            jwt_add_grant_int(j, name, v);
        else
            jwt_add_grant(j, name, eq + 1);
    }
    assert_int_equal(jwt_set_alg(j, alg, key, key_len), 0);
    char *s = jwt_encode_str(j);
    jwt_free(j);
    assert_non_null(s);
    return s;
}

static ib_jwt_config_t cfg(void)
{
    return (ib_jwt_config_t){.hs256_secret = secret, .hs256_secret_len = sizeof(secret) - 1,
                             .rs256_public_pem = pub_pem, .issuer = "ibrain-tests", .audience = "ib-orchestrator",
                             .leeway_s = 30};
}

static int check(const ib_jwt_config_t *c, const char *tok, const char *scope, char *why, size_t cap)
{
    ib_jwt_result_t r;
    int st = ib_jwt_verify(c, tok, strlen(tok), scope, NOW, &r);
    snprintf(why, cap, "%s", r.error);
    return st;
}

#define GOOD "iss=ibrain-tests", "aud=ib-orchestrator", "sub=alice", "exp=1800000600", "scope=workloads:read workloads:write"

static void test_accepts(void **state)
{
    (void)state;
    ib_jwt_config_t c = cfg();
    char why[160];
    const char *claims[] = {GOOD, NULL};
    char *hs = make(JWT_ALG_HS256, secret, sizeof(secret) - 1, claims);
    char *rs = make(JWT_ALG_RS256, (const unsigned char *)priv_pem, (int)strlen(priv_pem), claims);
    assert_int_equal(check(&c, hs, "workloads:write", why, sizeof(why)), 0);
    assert_int_equal(check(&c, rs, "workloads:read", why, sizeof(why)), 0);
    ib_jwt_result_t r;
    ib_jwt_verify(&c, rs, strlen(rs), NULL, NOW, &r);
    assert_string_equal(r.subject, "alice");
    /* aud as an array, scope as "scp" array */
    const char *arr[] = {"iss=ibrain-tests", "exp=1800000600", "aud=[\"other\",\"ib-orchestrator\"]",
                         "scp=[\"workloads:read\"]", NULL};
    char *a = make(JWT_ALG_HS256, secret, sizeof(secret) - 1, arr);
    assert_int_equal(check(&c, a, "workloads:read", why, sizeof(why)), 0);
    assert_int_equal(check(&c, a, "workloads:write", why, sizeof(why)), 403);
    free(hs);
    free(rs);
    free(a);
}

static void expect(const char *tok, int status, const char *scope, const char *words)
{
    ib_jwt_config_t c = cfg();
    char why[160];
    int st = check(&c, tok, scope, why, sizeof(why));
    if (st != status || strstr(why, words) == NULL)
        fail_msg("got %d '%s', want %d '%s' for %.60s", st, why, status, words, tok);
}

static void test_refuses(void **state)
{
    (void)state;
    const unsigned char *k = secret;
    int kl = sizeof(secret) - 1;
    const char *expired[] = {"iss=ibrain-tests", "aud=ib-orchestrator", "exp=1799999000", NULL};
    const char *early[] = {"iss=ibrain-tests", "aud=ib-orchestrator", "exp=1800000600", "nbf=1800000500", NULL};
    const char *noexp[] = {"iss=ibrain-tests", "aud=ib-orchestrator", NULL};
    const char *iss[] = {"iss=someone-else", "aud=ib-orchestrator", "exp=1800000600", NULL};
    const char *aud[] = {"iss=ibrain-tests", "aud=another-service", "exp=1800000600", NULL};
    const char *good[] = {GOOD, NULL};
    char *t;
    expect(t = make(JWT_ALG_HS256, k, kl, expired), 401, NULL, "expired"), free(t);
    expect(t = make(JWT_ALG_HS256, k, kl, early), 401, NULL, "not valid yet"), free(t);
    expect(t = make(JWT_ALG_HS256, k, kl, noexp), 401, NULL, "no expiry"), free(t);
    expect(t = make(JWT_ALG_HS256, k, kl, iss), 401, NULL, "issuer"), free(t);
    expect(t = make(JWT_ALG_HS256, k, kl, aud), 401, NULL, "audience"), free(t);
    /* wrong secret: bad signature */
    expect(t = make(JWT_ALG_HS256, (const unsigned char *)"another-secret-of-32-bytes-long!", 32, good), 401, NULL,
           "signature"),
        free(t);
    /* a tampered payload */
    t = make(JWT_ALG_HS256, k, kl, good);
    char *dot = strchr(t, '.');
    dot[3] = dot[3] == 'A' ? 'B' : 'A';
    expect(t, 401, NULL, "");
    free(t);
    /* alg none */
    t = make(JWT_ALG_NONE, NULL, 0, good);
    expect(t, 401, NULL, "not accepted");
    free(t);
    /* algorithm confusion: HS256 "signed" with the RSA public key, when only RS256 is configured */
    t = make(JWT_ALG_HS256, (const unsigned char *)pub_pem, (int)strlen(pub_pem), good);
    ib_jwt_config_t rs_only = cfg();
    rs_only.hs256_secret = NULL;
    char why[160];
    assert_int_equal(check(&rs_only, t, NULL, why, sizeof(why)), 401);
    free(t);
    /* missing scope: 403 */
    expect(t = make(JWT_ALG_HS256, k, kl, good), 403, "workloads:admin", "scope"), free(t);
    /* garbage */
    expect("not-a-jwt", 401, NULL, "not a JWT");
    expect("a.b.c", 401, NULL, "");
    ib_jwt_result_t r;
    assert_int_equal(ib_jwt_verify(&rs_only, "", 0, NULL, NOW, &r), 401);
}

static void test_header(void **state)
{
    (void)state;
    const char *tok;
    size_t n;
    assert_int_equal(ib_jwt_from_header("Bearer abc.def", 14, &tok, &n), 0);
    assert_int_equal(n, 7);
    assert_int_equal(ib_jwt_from_header("bearer  x", 9, &tok, &n), 0);
    assert_int_equal(ib_jwt_from_header("Basic abc", 9, &tok, &n), -1);
    assert_int_equal(ib_jwt_from_header("Bearer ", 7, &tok, &n), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_accepts), cmocka_unit_test(test_refuses),
                                       cmocka_unit_test(test_header)};
    return cmocka_run_group_tests(tests, setup, teardown);
}
