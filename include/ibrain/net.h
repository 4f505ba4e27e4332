/* Socket address and file helpers shared by the binaries. */
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

/** Room for "HOST:PORT" with a DNS name of up to 253 characters, and the NUL. */
#define IB_HOSTPORT_MAX 264

/**
 * Splits "HOST:PORT", HOST an IPv4 address or a DNS name (letters, digits, '-', '.', '_';
 * 1..253 characters), PORT 1..65535, into <host> (<hcap> >= 254) and <port>. For clients
 * that resolve names (hiredis, gRPC). Returns 0, or -1 when malformed.
 */
int ib_split_hostport(const char *s, char *host, size_t hcap, unsigned *port);

/**
 * Writes "<port>\n" to <path> atomically (a temporary file renamed into place), so that
 * a reader never sees a partial port. Returns 0, or -1 with errno set.
 */
int ib_write_port_file(const char *path, unsigned port);

/** Raises the soft open-file limit to the hard limit (servers of many connections). */
void ib_raise_nofile(void);

/**
 * The whole file at <path> ("-": standard input) in a malloc'd buffer, NUL-terminated (free()
 * it); *len is its size without the NUL. NULL when it cannot be read or memory runs out.
 */
char *ib_read_file(const char *path, size_t *len);

/** The path of <name> beside the running executable (/proc/self/exe's directory + "/" +
 * name). Returns 0, or -1 when it does not fit or cannot be read. */
int ib_exe_sibling(const char *name, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
