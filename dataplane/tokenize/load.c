/* Loading a tokenizer.json into the tables of internal.h; decoding; lookups. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "ibrain/clock.h"
#include "ibrain/ondemand_c.h"

/* ---- the byte-level alphabet ---- */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * map to U+0100.. in byte order. Returns the byte of code point <cp>, or -1. */
static int byte_of_codepoint(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp < 256 || cp >= 256 + 68)
        return -1;
    uint32_t k = cp - 256; /* the k-th byte outside the printable ranges */
    for (uint32_t b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        if (!printable && k-- == 0)
            return (int)b;
    }
    return -1;
}

/* Converts a byte-level string (UTF-8 of mapped code points) to raw bytes in <out> (at
 * least <n> bytes). Returns the length, or -1 when a code point is not in the alphabet. */
static long unmap_bytes(const char *s, size_t n, char *out)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        if (p[i] < 0x80) {
            cp = p[i++];
        } else if ((p[i] & 0xE0) == 0xC0 && i + 1 < n) {
            cp = (uint32_t)(p[i] & 0x1F) << 6 | (p[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1; /* the alphabet ends at U+0143: two bytes at most */
        }
        int b = byte_of_codepoint(cp);
        if (b < 0)
            return -1;
        out[o++] = (char)b;
    }
    return (long)o;
}

/* ---- building ---- */

typedef struct loader {
    ib_tokenizer_t *t;
    char scratch[1024];
    char err[160];
} loader_t;

static int grow_ids(ib_tokenizer_t *t, uint32_t id)
{
    if (id < t->ntok)
        return 0;
    if (id >= 1u << 24)
        return -1;
    uint32_t n = id + 1, cap = 1;
    while (cap < n)
        cap <<= 1;
    uint32_t *off = realloc(t->tok_off, cap * sizeof(*off));
    if (off == NULL)
        return -1;
    t->tok_off = off;
    uint32_t *len = realloc(t->tok_len, cap * sizeof(*len));
    if (len == NULL)
        return -1;
    t->tok_len = len;
    uint8_t *sp = realloc(t->tok_special, cap);
    if (sp == NULL)
        return -1;
    t->tok_special = sp;
    for (uint32_t i = t->ntok; i < cap; i++) {
        t->tok_len[i] = UINT32_MAX;
        t->tok_off[i] = 0;
        t->tok_special[i] = 0;
    }
    t->ntok = n;
    return 0;
}

static long arena_put(ib_tokenizer_t *t, const char *p, size_t n)
{
    if (t->arena_len + n > t->arena_cap) {
        size_t cap = t->arena_cap ? t->arena_cap * 2 : 1 << 20;
        while (cap < t->arena_len + n)
            cap *= 2;
        char *a = realloc(t->arena, cap);
        if (a == NULL)
            return -1;
        t->arena = a;
        t->arena_cap = cap;
    }
    memcpy(t->arena + t->arena_len, p, n);
    t->arena_len += n;
    return (long)(t->arena_len - n);
}

static uint32_t vhash(const char *p, size_t n) { return (uint32_t)XXH3_64bits(p, n); }

uint32_t ib_tok_vocab_lookup(const ib_tokenizer_t *t, const char *p, size_t n)
{
    for (uint32_t i = vhash(p, n) & t->vmask;; i = (i + 1) & t->vmask) {
        uint32_t v = t->vmap[i];
        if (v == 0)
            return IB_TOK_NONE;
        uint32_t id = v - 1;
        if (t->tok_len[id] == n && memcmp(t->arena + t->tok_off[id], p, n) == 0)
            return id;
    }
}

static int vmap_insert(ib_tokenizer_t *t, uint32_t id);

static int vmap_grow(ib_tokenizer_t *t)
{
    uint32_t *old = t->vmap, oldmask = t->vmask;
    uint32_t cap = old ? (oldmask + 1) * 2 : 1 << 16;
    t->vmap = calloc(cap, sizeof(*t->vmap));
    if (t->vmap == NULL) {
        t->vmap = old;
        return -1;
    }
    t->vmask = cap - 1;
    t->nvocab = 0;
    if (old != NULL) {
        for (uint32_t i = 0; i <= oldmask; i++)
            if (old[i] != 0)
                vmap_insert(t, old[i] - 1);
        free(old);
    }
    return 0;
}

/* Inserts token <id> (its bytes already in the arena). Duplicated bytes keep the first id. */
static int vmap_insert(ib_tokenizer_t *t, uint32_t id)
{
    if (t->vmap == NULL || (t->nvocab + 1) * 2 > t->vmask + 1)
        if (vmap_grow(t) != 0)
            return -1;
    const char *p = t->arena + t->tok_off[id];
    size_t n = t->tok_len[id];
    for (uint32_t i = vhash(p, n) & t->vmask;; i = (i + 1) & t->vmask) {
        uint32_t v = t->vmap[i];
        if (v == 0) {
            t->vmap[i] = id + 1;
            t->nvocab++;
            return 0;
        }
        if (t->tok_len[v - 1] == n && memcmp(t->arena + t->tok_off[v - 1], p, n) == 0)
            return 0;
    }
}

static int on_vocab(void *ctx, ib_span_t tok, int64_t id)
{
    loader_t *l = ctx;
    ib_tokenizer_t *t = l->t;
    if (id < 0 || tok.len == 0 || tok.len > sizeof(l->scratch) || grow_ids(t, (uint32_t)id) != 0) {
        snprintf(l->err, sizeof(l->err), "vocabulary entry %lld is invalid", (long long)id);
        return -1;
    }
    long n = unmap_bytes(tok.ptr, tok.len, l->scratch);
    if (n <= 0) {
        snprintf(l->err, sizeof(l->err), "vocabulary entry %lld is not byte-level", (long long)id);
        return -1;
    }
    if (t->tok_len[id] != UINT32_MAX) /* an added token took this id first */
        return 0;
    long off = arena_put(t, l->scratch, (size_t)n);
    if (off < 0)
        return -1;
    t->tok_off[id] = (uint32_t)off;
    t->tok_len[id] = (uint32_t)n;
    if (n == 1)
        t->byte_id[(unsigned char)l->scratch[0]] = (uint32_t)id;
    return vmap_insert(t, (uint32_t)id);
}

static int merge_insert(ib_tokenizer_t *t, uint64_t key, uint32_t rank, uint32_t res)
{
    for (uint32_t i = (uint32_t)ib_tok_mix64(key) & t->mmask;; i = (i + 1) & t->mmask) {
        ib_merge_slot_t *m = &t->merges[i];
        if (m->key == key)
            return 0; /* a pair listed twice keeps its first (lowest) rank */
        if (m->key == 0) {
            *m = (ib_merge_slot_t){key, rank, res};
            return 1;
        }
    }
}

static int merges_grow(ib_tokenizer_t *t)
{
    ib_merge_slot_t *old = t->merges;
    uint32_t omask = t->mmask;
    uint32_t cap = old ? (omask + 1) * 2 : 1 << 18;
    t->merges = calloc(cap, sizeof(*t->merges));
    if (t->merges == NULL) {
        t->merges = old;
        return -1;
    }
    t->mmask = cap - 1;
    if (old != NULL) {
        for (uint32_t i = 0; i <= omask; i++)
            if (old[i].key != 0)
                merge_insert(t, old[i].key, old[i].rank, old[i].res);
        free(old);
    }
    return 0;
}

static int on_merge(void *ctx, ib_span_t left, ib_span_t right)
{
    loader_t *l = ctx;
    ib_tokenizer_t *t = l->t;
    uint32_t rank = t->nmerges + t->merges_skipped;
    if (left.len + right.len > sizeof(l->scratch)) {
        t->merges_skipped++;
        return 0;
    }
    long a = unmap_bytes(left.ptr, left.len, l->scratch);
    long b = a > 0 ? unmap_bytes(right.ptr, right.len, l->scratch + a) : -1;
    if (a <= 0 || b <= 0) {
        snprintf(l->err, sizeof(l->err), "merge %u is not byte-level", rank);
        return -1;
    }
    uint32_t ia = ib_tok_vocab_lookup(t, l->scratch, (size_t)a);
    uint32_t ib = ib_tok_vocab_lookup(t, l->scratch + a, (size_t)b);
    uint32_t ir = ib_tok_vocab_lookup(t, l->scratch, (size_t)(a + b));
    if (ia == IB_TOK_NONE || ib == IB_TOK_NONE || ir == IB_TOK_NONE) {
        t->merges_skipped++;
        return 0;
    }
    if (t->merges == NULL || (t->nmerges + 1) * 2 > t->mmask + 1)
        if (merges_grow(t) != 0)
            return -1;
    uint64_t key = ((uint64_t)ia << 32 | ib) + 1;
    if (merge_insert(t, key, rank, ir) == 1)
        t->nmerges++;
    else
        t->merges_skipped++;
    return 0;
}

static int on_added(void *ctx, ib_span_t content, int64_t id, int special, int lstrip, int rstrip, int single_word)
{
    loader_t *l = ctx;
    ib_tokenizer_t *t = l->t;
    if (lstrip || rstrip || single_word) {
        snprintf(l->err, sizeof(l->err), "added token %lld: lstrip/rstrip/single_word are not supported",
                 (long long)id);
        return -1;
    }
    if (content.len == 0) { /* it would match everywhere, and the scan would not move */
        snprintf(l->err, sizeof(l->err), "added token %lld: empty content", (long long)id);
        return -1;
    }
    if (id < 0 || content.len > 256 || grow_ids(t, (uint32_t)id) != 0)
        return -1;
    long off = arena_put(t, content.ptr, content.len);
    if (off < 0)
        return -1;
    t->tok_off[id] = (uint32_t)off;
    t->tok_len[id] = (uint32_t)content.len;
    t->tok_special[id] = special ? 1 : 0;
    ib_added_token_t *a = realloc(t->added, (t->nadded + 1) * sizeof(*a));
    if (a == NULL)
        return -1;
    t->added = a;
    t->added[t->nadded++] = (ib_added_token_t){.off = (uint32_t)off, .len = (uint32_t)content.len, .id = (uint32_t)id,
                                                   .special = (uint8_t)special}; /* head: index_added */
    return 0;
}

/* Order of added tokens: by first byte, longest first (the reference splitter's leftmost-
 * longest rule). */
static int added_cmp_arena(const ib_added_token_t *x, const ib_added_token_t *y, const char *arena)
{
    unsigned char fx = (unsigned char)arena[x->off], fy = (unsigned char)arena[y->off];
    if (fx != fy)
        return fx < fy ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static void index_added(ib_tokenizer_t *t)
{
    /* insertion sort: a few hundred tokens, once */
    for (uint32_t i = 1; i < t->nadded; i++) {
        ib_added_token_t k = t->added[i];
        uint32_t j = i;
        while (j > 0 && added_cmp_arena(&k, &t->added[j - 1], t->arena) < 0) {
            t->added[j] = t->added[j - 1];
            j--;
        }
        t->added[j] = k;
    }
    uint32_t i = 0;
    for (uint32_t b = 0; b <= 256; b++) {
        while (i < t->nadded && (unsigned char)t->arena[t->added[i].off] < b)
            i++;
        t->added_first[b] = i;
    }
    for (uint32_t k = 0; k < t->nadded; k++) {
        ib_added_token_t *a = &t->added[k];
        unsigned char head[8] = {0}, mask[8] = {0};
        size_t n = a->len < 8 ? a->len : 8;
        memcpy(head, t->arena + a->off, n);
        memset(mask, 0xff, n);
        memcpy(&a->head, head, 8);
        memcpy(&a->head_mask, mask, 8);
    }
    t->added_lead = -1;
    for (uint32_t b = 0; b < 256; b++) {
        if (t->added_first[b] == t->added_first[b + 1])
            continue;
        if (t->added_first[b] != 0 || t->added_first[b + 1] != t->nadded)
            break; /* tokens start with more than one byte */
        t->added_lead = (int)b;
    }
}

/* ---- the regex, with Unicode's meaning of \s ---- */

/* Unicode White_Space: what \s matches in the engines' tokenizer (Hugging Face tokenizers,
 * Oniguruma) and in Python's regex. PCRE2's UCP \s is spelled out so that no library version
 * changes it. transformers.js (ECMAScript \s) differs on U+0085, which it does not count, and
 * U+FEFF, which it does; tests/integration/tokenizer_golden.sh checks both references. */
#define UNI_WS "\\t\\n\\x0B\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

static int translate_regex(const char *in, char *out, size_t cap, char *err, size_t errlen)
{
    /* (?i:) spelled as classes, as transformers.js does (old JS had no (?i:)); same matches. */
    static const char ci_from[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)";
    static const char ci_to[] = "(?:'([sS]|[tT]|[rR][eE]|[vV][eE]|[mM]|[lL][lL]|[dD]))";
    size_t o = 0;
    int inclass = 0;
#define PUT(str)                                                                                                   \
    do {                                                                                                           \
        size_t n_ = strlen(str);                                                                                   \
        if (o + n_ + 1 > cap)                                                                                      \
            goto toolong;                                                                                          \
        memcpy(out + o, str, n_);                                                                                  \
        o += n_;                                                                                                   \
    } while (0)
    for (size_t i = 0; in[i] != '\0';) {
        if (!inclass && strncmp(in + i, ci_from, sizeof(ci_from) - 1) == 0) {
            PUT(ci_to);
            i += sizeof(ci_from) - 1;
            continue;
        }
        char c = in[i];
        if (c == '\\' && in[i + 1] != '\0') {
            char e = in[i + 1];
            if (e == 's') {
                PUT(inclass ? UNI_WS : "[" UNI_WS "]");
            } else if (e == 'S') {
                if (inclass) {
                    snprintf(err, errlen, "regex: \\S inside a character class is not supported");
                    return -1;
                }
                PUT("[^" UNI_WS "]");
            } else {
                char two[3] = {c, e, 0};
                PUT(two);
            }
            i += 2;
            continue;
        }
        if (c == '[' && !inclass) {
            inclass = 1;
            PUT("[");
            i++;
            if (in[i] == '^') {
                PUT("^");
                i++;
            }
            if (in[i] == ']') { /* a literal ] first in a class */
                PUT("]");
                i++;
            }
            continue;
        }
        if (c == ']' && inclass)
            inclass = 0;
        char one[2] = {c, 0};
        PUT(one);
        i++;
    }
#undef PUT
    out[o] = '\0';
    return 0;
toolong:
    snprintf(err, errlen, "regex: too long after translation");
    return -1;
}

/* GPT-2's pattern, for a ByteLevel pre-tokenizer with use_regex and no Split. */
static const char gpt2_regex[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int compile_regex(ib_tokenizer_t *t, const char *src, char *err, size_t errlen)
{
    char pattern[2048];
    if (translate_regex(src, pattern, sizeof(pattern), err, errlen) != 0)
        return -1;
    int ec;
    PCRE2_SIZE eo;
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &ec,
                          &eo, NULL);
    if (t->re == NULL) {
        PCRE2_UCHAR msg[120];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errlen, "regex: %s at offset %zu", (const char *)msg, (size_t)eo);
        return -1;
    }
    if (pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) != 0) {
        snprintf(err, errlen, "regex: PCRE2 JIT is not available");
        return -1;
    }
    return 0;
}

/* ---- public ---- */

ib_tokenizer_t *ib_tokenizer_load_mem(const char *json, size_t len, char *err, size_t errlen)
{
    uint64_t t0 = ib_now_ns();
    ib_tokenizer_t *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (int b = 0; b < 256; b++)
        t->byte_id[b] = IB_TOK_NONE;
    loader_t l = {.t = t};
    ib_bpe_json_visitor_t v = {.ctx = &l, .vocab = on_vocab, .merge = on_merge, .added = on_added};
    ib_bpe_json_info_t info;
    if (ib_json_read_bpe(json, len, len, &v, &info, err, errlen) != 0) {
        if (l.err[0] != '\0')
            snprintf(err, errlen, "%s", l.err);
        goto fail;
    }
    if (strcmp(info.model_type, "BPE") != 0) {
        snprintf(err, errlen, "model type '%s' is not supported (BPE only)", info.model_type);
        goto fail;
    }
    if (!info.byte_level || info.byte_level_prefix || info.byte_fallback) {
        snprintf(err, errlen, "only byte-level BPE without prefix space or byte fallback is supported");
        goto fail;
    }
    if (strcmp(info.normalizer, "unsupported") == 0) {
        snprintf(err, errlen, "normalizer is not supported (none or NFC only)");
        goto fail;
    }
    for (int b = 0; b < 256; b++)
        if (t->byte_id[b] == IB_TOK_NONE) {
            snprintf(err, errlen, "byte 0x%02x has no token", b);
            goto fail;
        }
    const char *src = info.split_regex[0] != '\0' ? info.split_regex : info.byte_level_regex ? gpt2_regex : NULL;
    if (src == NULL || (info.split_regex[0] != '\0' && !info.split_isolated)) {
        snprintf(err, errlen, "pre-tokenizer: an isolated Split regex (or ByteLevel use_regex) is required");
        goto fail;
    }
    if (compile_regex(t, src, err, errlen) != 0)
        goto fail;
    index_added(t);
    t->nfc = strcmp(info.normalizer, "NFC") == 0;
    t->ignore_merges = info.ignore_merges;
    t->load_ms = (double)(ib_now_ns() - t0) / 1e6;
    return t;
fail:
    ib_tokenizer_free(t);
    return NULL;
}

ib_tokenizer_t *ib_tokenizer_load(const char *path, char *err, size_t errlen)
{
    uint64_t t0 = ib_now_ns();
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > (1L << 30)) {
        snprintf(err, errlen, "%s: not a regular file of at most 1 GiB", path);
        close(fd);
        return NULL;
    }
    size_t len = (size_t)st.st_size;
    char *buf = malloc(len + IB_JSON_PADDING);
    size_t got = 0;
    while (buf != NULL && got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (buf == NULL || got != len) {
        snprintf(err, errlen, "%s: read failed", path);
        free(buf);
        return NULL;
    }
    memset(buf + len, 0, IB_JSON_PADDING);
    ib_tokenizer_t *t = ib_tokenizer_load_mem(buf, len, err, errlen);
    free(buf);
    if (t != NULL)
        t->load_ms = (double)(ib_now_ns() - t0) / 1e6;
    return t;
}

void ib_tokenizer_free(ib_tokenizer_t *t)
{
    if (t == NULL)
        return;
    free(t->arena);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_special);
    free(t->vmap);
    free(t->merges);
    free(t->added);
    pcre2_code_free(t->re);
    free(t);
}

void ib_tokenizer_get_info(const ib_tokenizer_t *t, ib_tokenizer_info_t *out)
{
    memset(out, 0, sizeof(*out));
    out->vocab_size = t->ntok;
    out->nmerges = t->nmerges;
    out->nadded = t->nadded;
    out->nfc = t->nfc;
    out->ignore_merges = t->ignore_merges;
    size_t re_size = 0;
    pcre2_pattern_info(t->re, PCRE2_INFO_SIZE, &re_size);
    size_t jit_size = 0;
    pcre2_pattern_info(t->re, PCRE2_INFO_JITSIZE, &jit_size);
    out->memory_bytes = t->arena_cap + (size_t)t->ntok * (2 * sizeof(uint32_t) + 1) +
                        (size_t)(t->vmask + 1) * sizeof(uint32_t) +
                        (size_t)(t->mmask + 1) * sizeof(ib_merge_slot_t) +
                        t->nadded * sizeof(ib_added_token_t) + re_size + jit_size;
    out->load_ms = t->load_ms;
}

int64_t ib_tokenizer_token_id(const ib_tokenizer_t *t, const char *text, size_t len)
{
    for (uint32_t i = 0; i < t->nadded; i++)
        if (t->added[i].len == len && memcmp(t->arena + t->added[i].off, text, len) == 0)
            return t->added[i].id;
    uint32_t id = ib_tok_vocab_lookup(t, text, len);
    return id == IB_TOK_NONE ? -1 : (int64_t)id;
}

int ib_detokenize(const ib_tokenizer_t *t, const uint32_t *ids, size_t n, unsigned flags, ib_buf_t *out)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t id = ids[i];
        if (id >= t->ntok || t->tok_len[id] == UINT32_MAX)
            continue;
        if ((flags & IB_TOK_SKIP_SPECIAL) && t->tok_special[id])
            continue;
        if (ib_buf_try_append(out, t->arena + t->tok_off[id], t->tok_len[id]) != 0)
            return -1;
    }
    return 0;
}

void ib_tok_ids_free(ib_tok_ids_t *ids)
{
    free(ids->ids);
    ids->ids = NULL;
    ids->len = ids->cap = 0;
}
