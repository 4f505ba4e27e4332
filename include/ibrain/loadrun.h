/*
 * ib-load's client: replays a workload (loadgen.h) against an OpenAI-compatible server
 * over HTTP/1.1 keep-alive connections from one epoll loop, and measures each request.
 *
 * Open loop: each item is sent at its arrival time divided by <speedup>, whatever the
 * server's state (a slow server sees requests pile up, as in production). Closed loop
 * (<concurrency> > 0): that many requests in flight, each followed at once by the next.
 * Multi-turn: each user's turns are sequential; a turn is sent <think_ms> after the
 * previous answer arrived, with that answer in its history.
 *
 * Per request: time to first token (first content chunk of an SSE stream; the whole
 * response when not streaming), inter-token latencies (gaps between content chunks),
 * end-to-end latency, output tokens (usage when the server sends it, else chunks), the
 * engine that answered (X-Engine-Id), and the kind of failure if any: the HTTP status and
 * the OpenAI error code (or type) of the JSON error body, or io, timeout, protocol.
 */
#ifndef IBRAIN_LOADRUN_H
#define IBRAIN_LOADRUN_H

#include <stdint.h>
#include "ibrain/loadgen.h"

#ifdef __cplusplus
extern "C" {
#endif

#define IB_LOAD_MAX_ENGINES 64
#define IB_LOAD_MAX_TARGETS 8


typedef struct ib_load_options {
    const char *host;          /* IPv4 literal */
    uint16_t ports[IB_LOAD_MAX_TARGETS]; /* every target's, on the same host: requests take them in turn */
    uint32_t ntargets;         /* >= 1 */
    const char *model;
    int chat;                  /* 1: /v1/chat/completions, 0: /v1/completions */
    int stream;
    int ignore_eos;            /* send "ignore_eos": true (vLLM) so outputs have the trace's length */
    int session_header;        /* multi-turn: send X-Session-Id: user-N */
    double speedup;            /* open loop: arrival times are divided by this */
    uint32_t concurrency;      /* > 0: closed loop */
    uint32_t max_conns;
    uint64_t limit;            /* requests to send at most (0: all) */
    uint32_t max_output;       /* cap on output tokens per request (0: none) */
    uint32_t think_ms;         /* multi-turn pause between turns */
    double timeout_s;          /* per request */
    int progress;              /* progress line on stderr every second */
    int log_errors;            /* a line on stderr for every failed request: when, what, on which connection */
    const char *requests_log;  /* a line per finished request (see ib-load --help), or NULL */
    int failover;              /* a request whose connection to a target could not be made, or whose
                                * request could not be written on a kept-alive one, goes to the next
                                * target (a client-side balancer's retry); that target is skipped for 1 s */
} ib_load_options_t;

typedef struct ib_load_engine_count {
    char id[64];
    uint64_t requests;
} ib_load_engine_count_t;

#define IB_LOAD_MAX_ERROR_KINDS 32

/* One kind of failure and how many requests ended with it. */
typedef struct ib_load_error_kind {
    int status;                /* HTTP status; 0 for io, timeout and protocol failures */
    char kind[64];             /* the JSON error body's error.code, else its error.type ("" when the body
                                * has neither); "io", "timeout", "protocol", or "stream <code>" for an error
                                * event in a 200 stream */
    uint64_t count;
} ib_load_error_kind_t;

typedef struct ib_load_result {
    uint64_t sent, ok;
    uint64_t err_status;       /* non-2xx */
    uint64_t err_io;           /* connect / reset / EOF before the end */
    uint64_t err_timeout;
    uint64_t err_protocol;     /* malformed HTTP or stream, or an error event in the stream */
    uint64_t failovers;        /* --failover: requests sent again to another target */
    uint64_t status_4xx, status_5xx;
    uint64_t output_tokens, prompt_tokens, cached_tokens;
    double duration_s;
    ib_samples_t ttft_ms, itl_ms, e2e_ms;
    ib_load_engine_count_t engines[IB_LOAD_MAX_ENGINES];
    uint32_t nengines;
    ib_load_error_kind_t error_kinds[IB_LOAD_MAX_ERROR_KINDS]; /* most frequent first after the run */
    uint32_t nerror_kinds;     /* kinds past the table's size are counted in the last one, "other" */
} ib_load_result_t;

void ib_load_options_defaults(ib_load_options_t *o);

/** Runs <w> to completion. 0, or -1 when the run could not start (message on stderr). */
int ib_load_run(const ib_load_workload_t *w, const ib_load_options_t *o, ib_load_result_t *r);

void ib_load_result_free(ib_load_result_t *r);


#ifdef __cplusplus
}
#endif
#endif
