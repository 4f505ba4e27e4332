/*
 * A growable byte buffer (malloc'd; zero-initialise, append, ib_buf_free). Appends return
 * 0, or -1 when out of memory (the buffer is then unchanged).
 */
#ifndef IBRAIN_BUF_H
#define IBRAIN_BUF_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

/** A growable byte buffer. */
typedef struct ib_buf {
    char *ptr;
    size_t len;
    size_t cap;
} ib_buf_t;

/* ---- functions ---- */

/** Makes room for <extra> more bytes (capacity doubles from 256). 0, or -1 on OOM. */
int ib_buf_reserve(ib_buf_t *b, size_t extra);

/** Appends <n> bytes. 0, or -1 on OOM. */
int ib_buf_append(ib_buf_t *b, const void *p, size_t n);

/** Appends printf-style text. 0, or -1 when out of memory or the format fails. */
int ib_buf_printf(ib_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** Frees the memory; the buffer is empty and usable again. */
void ib_buf_free(ib_buf_t *b);

/* inline defs */

/** Empties the buffer, keeping its memory. */
static inline void ib_buf_reset(ib_buf_t *b) { b->len = 0; }

#ifdef __cplusplus
}
#endif
#endif
