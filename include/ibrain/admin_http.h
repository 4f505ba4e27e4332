/*
 * A small status/metrics HTTP server for the control-plane daemons (ib-manager,
 * ib-clusterd): one thread, one short GET per connection, answered by a callback. The
 * callback runs on the server's thread: it must only read state the daemon publishes for
 * it (under the daemon's own lock). Start it after blocking the signals the daemon handles
 * with a signalfd, so that the thread inherits the mask.
 */
#ifndef IBRAIN_ADMIN_HTTP_H
#define IBRAIN_ADMIN_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/buf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

/** Fills <body> for GET <path> and returns the HTTP status; sets *ctype when not JSON.
 * Returning 404 with an empty body gives the standard "no such route" error. */
typedef int (*ib_admin_fn)(void *arg, const char *path, ib_buf_t *body, const char **ctype);

typedef struct ib_admin ib_admin_t;

#define IB_PROM_CTYPE "text/plain; version=0.0.4"
#define IB_ADMIN_MAX_HEAD 8192        /* a request head, at most */
#define IB_ADMIN_DEADLINE_MS 2000u    /* for the whole head after the accept, and for the answer */

/* ---- functions ---- */

/** Listens on <listen> (IPV4:PORT, port 0: free), serves in a thread. NULL on error (<err>). */
ib_admin_t *ib_admin_start(const char *listen, ib_admin_fn fn, void *arg, char *err, size_t errlen);

/** The answer to the request head <in>[0..len) (400 when it is incomplete or malformed,
 * 405 for another method than GET, else what <fn> says), a whole HTTP/1.1 response with
 * Connection: close, into <out>. Returns its status. */
int ib_admin_answer(ib_admin_fn fn, void *arg, const char *in, size_t len, ib_buf_t *out);

/** The port it listens on. */
uint16_t ib_admin_port(const ib_admin_t *a);

/** Stops the thread and closes the socket. */
void ib_admin_stop(ib_admin_t *a);

#ifdef __cplusplus
}
#endif
#endif
