/*
 * picohttpparser, as exported by Debian's libh2o-evloop (h2o bundles it; Debian installs
 * no picohttpparser.h). The prototypes below are picohttpparser's public API (MIT).
 * Link libh2o-evloop to use them.
 */
#ifndef IBRAIN_PICOHTTP_H
#define IBRAIN_PICOHTTP_H

#include <stddef.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
    /* Newer picohttpparser releases append counters here; the padding keeps a caller-
     * allocated decoder large enough whichever release the library was built from. */
    char _reserved[32];
};

/* Return the header length, -1 on a parse error, -2 when incomplete. */
int phr_parse_request(const char *buf, size_t len, const char **method, size_t *method_len, const char **path,
                      size_t *path_len, int *minor_version, struct phr_header *headers, size_t *num_headers,
                      size_t last_len);
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status, const char **msg, size_t *msg_len,
                       struct phr_header *headers, size_t *num_headers, size_t last_len);
int phr_parse_headers(const char *buf, size_t len, struct phr_header *headers, size_t *num_headers, size_t last_len);

/* Decodes chunked data in place: on return *bufsz is the decoded length. Returns the number
 * of undecoded bytes left after the last chunk (>= 0, body complete), -1 on error, -2 when
 * more data is needed. */
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);
int phr_decode_chunked_is_in_data(struct phr_chunked_decoder *decoder);

#ifdef __cplusplus
}
#endif
#endif
