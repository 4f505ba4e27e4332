/* OpenAI-style error bodies (include/ibrain/oai_error.h). */
#include "ibrain/oai_error.h"

#include <stdio.h>
#include <string.h>

int ib_json_escape(ib_buf_t *b, const char *s, size_t n)
{
    if (ib_buf_reserve(b, n + 2) != 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        const char *e = NULL;
        size_t elen = 2;
        switch (ch) {
        case '"': e = "\\\""; break;
        case '\\': e = "\\\\"; break;
        case '\n': e = "\\n"; break;
        case '\r': e = "\\r"; break;
        case '\t': e = "\\t"; break;
        default:
            if (ch < 0x20) {
                snprintf(esc, sizeof(esc), "\\u%04x", ch);
                e = esc;
                elen = 6;
            }
        }
        if (e != NULL ? ib_buf_append(b, e, elen) : ib_buf_append(b, &s[i], 1))
            return -1;
    }
    return 0;
}

static int append_str_or_null(ib_buf_t *b, const char *s)
{
    if (s == NULL)
        return ib_buf_append(b, "null", 4);
    return ib_buf_append(b, "\"", 1) || ib_json_escape(b, s, strlen(s)) || ib_buf_append(b, "\"", 1) ? -1 : 0;
}

int ib_oai_error_json(ib_buf_t *b, const char *message, const char *type, const char *param, const char *code)
{
    static const char a[] = "{\"error\":{\"message\":\"", t[] = "\",\"type\":", p[] = ",\"param\":", c[] = ",\"code\":";
    if (ib_buf_append(b, a, sizeof(a) - 1) || ib_json_escape(b, message, strlen(message)) ||
        ib_buf_append(b, t, sizeof(t) - 1) || append_str_or_null(b, type) || ib_buf_append(b, p, sizeof(p) - 1) ||
        append_str_or_null(b, param) || ib_buf_append(b, c, sizeof(c) - 1) || append_str_or_null(b, code) ||
        ib_buf_append(b, "}}", 2))
        return -1;
    return 0;
}
