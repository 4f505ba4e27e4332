// ondemand_c, part two: reads a Hugging Face tokenizer.json (byte-level BPE) for ibrain's
// tokenizer (include/ibrain/ondemand_c.h). One pass over the document with On-Demand, in
// the file's own key order; tables go to the caller's callbacks, settings into a struct.
#include "ibrain/ondemand_c.h"

#include <simdjson.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string_view>
#include <vector>

using namespace simdjson;

namespace {

struct reader {
    const ib_bpe_json_visitor_t *v;
    ib_bpe_json_info_t *info;
    char *err;
    size_t errlen;
};

int fail(reader &r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int fail(reader &r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r.err, r.errlen, fmt, ap);
    va_end(ap);
    return -1;
}

ib_span_t span(std::string_view sv) { return ib_span_t{sv.data(), sv.size()}; }

void copy_to(char *dst, size_t cap, std::string_view sv)
{
    size_t n = sv.size() < cap - 1 ? sv.size() : cap - 1;
    memcpy(dst, sv.data(), n);
    dst[n] = '\0';
}

bool is_null(ondemand::value &val)
{
    bool n = false;
    return val.is_null().get(n) == SUCCESS && n;
}

int get_bool(ondemand::value val, int *out)
{
    bool b = false;
    if (is_null(val)) {
        *out = 0;
        return 0;
    }
    if (val.get_bool().get(b) != SUCCESS)
        return -1;
    *out = b ? 1 : 0;
    return 0;
}

// "normalizer": null, {"type":"NFC"}, or a Sequence whose members are all NFC.
int read_normalizer(reader &r, ondemand::value val)
{
    if (is_null(val))
        return 0;
    ondemand::object obj;
    if (val.get_object().get(obj) != SUCCESS)
        return fail(r, "normalizer: not an object");
    for (auto field : obj) {
        std::string_view key, type;
        if (field.unescaped_key().get(key) != SUCCESS)
            return fail(r, "normalizer: invalid JSON");
        if (key == "type") {
            if (field.value().get_string().get(type) != SUCCESS)
                return fail(r, "normalizer.type: not a string");
            if (type == "NFC")
                copy_to(r.info->normalizer, sizeof(r.info->normalizer), "NFC");
            else if (type != "Sequence")
                copy_to(r.info->normalizer, sizeof(r.info->normalizer), "unsupported");
        } else if (key == "normalizers") {
            ondemand::array arr;
            if (field.value().get_array().get(arr) != SUCCESS)
                return fail(r, "normalizer.normalizers: not an array");
            for (auto el : arr) {
                ondemand::value member;
                if (el.get(member) != SUCCESS || read_normalizer(r, member) != 0)
                    return fail(r, "normalizer.normalizers: invalid member");
            }
        }
    }
    return 0;
}

// One pre-tokenizer object: Split (regex) or ByteLevel; a Sequence recurses.
int read_pretokenizer(reader &r, ondemand::value val)
{
    if (is_null(val))
        return 0;
    ondemand::object obj;
    if (val.get_object().get(obj) != SUCCESS)
        return fail(r, "pre_tokenizer: not an object");
    std::string_view type, behavior, regex;
    int invert = 0, prefix = 0, use_regex = 0;
    for (auto field : obj) {
        std::string_view key;
        if (field.unescaped_key().get(key) != SUCCESS)
            return fail(r, "pre_tokenizer: invalid JSON");
        ondemand::value fv;
        if (field.value().get(fv) != SUCCESS)
            return fail(r, "pre_tokenizer: invalid JSON");
        if (key == "type") {
            if (fv.get_string().get(type) != SUCCESS)
                return fail(r, "pre_tokenizer.type: not a string");
        } else if (key == "pretokenizers") {
            ondemand::array arr;
            if (fv.get_array().get(arr) != SUCCESS)
                return fail(r, "pre_tokenizer.pretokenizers: not an array");
            for (auto el : arr) {
                ondemand::value member;
                if (el.get(member) != SUCCESS || read_pretokenizer(r, member) != 0)
                    return -1;
            }
        } else if (key == "pattern") {
            ondemand::object pat;
            if (fv.get_object().get(pat) != SUCCESS)
                return fail(r, "pre_tokenizer.pattern: not an object");
            for (auto pf : pat) {
                std::string_view pk;
                if (pf.unescaped_key().get(pk) != SUCCESS)
                    return fail(r, "pre_tokenizer.pattern: invalid JSON");
                if (pk != "Regex")
                    return fail(r, "pre_tokenizer.pattern: only Regex patterns are supported");
                if (pf.value().get_string().get(regex) != SUCCESS)
                    return fail(r, "pre_tokenizer.pattern.Regex: not a string");
                if (regex.size() >= sizeof(r.info->split_regex))
                    return fail(r, "pre_tokenizer.pattern.Regex: longer than %zu bytes",
                                sizeof(r.info->split_regex) - 1);
                copy_to(r.info->split_regex, sizeof(r.info->split_regex), regex);
            }
        } else if (key == "behavior") {
            if (fv.get_string().get(behavior) != SUCCESS)
                return fail(r, "pre_tokenizer.behavior: not a string");
        } else if (key == "invert") {
            if (get_bool(fv, &invert) != 0)
                return fail(r, "pre_tokenizer.invert: not a boolean");
        } else if (key == "add_prefix_space") {
            if (get_bool(fv, &prefix) != 0)
                return fail(r, "pre_tokenizer.add_prefix_space: not a boolean");
        } else if (key == "use_regex") {
            if (get_bool(fv, &use_regex) != 0)
                return fail(r, "pre_tokenizer.use_regex: not a boolean");
        }
    }
    // Views into the document stay valid while it is walked: "type" may come first.
    if (type == "Split") {
        if (regex.empty())
            return fail(r, "pre_tokenizer: a Split without a Regex pattern is not supported");
        r.info->split_isolated = behavior == "Isolated" && !invert;
    } else if (type == "ByteLevel") {
        r.info->byte_level = 1;
        r.info->byte_level_prefix = prefix;
        r.info->byte_level_regex = use_regex;
    } else if (type != "Sequence") {
        return fail(r, "pre_tokenizer: type '%.*s' is not supported", (int)type.size(), type.data());
    }
    return 0;
}

int read_added(reader &r, ondemand::value val)
{
    ondemand::array arr;
    if (val.get_array().get(arr) != SUCCESS)
        return fail(r, "added_tokens: not an array");
    for (auto el : arr) {
        ondemand::object obj;
        if (el.get_object().get(obj) != SUCCESS)
            return fail(r, "added_tokens: member is not an object");
        std::string_view content;
        int64_t id = -1;
        int special = 0, lstrip = 0, rstrip = 0, single_word = 0;
        for (auto field : obj) {
            std::string_view key;
            ondemand::value fv;
            if (field.unescaped_key().get(key) != SUCCESS || field.value().get(fv) != SUCCESS)
                return fail(r, "added_tokens: invalid JSON");
            int bad = 0;
            if (key == "id")
                bad = fv.get_int64().get(id) != SUCCESS;
            else if (key == "content")
                bad = fv.get_string().get(content) != SUCCESS;
            else if (key == "special")
                bad = get_bool(fv, &special);
            else if (key == "lstrip")
                bad = get_bool(fv, &lstrip);
            else if (key == "rstrip")
                bad = get_bool(fv, &rstrip);
            else if (key == "single_word")
                bad = get_bool(fv, &single_word);
            if (bad)
                return fail(r, "added_tokens: '%.*s' has the wrong type", (int)key.size(), key.data());
        }
        if (id < 0 || content.empty())
            return fail(r, "added_tokens: a token lacks 'id' or 'content'");
        if (r.v->added(r.v->ctx, span(content), id, special, lstrip, rstrip, single_word) != 0)
            return fail(r, "added_tokens: token %lld rejected", (long long)id);
    }
    return 0;
}

int read_merges(reader &r, ondemand::value val)
{
    ondemand::array arr;
    if (val.get_array().get(arr) != SUCCESS)
        return fail(r, "model.merges: not an array");
    size_t rank = 0;
    for (auto el : arr) {
        ondemand::value m;
        if (el.get(m) != SUCCESS)
            return fail(r, "model.merges[%zu]: invalid JSON", rank);
        ondemand::json_type t;
        if (m.type().get(t) != SUCCESS)
            return fail(r, "model.merges[%zu]: invalid JSON", rank);
        std::string_view a, b;
        if (t == ondemand::json_type::string) { // "left right" (older files)
            std::string_view s;
            if (m.get_string().get(s) != SUCCESS)
                return fail(r, "model.merges[%zu]: invalid string", rank);
            size_t sp = s.find(' ', 1);
            if (sp == std::string_view::npos)
                return fail(r, "model.merges[%zu]: no space in \"%.*s\"", rank, (int)s.size(), s.data());
            a = s.substr(0, sp);
            b = s.substr(sp + 1);
            if (r.v->merge(r.v->ctx, span(a), span(b)) != 0)
                return fail(r, "model.merges[%zu]: rejected", rank);
        } else if (t == ondemand::json_type::array) { // ["left", "right"]
            ondemand::array pair;
            if (m.get_array().get(pair) != SUCCESS)
                return fail(r, "model.merges[%zu]: invalid array", rank);
            // Both strings must outlive the walk of the pair: copy the first one.
            std::string left;
            int n = 0;
            for (auto pe : pair) {
                std::string_view s;
                if (pe.get_string().get(s) != SUCCESS)
                    return fail(r, "model.merges[%zu]: not a pair of strings", rank);
                if (n == 0)
                    left.assign(s.data(), s.size());
                else
                    b = s;
                n++;
            }
            if (n != 2)
                return fail(r, "model.merges[%zu]: not a pair of strings", rank);
            if (r.v->merge(r.v->ctx, ib_span_t{left.data(), left.size()}, span(b)) != 0)
                return fail(r, "model.merges[%zu]: rejected", rank);
        } else {
            return fail(r, "model.merges[%zu]: neither a string nor a pair", rank);
        }
        rank++;
    }
    return 0;
}

int read_model(reader &r, ondemand::value val)
{
    ondemand::object obj;
    if (val.get_object().get(obj) != SUCCESS)
        return fail(r, "model: not an object");
    bool have_vocab = false, have_merges = false;
    for (auto field : obj) {
        std::string_view key;
        ondemand::value fv;
        if (field.unescaped_key().get(key) != SUCCESS || field.value().get(fv) != SUCCESS)
            return fail(r, "model: invalid JSON");
        if (key == "type") {
            std::string_view t;
            if (fv.get_string().get(t) != SUCCESS)
                return fail(r, "model.type: not a string");
            copy_to(r.info->model_type, sizeof(r.info->model_type), t);
        } else if (key == "ignore_merges") {
            if (get_bool(fv, &r.info->ignore_merges) != 0)
                return fail(r, "model.ignore_merges: not a boolean");
        } else if (key == "byte_fallback") {
            if (get_bool(fv, &r.info->byte_fallback) != 0)
                return fail(r, "model.byte_fallback: not a boolean");
        } else if (key == "vocab") {
            ondemand::object vocab;
            if (fv.get_object().get(vocab) != SUCCESS)
                return fail(r, "model.vocab: not an object");
            for (auto entry : vocab) {
                std::string_view tok;
                int64_t id;
                if (entry.unescaped_key().get(tok) != SUCCESS || entry.value().get_int64().get(id) != SUCCESS)
                    return fail(r, "model.vocab: entries must map strings to integers");
                if (r.v->vocab(r.v->ctx, span(tok), id) != 0)
                    return fail(r, "model.vocab: entry %lld rejected", (long long)id);
            }
            have_vocab = true;
        } else if (key == "merges") {
            if (!have_vocab)
                return fail(r, "model: 'merges' comes before 'vocab'");
            if (read_merges(r, fv) != 0)
                return -1;
            have_merges = true;
        }
    }
    if (!have_vocab || !have_merges)
        return fail(r, "model: 'vocab' and 'merges' are required");
    return 0;
}

} // namespace

extern "C" int ib_json_read_bpe(const char *json, size_t len, size_t capacity, const ib_bpe_json_visitor_t *v,
                                ib_bpe_json_info_t *info, char *err, size_t errlen)
{
    memset(info, 0, sizeof(*info));
    reader r{v, info, err, errlen};
    std::vector<char> copy;
    if (capacity < len + SIMDJSON_PADDING) {
        copy.resize(len + SIMDJSON_PADDING);
        memcpy(copy.data(), json, len);
        json = copy.data();
    }
    ondemand::parser parser;
    ondemand::document doc;
    if (parser.iterate(json, len, len + SIMDJSON_PADDING).get(doc) != SUCCESS)
        return fail(r, "not a JSON document");
    ondemand::object top;
    if (doc.get_object().get(top) != SUCCESS)
        return fail(r, "not a JSON object");
    bool have_model = false;
    for (auto field : top) {
        std::string_view key;
        ondemand::value fv;
        if (field.unescaped_key().get(key) != SUCCESS || field.value().get(fv) != SUCCESS)
            return fail(r, "invalid JSON");
        int rc = 0;
        if (key == "added_tokens")
            rc = read_added(r, fv);
        else if (key == "normalizer")
            rc = read_normalizer(r, fv);
        else if (key == "pre_tokenizer") {
            rc = read_pretokenizer(r, fv);
        } else if (key == "model") {
            rc = read_model(r, fv);
            have_model = true;
        }
        if (rc != 0)
            return -1;
    }
    if (!have_model)
        return fail(r, "no 'model'");
    return 0;
}

extern "C" int ib_utf8_valid(const char *s, size_t len) { return simdjson::validate_utf8(s, len) ? 1 : 0; }
