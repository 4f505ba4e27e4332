/* The cluster service's blocking client (include/ibrain/cluster_client.h). */
#include "ibrain/cluster_client.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.pb-c.h"
#include "ibrain/cluster.h"

struct ib_cluster_client {
    grpc_channel *channel;
    grpc_completion_queue *cq;
};

ib_cluster_client_t *ib_cluster_client_new(const char *target)
{
    ib_cluster_client_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    grpc_init();
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    /* The cluster server is on the same host or network: reconnect within a second of a
     * restart instead of gRPC's default back-off (1 s growing to 120 s). */
    grpc_arg args[3];
    args[0].type = args[1].type = args[2].type = GRPC_ARG_INTEGER;
    args[0].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
    args[0].value.integer = 100;
    args[1].key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
    args[1].value.integer = 100;
    args[2].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
    args[2].value.integer = 1000;
    grpc_channel_args cargs = {3, args};
    c->channel = grpc_channel_create(target, creds, &cargs);
    grpc_channel_credentials_release(creds);
    c->cq = grpc_completion_queue_create_for_pluck(NULL);
    return c;
}

void ib_cluster_client_free(ib_cluster_client_t *c)
{
    if (c == NULL)
        return;
    grpc_completion_queue_shutdown(c->cq);
    while (grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(c->cq);
    grpc_channel_destroy(c->channel);
    free(c);
    grpc_shutdown();
}

int ib_cluster_call(ib_cluster_client_t *c, const char *method, const uint8_t *req, size_t len, int timeout_ms,
                    ib_rpc_result_t *out)
{
    memset(out, 0, sizeof(*out));
    char path[128];
    snprintf(path, sizeof(path), "/ibrain.v1.Cluster/%s", method);
    grpc_slice mslice = grpc_slice_from_copied_string(path);
    gpr_timespec deadline =
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
    grpc_call *call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, mslice, NULL,
                                               deadline, NULL);
    grpc_slice_unref(mslice);
    grpc_slice body = grpc_slice_from_copied_buffer((const char *)req, len);
    grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&body, 1);
    grpc_slice_unref(body);
    grpc_byte_buffer *recv = NULL;
    grpc_metadata_array initial, trailing;
    grpc_metadata_array_init(&initial);
    grpc_metadata_array_init(&trailing);
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    memset(ops, 0, sizeof(ops));
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    void *tag = (void *)call;
    if (grpc_call_start_batch(call, ops, 6, tag, NULL) != GRPC_CALL_OK) {
        out->code = GRPC_STATUS_INTERNAL;
        snprintf(out->message, sizeof(out->message), "cannot start the call");
    } else {
        grpc_completion_queue_pluck(c->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        out->code = (int)status;
        char *d = grpc_slice_to_c_string(details);
        snprintf(out->message, sizeof(out->message), "%s", d);
        gpr_free(d);
        if (status == GRPC_STATUS_OK && recv != NULL) {
            grpc_byte_buffer_reader rd;
            if (grpc_byte_buffer_reader_init(&rd, recv)) {
                grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
                out->len = GRPC_SLICE_LENGTH(all);
                out->bytes = malloc(out->len ? out->len : 1);
                if (out->bytes != NULL)
                    memcpy(out->bytes, GRPC_SLICE_START_PTR(all), out->len);
                grpc_slice_unref(all);
                grpc_byte_buffer_reader_destroy(&rd);
            }
            if (out->bytes == NULL) {
                out->code = GRPC_STATUS_RESOURCE_EXHAUSTED;
                snprintf(out->message, sizeof(out->message), "out of memory");
            }
        } else if (status == GRPC_STATUS_OK) {
            out->code = GRPC_STATUS_INTERNAL;
            snprintf(out->message, sizeof(out->message), "no response message");
        }
    }
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial);
    grpc_metadata_array_destroy(&trailing);
    grpc_byte_buffer_destroy(send);
    if (recv != NULL)
        grpc_byte_buffer_destroy(recv);
    grpc_call_unref(call);
    return out->code;
}

const char *ib_rpc_code_name(int code)
{
    static const char *names[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                  "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                  "UNAUTHENTICATED"};
    return code >= 0 && code <= 16 ? names[code] : "UNKNOWN";
}

void ib_spec_to_msg(const ib_workload_spec_t *s, Ibrain__V1__WorkloadSpec *m)
{
    ibrain__v1__workload_spec__init(m);
    m->id = (char *)s->id;
    m->model = (char *)s->model;
    m->replicas = s->replicas;
    m->weights = (char *)s->weights;
    m->engine_cmd = (char *)s->engine_cmd;
    m->chat_template = (char *)s->chat_template;
    m->tokenizer = (char *)s->tokenizer;
    m->block_size = s->block_size;
    m->context_length = s->context_length;
    m->policy = (char *)s->policy;
    m->generation = s->generation;
    m->engine = (char *)s->engine;
    m->engine_args = (char *)s->engine_args;
    m->version = (char *)s->version;
    m->cpu = (char *)s->cpu;
    m->memory = (char *)s->memory;
    m->gpus = s->gpus;
    m->kv_events = s->kv_events != 0;
}

void ib_spec_from_msg(const Ibrain__V1__WorkloadSpec *m, ib_workload_spec_t *s)
{
    memset(s, 0, sizeof(*s));
#define CP(f) snprintf(s->f, sizeof(s->f), "%s", m->f ? m->f : "")
    CP(id);
    CP(model);
    CP(weights);
    CP(engine_cmd);
    CP(chat_template);
    CP(tokenizer);
    CP(policy);
    CP(engine);
    CP(engine_args);
    CP(version);
    CP(cpu);
    CP(memory);
#undef CP
    s->gpus = m->gpus;
    s->kv_events = m->kv_events;
    s->replicas = m->replicas;
    s->block_size = m->block_size;
    s->context_length = m->context_length;
    s->generation = m->generation;
}
