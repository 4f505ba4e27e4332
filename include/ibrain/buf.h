/*
 * A growable byte buffer (malloc'd; zero-initialise, append, ib_buf_free).
 *
 * Out of memory, one policy: ib_buf_append, ib_buf_printf and ib_buf_reserve abort the
 * process (as Redis's zmalloc does): what they build is bounded (a response head, a
 * metrics page, an error body), and a process that cannot allocate that much cannot
 * serve. Where a size comes from outside and a refusal can be answered (a request body, a
 * client's pipelined input, a replica's response head), the ib_buf_try_ variants return
 * -1 instead, and the compiler makes the caller check (warn_unused_result).
 */
#ifndef IBRAIN_BUF_H
#define IBRAIN_BUF_H

#include <stddef.h>
#include <string.h>

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

#define IB_WUR __attribute__((warn_unused_result))

/* ---- functions ---- */

/** Makes room for <extra> more bytes (capacity doubles from 256); aborts when out of memory. */
void ib_buf_reserve(ib_buf_t *b, size_t extra);

/** Appends <n> bytes; aborts when out of memory (inline below: a copy when it fits). */
static inline void ib_buf_append(ib_buf_t *b, const void *p, size_t n);
void ib_buf_append_grow(ib_buf_t *b, const void *p, size_t n);

/** Appends printf-style text; aborts when out of memory or on a format error. */
void ib_buf_printf(ib_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/** ib_buf_reserve, returning -1 when out of memory (the buffer unchanged), else 0. */
int ib_buf_try_reserve(ib_buf_t *b, size_t extra) IB_WUR;
/** Room for exactly <extra> more bytes (no doubling: for a size known in advance, such as a
 * body's Content-Length). 0, or -1 when out of memory. */
int ib_buf_try_reserve_exact(ib_buf_t *b, size_t extra) IB_WUR;

/** ib_buf_append, returning -1 when out of memory (the buffer unchanged), else 0. */
static inline int ib_buf_try_append(ib_buf_t *b, const void *p, size_t n) IB_WUR;
int ib_buf_try_append_grow(ib_buf_t *b, const void *p, size_t n) IB_WUR;

/** ib_buf_printf, returning -1 when out of memory or the format fails, else 0. */
int ib_buf_try_printf(ib_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3))) IB_WUR;

/** Frees the memory; the buffer is empty and usable again. */
void ib_buf_free(ib_buf_t *b);

/* inline defs */

/** Empties the buffer, keeping its memory. */
static inline void ib_buf_reset(ib_buf_t *b) { b->len = 0; }
/** Empties <b>, and gives its memory back when it grew past <keep> bytes (a burst's
 * buffer is not kept for the rest of a long-lived connection). */
static inline void ib_buf_shrink(ib_buf_t *b, size_t keep)
{
    if (b->cap > keep)
        ib_buf_free(b);
    else
        ib_buf_reset(b);
}

static inline void ib_buf_append(ib_buf_t *b, const void *p, size_t n)
{
    if (n <= b->cap - b->len && n > 0) {
        memcpy(b->ptr + b->len, p, n);
        b->len += n;
        return;
    }
    ib_buf_append_grow(b, p, n);
}

static inline int ib_buf_try_append(ib_buf_t *b, const void *p, size_t n)
{
    if (n <= b->cap - b->len && n > 0) {
        memcpy(b->ptr + b->len, p, n);
        b->len += n;
        return 0;
    }
    return ib_buf_try_append_grow(b, p, n);
}

#ifdef __cplusplus
}
#endif
#endif
