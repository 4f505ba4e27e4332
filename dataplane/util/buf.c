/* The growable byte buffer (include/ibrain/buf.h) and its out-of-memory policy. */
#include "ibrain/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void out_of_memory(size_t want)
{
    fprintf(stderr, "ibrain: out of memory (a buffer of %zu bytes); aborting\n", want);
    abort();
}

int ib_buf_try_reserve(ib_buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    if (extra > ((size_t)-1 >> 2) - b->len)
        return -1; /* no size doubles to that */
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    char *p = realloc(b->ptr, cap);
    if (p == NULL)
        return -1;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

int ib_buf_try_reserve_exact(ib_buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    if (extra > ((size_t)-1 >> 2) - b->len)
        return -1;
    char *p = realloc(b->ptr, b->len + extra);
    if (p == NULL)
        return -1;
    b->ptr = p;
    b->cap = b->len + extra;
    return 0;
}

void ib_buf_reserve(ib_buf_t *b, size_t extra)
{
    if (ib_buf_try_reserve(b, extra) != 0)
        out_of_memory(b->len + extra);
}

int ib_buf_try_append_grow(ib_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (ib_buf_try_reserve(b, n) != 0)
        return -1;
    memcpy(b->ptr + b->len, p, n);
    b->len += n;
    return 0;
}

void ib_buf_append_grow(ib_buf_t *b, const void *p, size_t n)
{
    if (ib_buf_try_append_grow(b, p, n) != 0)
        out_of_memory(b->len + n);
}

static int vprintf_to(ib_buf_t *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0 || ib_buf_try_reserve(b, (size_t)n + 1) != 0)
        return -1;
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return 0;
}

int ib_buf_try_printf(ib_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vprintf_to(b, fmt, ap);
    va_end(ap);
    return rc;
}

void ib_buf_printf(ib_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = vprintf_to(b, fmt, ap);
    va_end(ap);
    if (rc != 0)
        out_of_memory(b->len);
}

void ib_buf_free(ib_buf_t *b)
{
    free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}
