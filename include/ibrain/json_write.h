/*
 * Writing JSON strings into a buffer: the one escaper every JSON writer uses.
 *
 * Escapes '"' and '\\', writes \n, \r and \t in their short forms and every other control
 * character (below 0x20) as \u00XX; every other byte, UTF-8 included, is copied as it is.
 */
#ifndef IBRAIN_JSON_WRITE_H
#define IBRAIN_JSON_WRITE_H

#include <stddef.h>

#include "ibrain/buf.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Appends <s>[0..n) to <b> as JSON string contents (no quotes). Out of memory aborts (buf.h). */
void ib_json_escape(ib_buf_t *b, const char *s, size_t n);

/** Appends <s> as a JSON string literal, quoted and escaped (NULL: ""). Out of memory aborts (buf.h). */
void ib_json_str(ib_buf_t *b, const char *s);

/** Appends <s>[0..n) as a JSON string literal, quoted and escaped. Out of memory aborts (buf.h). */
void ib_json_strn(ib_buf_t *b, const char *s, size_t n);

/** Appends <s> quoted and escaped, or null when <s> is NULL. Out of memory aborts (buf.h). */
void ib_json_str_or_null(ib_buf_t *b, const char *s);

/**
 * Appends an object member "<key>":"<v>" (<v> escaped, NULL: ""), after a comma when
 * <comma>. <key> is written as it is (a literal name). Out of memory aborts (buf.h).
 */
void ib_json_member_str(ib_buf_t *b, const char *key, const char *v, int comma);

/** Appends an object member "<key>":<v>, after a comma when <comma>. Out of memory aborts (buf.h). */
void ib_json_member_u64(ib_buf_t *b, const char *key, unsigned long long v, int comma);

#ifdef __cplusplus
}
#endif
#endif
