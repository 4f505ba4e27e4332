/* libFuzzer: the bearer-token check on arbitrary bytes (JWT parsing by libjwt, our claim
 * checks, the Authorization header split). Invariants: no crash or leak; the answer is
 * 0, 401 or 403, and garbage is never accepted. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const unsigned char secret[] = "fuzz-secret-fuzz-secret-fuzz-sec";
    ib_jwt_config_t cfg = {.hs256_secret = secret, .hs256_secret_len = sizeof(secret) - 1,
                           .issuer = "ibrain", .audience = "ib-orchestrator", .leeway_s = 30};
    const char *tok;
    size_t n;
    if (ib_jwt_from_header((const char *)data, size, &tok, &n) != 0) {
        tok = (const char *)data;
        n = size;
    }
    ib_jwt_result_t r;
    int st = ib_jwt_verify(&cfg, tok, n, size & 1 ? "workloads:write" : NULL, 1800000000, &r);
    CHECK(st == 0 || st == 401 || st == 403);
    CHECK(st == 0 || r.error[0] != '\0');
    /* The fuzzer cannot forge an HMAC: nothing it makes passes the signature check. */
    CHECK(st != 0);
    return 0;
}
