/* The growable byte buffer (include/ibrain/buf.h). */
#include "ibrain/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ib_buf_reserve(ib_buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
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

int ib_buf_append(ib_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (ib_buf_reserve(b, n) != 0)
        return -1;
    memcpy(b->ptr + b->len, p, n);
    b->len += n;
    return 0;
}

int ib_buf_printf(ib_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || ib_buf_reserve(b, (size_t)n + 1) != 0)
        return -1;
    va_start(ap, fmt);
    vsnprintf(b->ptr + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void ib_buf_free(ib_buf_t *b)
{
    free(b->ptr);
    b->ptr = NULL;
    b->len = b->cap = 0;
}
