/*
 * A blocking client of the cluster service (controlplane/proto/cluster.proto) on the gRPC
 * core C API: one channel and one completion queue, used by one thread. Requests and
 * responses are the protobuf-c messages' bytes; the orchestrator packs and unpacks them.
 */
#ifndef IBRAIN_CLUSTER_CLIENT_H
#define IBRAIN_CLUSTER_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

typedef struct ib_cluster_client ib_cluster_client_t;

typedef struct ib_rpc_result {
    int code;             /* grpc_status_code: 0 OK, 3 INVALID_ARGUMENT, 5 NOT_FOUND, 14 UNAVAILABLE ... */
    char message[256];    /* the status details */
    uint8_t *bytes;       /* the response message (malloc'd, free() it), NULL unless code == 0 */
    size_t len;
} ib_rpc_result_t;

/* ---- functions ---- */

/** A client of the cluster server at <target> (IPV4:PORT). NULL when out of memory. */
ib_cluster_client_t *ib_cluster_client_new(const char *target);
void ib_cluster_client_free(ib_cluster_client_t *c);

/** Calls /ibrain.v1.Cluster/<method> with <req> and waits up to <timeout_ms>. Returns out->code. */
int ib_cluster_call(ib_cluster_client_t *c, const char *method, const uint8_t *req, size_t len, int timeout_ms,
                    ib_rpc_result_t *out);

struct Ibrain__V1__WorkloadSpec; /* cluster.pb-c.h */
struct ib_workload_spec;

/** Points the message's fields at <s>'s (no copy: <s> must outlive <m>). */
void ib_spec_to_msg(const struct ib_workload_spec *s, struct Ibrain__V1__WorkloadSpec *m);

/** Copies the message's fields into <s> (strings cut to the field sizes). */
void ib_spec_from_msg(const struct Ibrain__V1__WorkloadSpec *m, struct ib_workload_spec *s);

/** The gRPC status code's name ("INVALID_ARGUMENT"). */
const char *ib_rpc_code_name(int code);

#ifdef __cplusplus
}
#endif
#endif
