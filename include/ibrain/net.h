/* Socket address helpers shared by the binaries. */
#ifndef IBRAIN_NET_H
#define IBRAIN_NET_H

#include <netinet/in.h>

#ifdef __cplusplus
extern "C" {
#endif

/**
 * Parses "IPV4:PORT" ("localhost" and an empty host are accepted: 127.0.0.1 and 0.0.0.0)
 * into <out>. Port 0 is allowed (bind to any free port). Returns 0, or -1 when malformed.
 */
int ib_parse_hostport(const char *s, struct sockaddr_in *out);

/**
 * Writes "<port>\n" to <path> atomically (a temporary file renamed into place), so that
 * a reader never sees a partial port. Returns 0, or -1 with errno set.
 */
int ib_write_port_file(const char *path, unsigned port);

/** Raises the soft open-file limit to the hard limit (servers of many connections). */
void ib_raise_nofile(void);

#ifdef __cplusplus
}
#endif
#endif
