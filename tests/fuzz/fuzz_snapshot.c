/* libFuzzer: the routing snapshot's two parsers, JSON (ib-snapshot's input) and protobuf
 * (what ibrain reads from Redis). Invariants: no crash or leak; whatever parses passes the
 * checks, encodes, and decodes back to the same snapshot. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/snapshot.h"

static void round_trip(const ib_snapshot_t *s)
{
    char err[256];
    CHECK(ib_snapshot_check(s, err, sizeof(err)) == 0);
    ib_buf_t enc = {0};
    CHECK(ib_snapshot_encode(s, &enc) == 0);
    ib_snapshot_t d;
    CHECK(ib_snapshot_decode(enc.ptr, enc.len, &d, err, sizeof(err)) == 0);
    CHECK(d.version == s->version && d.nworkloads == s->nworkloads && d.nreplicas == s->nreplicas);
    CHECK(d.nworkloads == 0 || memcmp(d.workloads, s->workloads, d.nworkloads * sizeof(*d.workloads)) == 0);
    CHECK(d.nreplicas == 0 || memcmp(d.replicas, s->replicas, d.nreplicas * sizeof(*d.replicas)) == 0);
    ib_buf_t js = {0};
    CHECK(ib_snapshot_to_json(&d, &js) == 0);
    ib_buf_free(&js);
    ib_buf_free(&enc);
    ib_snapshot_free(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    char err[256];
    ib_snapshot_t s;
    if (data[0] & 1) {
        if (ib_snapshot_from_json((const char *)data + 1, size - 1, &s, err, sizeof(err)) == 0) {
            round_trip(&s);
            ib_snapshot_free(&s);
        } else {
            CHECK(err[0] != '\0');
        }
    } else if (ib_snapshot_decode(data + 1, size - 1, &s, err, sizeof(err)) == 0) {
        round_trip(&s);
        ib_snapshot_free(&s);
    }
    return 0;
}
