/*
 * JWT bearer authentication for the orchestrator's REST API (libjwt 1.10 underneath).
 *
 * A token is accepted when:
 *   - its "alg" is HS256 and a shared secret is configured, or RS256 and a public key is
 *     (anything else, "none" included, is refused before any key is used: no algorithm
 *     confusion between the secret and the public key);
 *   - its signature verifies with that key;
 *   - "exp" is present and not past, "nbf" (when present) not in the future, both with a
 *     leeway;
 *   - "iss" equals the configured issuer and "aud" (a string or an array) holds the
 *     configured audience, when those are configured.
 * Failures are 401. A valid token without the scope an operation needs ("scope", space
 * separated, or "scp" as an array) is 403.
 */
#ifndef IBRAIN_JWT_H
#define IBRAIN_JWT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef struct ib_jwt_config {
    const unsigned char *hs256_secret; /* NULL: HS256 not accepted */
    size_t hs256_secret_len;
    const char *rs256_public_pem;      /* NULL: RS256 not accepted */
    const char *issuer;                /* NULL: not checked */
    const char *audience;              /* NULL: not checked */
    uint32_t leeway_s;                 /* clock skew allowed on exp and nbf */
} ib_jwt_config_t;

typedef struct ib_jwt_result {
    int status;           /* 0 accepted, 401 unauthenticated, 403 missing scope */
    char error[160];      /* why, for the JSON error */
    char subject[128];    /* "sub" of an accepted token */
} ib_jwt_result_t;

/* ---- functions ---- */

/**
 * Checks <token> (the value after "Bearer ", <len> bytes) against <cfg> at <now> (Unix
 * seconds) and requires <scope> (NULL: none). Returns out->status.
 */
int ib_jwt_verify(const ib_jwt_config_t *cfg, const char *token, size_t len, const char *scope, int64_t now,
                  ib_jwt_result_t *out);

/** What ib_jwt_sign puts in a token. */
typedef struct ib_jwt_claims {
    const char *subject;   /* "sub" (NULL: none) */
    const char *scope;     /* "scope", space separated (NULL: none) */
    const char *issuer;    /* "iss" (NULL: none) */
    const char *audience;  /* "aud" (NULL: none) */
    int64_t issued_at;     /* "iat" */
    int64_t expires_at;    /* "exp" */
    int64_t not_before;    /* "nbf" (0: none) */
} ib_jwt_claims_t;

/**
 * Signs a token: HS256 with <key> a shared secret (<key_len> bytes), or RS256 with <key>
 * a PEM private key. Returns a malloc'd string (free() it), NULL on error (<err>).
 */
char *ib_jwt_sign(const char *alg, const unsigned char *key, size_t key_len, const ib_jwt_claims_t *c, char *err,
                  size_t errlen);

/** Extracts the token from an Authorization header value ("Bearer xyz"). 0, or -1. */
int ib_jwt_from_header(const char *value, size_t len, const char **token, size_t *token_len);

#ifdef __cplusplus
}
#endif
#endif
