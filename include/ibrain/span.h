/* A byte range that is not NUL-terminated: a view into someone else's buffer. */
#ifndef IBRAIN_SPAN_H
#define IBRAIN_SPAN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A byte range that is not NUL-terminated. */
typedef struct ib_span {
    const char *ptr;
    size_t len;
} ib_span_t;

#ifdef __cplusplus
}
#endif
#endif
