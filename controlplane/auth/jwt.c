/* JWT verification (include/ibrain/jwt.h). */
#include "ibrain/jwt.h"

#include <errno.h>
#include <jwt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibrain/ondemand_c.h"

static int deny(ib_jwt_result_t *out, int status, const char *why)
{
    out->status = status;
    snprintf(out->error, sizeof(out->error), "%s", why);
    return status;
}

int ib_jwt_from_header(const char *value, size_t len, const char **token, size_t *token_len)
{
    if (len < 7 || strncasecmp(value, "Bearer ", 7) != 0)
        return -1;
    size_t i = 7;
    while (i < len && value[i] == ' ')
        i++;
    if (i == len)
        return -1;
    *token = value + i;
    *token_len = len - i;
    return 0;
}

/* 1 when the JSON array <json> holds the string <want> (the simdjson shim reads it). */
static int array_has(const char *json, const char *want)
{
    size_t len = strlen(json);
    ib_json_parser_t *p = ib_json_parser_new(len + 64);
    if (p == NULL)
        return 0;
    int found = 0;
    for (unsigned i = 0; i < 64 && !found; i++) {
        char ptr[16];
        snprintf(ptr, sizeof(ptr), "/%u", i);
        ib_span_t s;
        int rc = ib_json_pointer_string(p, json, len, ptr, &s);
        if (rc == 1) /* past the end (or not an array) */
            break;
        found = rc == 0 && s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
    }
    ib_json_parser_free(p);
    return found;
}

/* "aud" holds <want>: a string equal to it, or an array with it. */
static int audience_ok(jwt_t *j, const char *want)
{
    const char *s = jwt_get_grant(j, "aud");
    if (s != NULL)
        return strcmp(s, want) == 0;
    char *json = jwt_get_grants_json(j, "aud");
    if (json == NULL)
        return 0;
    int ok = array_has(json, want);
    free(json);
    return ok;
}

/* The token holds scope <want>: "scope" space separated, or "scp" an array. */
static int scope_ok(jwt_t *j, const char *want)
{
    size_t n = strlen(want);
    const char *s = jwt_get_grant(j, "scope");
    for (const char *p = s; p != NULL && *p;) {
        const char *e = strchr(p, ' ');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == n && strncmp(p, want, n) == 0)
            return 1;
        p = e ? e + 1 : NULL;
    }
    char *json = jwt_get_grants_json(j, "scp");
    if (json == NULL)
        return 0;
    int ok = array_has(json, want);
    free(json);
    return ok;
}

int ib_jwt_verify(const ib_jwt_config_t *cfg, const char *token, size_t len, const char *scope, int64_t now,
                  ib_jwt_result_t *out)
{
    memset(out, 0, sizeof(*out));
    if (token == NULL || len == 0 || len > 16384)
        return deny(out, 401, "a bearer token is required");
    char *tok = strndup(token, len);
    if (tok == NULL)
        return deny(out, 401, "out of memory");
    /* The algorithm first, from an unverified parse: it decides which key may be used. */
    jwt_t *j = NULL;
    int rc;
    if (jwt_decode(&j, tok, NULL, 0) != 0 || j == NULL) {
        free(tok);
        return deny(out, 401, "the bearer token is not a JWT");
    }
    /* libjwt does not set the algorithm of an unverified parse: read it from the header. */
    const char *alg_name = jwt_get_header(j, "alg");
    jwt_alg_t alg = alg_name != NULL ? jwt_str_alg(alg_name) : JWT_ALG_INVAL;
    jwt_free(j);
    j = NULL;
    const unsigned char *key = NULL;
    int key_len = 0;
    if (alg == JWT_ALG_HS256 && cfg->hs256_secret != NULL) {
        key = cfg->hs256_secret;
        key_len = (int)cfg->hs256_secret_len;
    } else if (alg == JWT_ALG_RS256 && cfg->rs256_public_pem != NULL) {
        key = (const unsigned char *)cfg->rs256_public_pem;
        key_len = (int)strlen(cfg->rs256_public_pem);
    } else {
        free(tok);
        char why[96];
        snprintf(why, sizeof(why), "token algorithm %s is not accepted", jwt_alg_str(alg) ? jwt_alg_str(alg) : "?");
        return deny(out, 401, why);
    }
    rc = jwt_decode(&j, tok, key, key_len);
    free(tok);
    if (rc != 0 || j == NULL || jwt_get_alg(j) != alg) {
        if (j != NULL)
            jwt_free(j);
        return deny(out, 401, "the token's signature does not verify");
    }
    errno = 0;
    long exp = jwt_get_grant_int(j, "exp");
    if (errno == ENOENT || exp <= 0) {
        jwt_free(j);
        return deny(out, 401, "the token has no expiry (exp)");
    }
    if ((int64_t)exp + cfg->leeway_s <= now) {
        jwt_free(j);
        return deny(out, 401, "the token has expired");
    }
    errno = 0;
    long nbf = jwt_get_grant_int(j, "nbf");
    if (errno != ENOENT && (int64_t)nbf > now + cfg->leeway_s) {
        jwt_free(j);
        return deny(out, 401, "the token is not valid yet (nbf)");
    }
    if (cfg->issuer != NULL) {
        const char *iss = jwt_get_grant(j, "iss");
        if (iss == NULL || strcmp(iss, cfg->issuer) != 0) {
            jwt_free(j);
            return deny(out, 401, "the token's issuer is not accepted");
        }
    }
    if (cfg->audience != NULL && !audience_ok(j, cfg->audience)) {
        jwt_free(j);
        return deny(out, 401, "the token is not meant for this audience");
    }
    const char *sub = jwt_get_grant(j, "sub");
    snprintf(out->subject, sizeof(out->subject), "%s", sub ? sub : "");
    if (scope != NULL && !scope_ok(j, scope)) {
        char why[160];
        snprintf(why, sizeof(why), "the token lacks the scope '%s'", scope);
        jwt_free(j);
        return deny(out, 403, why);
    }
    jwt_free(j);
    return 0;
}

char *ib_jwt_sign(const char *alg, const unsigned char *key, size_t key_len, const ib_jwt_claims_t *c, char *err,
                  size_t errlen)
{
    jwt_alg_t a = strcmp(alg, "HS256") == 0 ? JWT_ALG_HS256 : strcmp(alg, "RS256") == 0 ? JWT_ALG_RS256 : JWT_ALG_NONE;
    if (a == JWT_ALG_NONE) {
        snprintf(err, errlen, "algorithm '%s': HS256 or RS256", alg);
        return NULL;
    }
    jwt_t *j = NULL;
    char *out = NULL;
    if (jwt_new(&j) != 0) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int rc = 0;
    if (c->subject != NULL)
        rc |= jwt_add_grant(j, "sub", c->subject);
    if (c->scope != NULL)
        rc |= jwt_add_grant(j, "scope", c->scope);
    if (c->issuer != NULL)
        rc |= jwt_add_grant(j, "iss", c->issuer);
    if (c->audience != NULL)
        rc |= jwt_add_grant(j, "aud", c->audience);
    rc |= jwt_add_grant_int(j, "iat", (long)c->issued_at);
    rc |= jwt_add_grant_int(j, "exp", (long)c->expires_at);
    if (c->not_before != 0)
        rc |= jwt_add_grant_int(j, "nbf", (long)c->not_before);
    if (rc != 0 || jwt_set_alg(j, a, key, (int)key_len) != 0) {
        snprintf(err, errlen, "%s", rc != 0 ? "cannot add the claims" : "the key does not fit the algorithm");
    } else {
        char *s = jwt_encode_str(j);
        if (s == NULL)
            snprintf(err, errlen, "signing failed (a %s key?)", a == JWT_ALG_RS256 ? "PEM private" : "shared");
        else
            out = strdup(s);
        free(s); /* libjwt 1.10 allocates with malloc (no jwt_free_str) */
    }
    jwt_free(j);
    return out;
}
