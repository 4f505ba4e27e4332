/* OpenAI-style error bodies (include/ibrain/oai_error.h). */
#include "ibrain/oai_error.h"

#include <string.h>

void ib_oai_error_json(ib_buf_t *b, const char *message, const char *type, const char *param, const char *code)
{
    static const char a[] = "{\"error\":{\"message\":\"", t[] = "\",\"type\":", p[] = ",\"param\":", c[] = ",\"code\":";
    ib_buf_append(b, a, sizeof(a) - 1);
    ib_json_escape(b, message, strlen(message));
    ib_buf_append(b, t, sizeof(t) - 1);
    ib_json_str_or_null(b, type);
    ib_buf_append(b, p, sizeof(p) - 1);
    ib_json_str_or_null(b, param);
    ib_buf_append(b, c, sizeof(c) - 1);
    ib_json_str_or_null(b, code);
    ib_buf_append(b, "}}", 2);
}
