/*
 * ondemand_c: the C face of simdjson's On-Demand API, as ibrain uses it.
 *
 * Two jobs: parse an OpenAI request body (chat completions or completions) once, in place,
 * into spans that point into the parser's own string buffer; and read single values out
 * of small JSON documents by JSON pointer (response chunks, usage objects).
 *
 * Padding: simdjson reads up to IB_JSON_PADDING bytes past the end of the document. When
 * the caller's buffer has that many spare bytes (capacity >= len + IB_JSON_PADDING) the
 * body is parsed where it lies; otherwise it is copied into the parser's scratch buffer.
 *
 * Lifetime: every span a parse returns stays valid until the next call on the same parser.
 * A parser is single-threaded: one per thread.
 */
#ifndef IBRAIN_ONDEMAND_C_H
#define IBRAIN_ONDEMAND_C_H

#include <stddef.h>
#include <stdint.h>

#include "ibrain/span.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- types ---- */

#define IB_JSON_PADDING 64

typedef enum ib_api_kind {
    IB_API_CHAT = 1,       /* POST /v1/chat/completions */
    IB_API_COMPLETION = 2, /* POST /v1/completions */
} ib_api_kind_t;

/** One chat message: role and the text parts of its content, in order. */
typedef struct ib_chat_message {
    ib_span_t role;
    uint32_t first_part; /* index into ib_oai_request_t.parts */
    uint32_t nparts;     /* 0 when content is null or empty */
} ib_chat_message_t;

/** What ibrain and the mock engine need to know of an OpenAI request. */
typedef struct ib_oai_request {
    ib_api_kind_t kind;
    ib_span_t model;
    const ib_chat_message_t *messages; /* chat: the messages, in order */
    uint32_t nmessages;
    const ib_span_t *parts; /* chat: content text parts; completions: prompt strings */
    uint32_t nparts;
    int stream;             /* "stream": true */
    int include_usage;      /* "stream_options": {"include_usage": true} */
    int64_t max_tokens;     /* max_tokens / max_completion_tokens, -1 when absent */
    ib_span_t user;         /* "user", empty when absent */
    ib_span_t session_id;   /* "session_id" or "isolation_id", empty when absent */
} ib_oai_request_t;

/** Why a parse failed: an HTTP status, an OpenAI error message, and the field it names. */
typedef struct ib_json_error {
    int status;        /* 400 */
    const char *param; /* the offending field ("messages[2].content"), static or in msg */
    char param_buf[64];
    char message[192];
} ib_json_error_t;

typedef struct ib_json_parser ib_json_parser_t; /* opaque: owns simdjson state and scratch */

/* ---- functions ---- */

/**
 * Creates a parser for documents of at most <max_doc_bytes>. NULL when out of memory.
 */
ib_json_parser_t *ib_json_parser_new(size_t max_doc_bytes);
void ib_json_parser_free(ib_json_parser_t *p);

/**
 * Parses an OpenAI request body of <kind>. <capacity> is the size of the buffer behind
 * <body> (>= len); pass len when unknown. Returns 0 and fills <out>, or -1 and fills <err>.
 * Checks: valid JSON object; "model" a non-empty string; chat: "messages" a non-empty array
 * of objects with a string "role" and "content" a string, null or an array of
 * {"type":"text","text":...} parts; completions: "prompt" a string or an array of strings;
 * "stream" a boolean; max tokens a non-negative integer. Unknown keys are skipped.
 */
int ib_oai_parse(ib_json_parser_t *p, ib_api_kind_t kind, const char *body, size_t len, size_t capacity,
                 ib_oai_request_t *out, ib_json_error_t *err);

/**
 * Reads the string at JSON pointer <ptr> (RFC 6901, e.g. "/choices/0/delta/content") of the
 * document <doc>. Returns 0 with <out> set (unescaped, valid until the next call), 1 when
 * the pointer does not exist or is null, -1 when the document is invalid or the value is
 * not a string.
 */
int ib_json_pointer_string(ib_json_parser_t *p, const char *doc, size_t len, const char *ptr, ib_span_t *out);

/** Same for an integer value. */
int ib_json_pointer_int(ib_json_parser_t *p, const char *doc, size_t len, const char *ptr, int64_t *out);

/** Same for a boolean (*out 0 or 1). */
int ib_json_pointer_bool(ib_json_parser_t *p, const char *doc, size_t len, const char *ptr, int *out);

/** The raw JSON text of the object at <ptr> (valid until the next call on <p>): 0, 1 when
 * the pointer does not exist or is null, -1 when invalid or not an object. */
int ib_json_pointer_raw(ib_json_parser_t *p, const char *doc, size_t len, const char *ptr, ib_span_t *out);
/** Called with the raw JSON text of one array element (an object); a nonzero return stops the walk. The
 * text lies in the parser's buffer: read it with another parser, before the next call on this one. */
typedef int (*ib_json_element_fn)(void *ctx, const char *elem, size_t len);
/** Calls <fn> for each element of the array at <ptr>, in order. 0, 1 when the pointer does
 * not exist or is null, -1 when invalid, not an array or an element is not an object, or what <fn> returned. */
int ib_json_pointer_each(ib_json_parser_t *p, const char *doc, size_t len, const char *ptr, ib_json_element_fn fn,
                         void *ctx);
/**
 * Reads the array of integers at <ptr> into a malloc'd array (*out, *n; free() it).
 * Returns 0, 1 when the pointer does not exist, -1 when invalid, not an array of integers,
 * or out of memory.
 */
int ib_json_pointer_int_array(ib_json_parser_t *p, const char *doc, size_t len, const char *ptr, int64_t **out,
                              size_t *n);

/* ---- flat JSON objects (REST request bodies) ---- */

typedef enum ib_json_type { IB_JSON_STRING, IB_JSON_NUMBER, IB_JSON_BOOL, IB_JSON_NULL, IB_JSON_ARRAY, IB_JSON_OBJECT } ib_json_type_t;

typedef struct ib_json_field {
    ib_span_t key;        /* unescaped, valid until the callback returns */
    ib_json_type_t type;
    ib_span_t str;        /* IB_JSON_STRING: unescaped */
    int64_t num;          /* IB_JSON_NUMBER when int_ok; IB_JSON_BOOL: 0 or 1 */
    int int_ok;           /* the number is an integer that fits int64 */
} ib_json_field_t;

/** Called for each member of the top-level object; a nonzero return stops the walk. */
typedef int (*ib_json_field_fn)(void *ctx, const ib_json_field_t *f);

/**
 * Walks the members of the JSON object <doc> (nested arrays and objects are checked and
 * reported by type only). Returns 0, -1 when <doc> is not one valid JSON object, or what
 * <fn> returned. <capacity> as for ib_oai_parse.
 */
int ib_json_object_fields(ib_json_parser_t *p, const char *doc, size_t len, size_t capacity, ib_json_field_fn fn,
                          void *ctx);

/* ---- tokenizer.json (Hugging Face tokenizers), read by ibrain's tokenizer ---- */

/** Callbacks for the tables of a byte-level BPE tokenizer.json; each returns 0 or -1 (stop). */
typedef struct ib_bpe_json_visitor {
    void *ctx;
    int (*vocab)(void *ctx, ib_span_t token, int64_t id);          /* model.vocab entries */
    int (*merge)(void *ctx, ib_span_t left, ib_span_t right);      /* model.merges, by rank */
    int (*added)(void *ctx, ib_span_t content, int64_t id, int special, int lstrip, int rstrip,
                 int single_word);                                  /* added_tokens */
} ib_bpe_json_visitor_t;

/** The settings of a tokenizer.json that ibrain's tokenizer acts on. */
typedef struct ib_bpe_json_info {
    char model_type[16];      /* "BPE" */
    char normalizer[16];      /* "" (none) or "NFC"; "unsupported" for anything else */
    char split_regex[512];    /* the pre-tokenizer's Split regex ("" when none) */
    int split_isolated;       /* Split behavior is "Isolated" and not inverted */
    int byte_level;           /* a ByteLevel pre-tokenizer is present */
    int byte_level_prefix;    /* its add_prefix_space */
    int byte_level_regex;     /* its use_regex (GPT-2's pattern) */
    int ignore_merges;        /* model.ignore_merges */
    int byte_fallback;        /* model.byte_fallback */
} ib_bpe_json_info_t;

/**
 * Walks a tokenizer.json of <len> bytes in a buffer of <capacity> bytes (copied into a
 * padded buffer when capacity < len + IB_JSON_PADDING), calling <v> for every vocabulary
 * entry, merge and added token, and fills <info>. Spans are valid only during a callback.
 * Returns 0, or -1 with a message in <err>.
 */
int ib_json_read_bpe(const char *json, size_t len, size_t capacity, const ib_bpe_json_visitor_t *v,
                     ib_bpe_json_info_t *info, char *err, size_t errlen);

/** 1 when <len> bytes at <s> are valid UTF-8 (simdjson's validator), else 0. */
int ib_utf8_valid(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif
