/* JSON strings into a buffer (include/ibrain/json_write.h). Out of memory aborts, as the
 * buffer's own appends do (include/ibrain/buf.h). */
#include "ibrain/json_write.h"

#include <stdio.h>
#include <string.h>

void ib_json_escape(ib_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    ib_buf_reserve(b, n + 2);
    size_t run = 0; /* start of the bytes not yet copied, which need no escape */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[6] = {'\\', 0, '0', '0', 0, 0};
        size_t elen = 2;
        switch (ch) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            if (ch >= 0x20)
                continue;
            esc[1] = 'u';
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 15];
            elen = 6;
        }
        ib_buf_append(b, s + run, i - run);
        ib_buf_append(b, esc, elen);
        run = i + 1;
    }
    ib_buf_append(b, s + run, n - run);
}

void ib_json_strn(ib_buf_t *b, const char *s, size_t n)
{
    ib_buf_append(b, "\"", 1);
    ib_json_escape(b, s, n);
    ib_buf_append(b, "\"", 1);
}

void ib_json_str(ib_buf_t *b, const char *s) { ib_json_strn(b, s ? s : "", s ? strlen(s) : 0); }

void ib_json_str_or_null(ib_buf_t *b, const char *s)
{
    if (s == NULL)
        ib_buf_append(b, "null", 4);
    else
        ib_json_str(b, s);
}

void ib_json_member_str(ib_buf_t *b, const char *key, const char *v, int comma)
{
    ib_buf_printf(b, "%s\"%s\":", comma ? "," : "", key);
    ib_json_str(b, v);
}

void ib_json_member_u64(ib_buf_t *b, const char *key, unsigned long long v, int comma)
{
    char tmp[96];
    int n = snprintf(tmp, sizeof(tmp), "%s\"%s\":%llu", comma ? "," : "", key, v);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        ib_buf_printf(b, "%s\"%s\":%llu", comma ? "," : "", key, v);
    else
        ib_buf_append(b, tmp, (size_t)n);
}
