// ondemand_c: simdjson On-Demand behind a C interface (include/ibrain/ondemand_c.h).
// Error-code style throughout (.get(x)), no exceptions thrown from here.
#include "ibrain/ondemand_c.h"

#include <simdjson.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

using namespace simdjson;

struct ib_json_parser {
    ondemand::parser parser;
    size_t max_doc;
    std::vector<char> scratch;          // padded copy when the caller's buffer has no padding
    std::vector<ib_chat_message_t> msgs;
    std::vector<ib_span_t> parts;
};

static_assert(IB_JSON_PADDING >= SIMDJSON_PADDING, "IB_JSON_PADDING must cover simdjson's padding");

extern "C" ib_json_parser_t *ib_json_parser_new(size_t max_doc_bytes)
{
    ib_json_parser *p = new (std::nothrow) ib_json_parser();
    if (p == nullptr)
        return nullptr;
    p->max_doc = max_doc_bytes;
    if (p->parser.allocate(max_doc_bytes) != SUCCESS) {
        delete p;
        return nullptr;
    }
    return p;
}

extern "C" void ib_json_parser_free(ib_json_parser_t *p) { delete p; }

namespace {

int fail(ib_json_error_t *err, const char *param, const char *fmt, const char *a = "", const char *b = "")
{
    err->status = 400;
    if (param != nullptr) {
        snprintf(err->param_buf, sizeof(err->param_buf), "%s", param);
        err->param = err->param_buf;
    } else {
        err->param = nullptr;
    }
    snprintf(err->message, sizeof(err->message), fmt, a, b);
    return -1;
}

const char *type_name(ondemand::value &v)
{
    ondemand::json_type t;
    if (v.type().get(t) != SUCCESS)
        return "invalid JSON";
    switch (t) {
    case ondemand::json_type::array: return "an array";
    case ondemand::json_type::object: return "an object";
    case ondemand::json_type::number: return "a number";
    case ondemand::json_type::string: return "a string";
    case ondemand::json_type::boolean: return "a boolean";
    case ondemand::json_type::null: return "null";
    }
    return "unknown";
}

// Maps a simdjson error met while walking to the OpenAI-style message.
int json_fail(ib_json_error_t *err, error_code e, const char *where)
{
    switch (e) {
    case INCORRECT_TYPE:
        return fail(err, where, "'%s' has the wrong type", where);
    case EMPTY:
        return fail(err, nullptr, "request body is empty");
    case STRING_ERROR:
    case UTF8_ERROR:
        return fail(err, where, "'%s' is not a valid JSON string (%s)", where ? where : "body", error_message(e));
    default:
        /* A structural syntax error is the body's, not a field's: no param. */
        return fail(err, nullptr, "request body is not valid JSON (%s)", error_message(e));
    }
}

// True when <v> is JSON null (simdjson's is_null() returns a result, not a bool).
bool is_null(ondemand::value &v)
{
    bool n = false;
    return v.is_null().get(n) == SUCCESS && n;
}

ib_span_t span(std::string_view sv) { return ib_span_t{sv.data(), sv.size()}; }

// Reads a message's "content": string, null, or array of parts.
// The field name of an error ("messages[3].content") is formatted only when an error is
// reported: formatting it for every message cost more than parsing the message.
#define WHERE(suffix) (snprintf(where, sizeof(where), "messages[%zu]%s", index, (suffix)), where)

// A string value with no escape in it, as it lies in the document (no copy: a long
// message is not unescaped into the parser's buffer byte by byte); false for one with a
// backslash, which get_string() unescapes. Nothing is consumed: the object walk skips it.
// The document's UTF-8 was validated whole by stage 1.
bool raw_string(ondemand::value &v, std::string_view *out)
{
    std::string_view raw = v.raw_json_token(); // "...", then the spaces up to the next token
    size_t end = raw.size();
    while (end > 0 && raw[end - 1] != '"')
        end--;
    if (end < 2 || raw[0] != '"' || memchr(raw.data() + 1, '\\', end - 2) != nullptr)
        return false;
    *out = raw.substr(1, end - 2);
    return true;
}

int parse_content(ib_json_parser *p, ondemand::value v, size_t index, ib_chat_message_t *m, ib_json_error_t *err)
{
    char where[64];
    ondemand::json_type t;
    if (auto e = v.type().get(t))
        return json_fail(err, e, WHERE(".content"));
    m->first_part = (uint32_t)p->parts.size();
    m->nparts = 0;
    if (t == ondemand::json_type::null)
        return 0;
    if (t == ondemand::json_type::string) {
        std::string_view sv;
        if (!raw_string(v, &sv)) {
            if (auto e = v.get_string().get(sv))
                return json_fail(err, e, WHERE(".content"));
        }
        p->parts.push_back(span(sv));
        m->nparts = 1;
        return 0;
    }
    if (t != ondemand::json_type::array)
        return fail(err, WHERE(".content"), "'%s' must be a string, null or an array of content parts, not %s", where, type_name(v));
    ondemand::array arr;
    if (auto e = v.get_array().get(arr))
        return json_fail(err, e, WHERE(".content"));
    for (auto el : arr) {
        ondemand::object part;
        if (auto e = el.get_object().get(part))
            return e == INCORRECT_TYPE ? fail(err, WHERE(".content"), "'%s' parts must be objects", where) : json_fail(err, e, WHERE(".content"));
        std::string_view type, text;
        bool have_text = false;
        for (auto f : part) {
            std::string_view key;
            if (auto e = f.unescaped_key().get(key))
                return json_fail(err, e, WHERE(".content"));
            if (key == "type") {
                if (auto e = f.value().get_string().get(type))
                    return json_fail(err, e, WHERE(".content"));
            } else if (key == "text") {
                if (auto e = f.value().get_string().get(text))
                    return json_fail(err, e, WHERE(".content"));
                have_text = true;
            }
        }
        if (type.empty())
            return fail(err, WHERE(".content"), "every part of '%s' needs a string 'type'", where);
        if (type == "text") {
            if (!have_text)
                return fail(err, WHERE(".content"), "a 'text' part of '%s' needs a string 'text'", where);
            p->parts.push_back(span(text));
            m->nparts++;
        }
        // Other part types (image_url, input_audio ...) carry no prompt text for routing.
    }
    return 0;
}

int parse_messages(ib_json_parser *p, ondemand::value v, ib_json_error_t *err)
{
    ondemand::array arr;
    if (auto e = v.get_array().get(arr))
        return e == INCORRECT_TYPE ? fail(err, "messages", "'messages' must be an array, not %s", type_name(v))
                                   : json_fail(err, e, "messages");
    char where[64];
    for (auto el : arr) {
        size_t index = p->msgs.size();
        ondemand::object obj;
        if (auto e = el.get_object().get(obj))
            return e == INCORRECT_TYPE ? fail(err, WHERE(""), "'%s' must be an object", where) : json_fail(err, e, WHERE(""));
        ib_chat_message_t m{};
        bool have_role = false, have_content = false;
        for (auto f : obj) {
            std::string_view key;
            if (auto e = f.unescaped_key().get(key))
                return json_fail(err, e, WHERE(""));
            if (key == "role") {
                std::string_view role;
                if (auto e = f.value().get_string().get(role))
                    return json_fail(err, e, WHERE(".role"));
                m.role = span(role);
                have_role = true;
            } else if (key == "content") {
                ondemand::value content;
                if (auto e = f.value().get(content))
                    return json_fail(err, e, WHERE(".content"));
                if (parse_content(p, content, index, &m, err) != 0)
                    return -1;
                have_content = true;
            }
        }
        if (!have_role || m.role.len == 0)
            return fail(err, WHERE(".role"), "'%s' is required", where);
        if (!have_content)
            m.first_part = (uint32_t)p->parts.size();
        p->msgs.push_back(m);
    }
    if (p->msgs.empty())
        return fail(err, "messages", "'messages' must not be empty");
    return 0;
}

int parse_prompt(ib_json_parser *p, ondemand::value v, ib_json_error_t *err)
{
    ondemand::json_type t;
    if (auto e = v.type().get(t))
        return json_fail(err, e, "prompt");
    if (t == ondemand::json_type::string) {
        std::string_view sv;
        if (auto e = v.get_string().get(sv))
            return json_fail(err, e, "prompt");
        p->parts.push_back(span(sv));
        return 0;
    }
    if (t != ondemand::json_type::array)
        return fail(err, "prompt", "'prompt' must be a string or an array of strings, not %s", type_name(v));
    ondemand::array arr;
    if (auto e = v.get_array().get(arr))
        return json_fail(err, e, "prompt");
    for (auto el : arr) {
        std::string_view sv;
        if (auto e = el.get_string().get(sv))
            return e == INCORRECT_TYPE ? fail(err, "prompt", "'prompt' must be a string or an array of strings")
                                       : json_fail(err, e, "prompt");
        p->parts.push_back(span(sv));
    }
    if (p->parts.empty())
        return fail(err, "prompt", "'prompt' must not be empty");
    return 0;
}

int parse_max_tokens(ondemand::value v, const char *key, int64_t *out, ib_json_error_t *err)
{
    ondemand::json_type t;
    if (auto e = v.type().get(t))
        return json_fail(err, e, key);
    if (t == ondemand::json_type::null)
        return 0;
    int64_t n;
    if (v.get_int64().get(n) != SUCCESS || n < 0)
        return fail(err, key, "'%s' must be a non-negative integer", key);
    *out = n;
    return 0;
}

int parse_stream_options(ondemand::value v, int *include_usage, ib_json_error_t *err)
{
    ondemand::object obj;
    if (auto e = v.get_object().get(obj)) {
        if (e == INCORRECT_TYPE && is_null(v))
            return 0;
        return e == INCORRECT_TYPE ? fail(err, "stream_options", "'stream_options' must be an object")
                                   : json_fail(err, e, "stream_options");
    }
    for (auto f : obj) {
        std::string_view key;
        if (auto e = f.unescaped_key().get(key))
            return json_fail(err, e, "stream_options");
        if (key == "include_usage") {
            bool b;
            if (f.value().get_bool().get(b) != SUCCESS)
                return fail(err, "stream_options.include_usage", "'stream_options.include_usage' must be a boolean");
            *include_usage = b;
        }
    }
    return 0;
}

// Points the parser at <body>, copying it into padded scratch when the caller's buffer is short.
error_code start(ib_json_parser *p, const char *body, size_t len, size_t capacity, ondemand::document &doc)
{
    if (len > p->max_doc)
        return CAPACITY;
    if (capacity < len + SIMDJSON_PADDING) {
        if (p->scratch.size() < len + SIMDJSON_PADDING)
            p->scratch.resize(len + SIMDJSON_PADDING);
        if (len != 0)
            memcpy(p->scratch.data(), body, len);
        memset(p->scratch.data() + len, 0, SIMDJSON_PADDING);
        body = p->scratch.data();
        capacity = len + SIMDJSON_PADDING;
    }
    return p->parser.iterate(body, len, capacity).get(doc);
}

} // namespace

extern "C" int ib_oai_parse(ib_json_parser_t *p, ib_api_kind_t kind, const char *body, size_t len, size_t capacity,
                            ib_oai_request_t *out, ib_json_error_t *err)
{
    memset(out, 0, sizeof(*out));
    out->kind = kind;
    out->max_tokens = -1;
    p->msgs.clear();
    p->parts.clear();
    if (len == 0)
        return fail(err, nullptr, "request body is empty; expected a JSON object");

    ondemand::document doc;
    if (auto e = start(p, body, len, capacity, doc))
        return e == CAPACITY ? fail(err, nullptr, "request body is too large to parse") : json_fail(err, e, nullptr);
    ondemand::object obj;
    if (auto e = doc.get_object().get(obj))
        return e == INCORRECT_TYPE ? fail(err, nullptr, "request body must be a JSON object") : json_fail(err, e, nullptr);

    bool have_body_key = false;
    for (auto f : obj) {
        std::string_view key;
        if (auto e = f.unescaped_key().get(key))
            return json_fail(err, e, nullptr);
        ondemand::value v;
        if (auto e = f.value().get(v))
            return json_fail(err, e, nullptr);
        if (key == "model") {
            std::string_view sv;
            if (auto e = v.get_string().get(sv))
                return e == INCORRECT_TYPE ? fail(err, "model", "'model' must be a string, not %s", type_name(v))
                                           : json_fail(err, e, "model");
            out->model = span(sv);
        } else if (key == "messages" && kind == IB_API_CHAT) {
            if (parse_messages(p, v, err) != 0)
                return -1;
            have_body_key = true;
        } else if (key == "prompt" && kind == IB_API_COMPLETION) {
            if (parse_prompt(p, v, err) != 0)
                return -1;
            have_body_key = true;
        } else if (key == "stream") {
            ondemand::json_type t;
            if (auto e = v.type().get(t))
                return json_fail(err, e, "stream");
            if (t != ondemand::json_type::null) {
                bool b;
                if (v.get_bool().get(b) != SUCCESS)
                    return fail(err, "stream", "'stream' must be a boolean, not %s", type_name(v));
                out->stream = b;
            }
        } else if (key == "stream_options") {
            if (parse_stream_options(v, &out->include_usage, err) != 0)
                return -1;
        } else if (key == "max_tokens" || key == "max_completion_tokens") {
            if (parse_max_tokens(v, key == "max_tokens" ? "max_tokens" : "max_completion_tokens", &out->max_tokens, err) != 0)
                return -1;
        } else if (key == "user" || key == "session_id" || key == "isolation_id") {
            const char *name = key == "user" ? "user" : (key == "session_id" ? "session_id" : "isolation_id");
            std::string_view sv;
            ondemand::json_type t;
            if (auto e = v.type().get(t))
                return json_fail(err, e, name);
            if (t == ondemand::json_type::null)
                continue;
            if (v.get_string().get(sv) != SUCCESS)
                return fail(err, name, "'%s' must be a string, not %s", name, type_name(v));
            if (key == "user")
                out->user = span(sv);
            else
                out->session_id = span(sv);
        }
    }
    const char *trailing;
    if (doc.current_location().get(trailing) == SUCCESS)
        return fail(err, nullptr, "request body has trailing content after the JSON object");
    if (out->model.len == 0)
        return fail(err, "model", "'model' is required");
    if (!have_body_key)
        return kind == IB_API_CHAT ? fail(err, "messages", "'messages' is required") : fail(err, "prompt", "'prompt' is required");
    out->messages = p->msgs.data();
    out->nmessages = (uint32_t)p->msgs.size();
    out->parts = p->parts.data();
    out->nparts = (uint32_t)p->parts.size();
    return 0;
}

namespace {

// Finds the value at JSON pointer <ptr> of <doc_bytes>: 0 with <v> set, 1 when absent or
// null, -1 when the document is invalid. <doc> must outlive <v>.
int pointer_value(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr, ondemand::document &doc,
                  ondemand::value &v)
{
    if (start(p, doc_bytes, len, len, doc) != SUCCESS)
        return -1;
    error_code e = doc.at_pointer(ptr).get(v);
    if (e == NO_SUCH_FIELD || e == INDEX_OUT_OF_BOUNDS)
        return 1;
    if (e != SUCCESS)
        return -1;
    return is_null(v) ? 1 : 0;
}

} // namespace

extern "C" int ib_json_pointer_string(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr, ib_span_t *out)
{
    ondemand::document doc;
    ondemand::value v;
    if (int rc = pointer_value(p, doc_bytes, len, ptr, doc, v))
        return rc;
    std::string_view sv;
    if (v.get_string().get(sv) != SUCCESS)
        return -1;
    *out = span(sv);
    return 0;
}

extern "C" int ib_json_pointer_int(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr, int64_t *out)
{
    ondemand::document doc;
    ondemand::value v;
    if (int rc = pointer_value(p, doc_bytes, len, ptr, doc, v))
        return rc;
    return v.get_int64().get(*out) == SUCCESS ? 0 : -1;
}

extern "C" int ib_json_pointer_bool(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr, int *out)
{
    ondemand::document doc;
    ondemand::value v;
    if (int rc = pointer_value(p, doc_bytes, len, ptr, doc, v))
        return rc;
    bool b;
    if (v.get_bool().get(b) != SUCCESS)
        return -1;
    *out = b;
    return 0;
}

extern "C" int ib_json_pointer_raw(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr, ib_span_t *out)
{
    ondemand::document doc;
    ondemand::value v;
    if (int rc = pointer_value(p, doc_bytes, len, ptr, doc, v))
        return rc;
    ondemand::object o;
    std::string_view raw;
    if (v.get_object().get(o) != SUCCESS || o.raw_json().get(raw) != SUCCESS)
        return -1;
    out->ptr = raw.data();
    out->len = raw.size();
    return 0;
}

extern "C" int ib_json_pointer_each(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr,
                                    ib_json_element_fn fn, void *ctx)
{
    ondemand::document doc;
    ondemand::value v;
    if (int rc = pointer_value(p, doc_bytes, len, ptr, doc, v))
        return rc;
    ondemand::array arr;
    if (v.get_array().get(arr) != SUCCESS)
        return -1;
    for (auto elem : arr) {
        ondemand::object o; // the elements walked are objects (API objects, endpoints)
        std::string_view raw;
        if (elem.get_object().get(o) != SUCCESS || o.raw_json().get(raw) != SUCCESS)
            return -1;
        if (int rc = fn(ctx, raw.data(), raw.size()))
            return rc;
    }
    return 0;
}

extern "C" int ib_json_pointer_int_array(ib_json_parser_t *p, const char *doc_bytes, size_t len, const char *ptr,
                                         int64_t **out, size_t *n)
{
    *out = nullptr;
    *n = 0;
    ondemand::document doc;
    ondemand::value v;
    if (int rc = pointer_value(p, doc_bytes, len, ptr, doc, v))
        return rc;
    ondemand::array arr;
    if (v.get_array().get(arr) != SUCCESS)
        return -1;
    size_t cap = 0;
    int64_t *vals = nullptr;
    for (auto el : arr) {
        int64_t x;
        if (el.get_int64().get(x) != SUCCESS) {
            free(vals);
            return -1;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 32;
            int64_t *grown = static_cast<int64_t *>(realloc(vals, cap * sizeof(*vals)));
            if (grown == nullptr) {
                free(vals);
                return -1;
            }
            vals = grown;
        }
        vals[(*n)++] = x;
    }
    *out = vals;
    return 0;
}

extern "C" int ib_json_object_fields(ib_json_parser_t *p, const char *doc_bytes, size_t len, size_t capacity,
                                     ib_json_field_fn fn, void *ctx)
{
    ondemand::document doc;
    if (start(p, doc_bytes, len, capacity, doc) != SUCCESS)
        return -1;
    ondemand::object obj;
    if (doc.get_object().get(obj) != SUCCESS)
        return -1;
    for (auto field : obj) {
        std::string_view key;
        ondemand::value v;
        if (field.unescaped_key().get(key) != SUCCESS || field.value().get(v) != SUCCESS)
            return -1;
        ondemand::json_type t;
        if (v.type().get(t) != SUCCESS)
            return -1;
        ib_json_field_t f = {};
        f.key = span(key);
        switch (t) {
        case ondemand::json_type::string: {
            std::string_view sv;
            if (v.get_string().get(sv) != SUCCESS)
                return -1;
            f.type = IB_JSON_STRING;
            f.str = span(sv);
            break;
        }
        case ondemand::json_type::number: {
            f.type = IB_JSON_NUMBER;
            f.int_ok = v.get_int64().get(f.num) == SUCCESS;
            if (!f.int_ok) {
                double d;
                if (v.get_double().get(d) != SUCCESS)
                    return -1;
            }
            break;
        }
        case ondemand::json_type::boolean: {
            bool b;
            if (v.get_bool().get(b) != SUCCESS)
                return -1;
            f.type = IB_JSON_BOOL;
            f.num = b;
            break;
        }
        case ondemand::json_type::null: {
            bool isnull = false;
            if (v.is_null().get(isnull) != SUCCESS || !isnull)
                return -1;
            f.type = IB_JSON_NULL;
            break;
        }
        case ondemand::json_type::array: {
            ondemand::array a;
            std::string_view raw;
            if (v.get_array().get(a) != SUCCESS || a.raw_json().get(raw) != SUCCESS) // validates and skips it
                return -1;
            f.type = IB_JSON_ARRAY;
            break;
        }
        default: {
            ondemand::object o;
            std::string_view raw;
            if (v.get_object().get(o) != SUCCESS || o.raw_json().get(raw) != SUCCESS)
                return -1;
            f.type = IB_JSON_OBJECT;
            break;
        }
        }
        if (int rc = fn(ctx, &f))
            return rc;
    }
    const char *trailing;
    if (doc.current_location().get(trailing) == SUCCESS)
        return -1;
    return 0;
}
