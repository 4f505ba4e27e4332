/* Encoding: UTF-8 repair, added-token split, NFC, regex pre-tokenization, BPE merges. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include <xxhash.h>

#include "ibrain/ondemand_c.h"

/* Pre-tokens up to this many bytes merge by scanning a rank array (quadratic, tiny n);
 * longer ones (runs of punctuation, whitespace) use a heap. */
#define BPE_SCAN_MAX 24

/* A direct-mapped cache of short pre-tokens and their ids, per thread: words repeat, and a
 * hit skips the merges. Entries are exact (bytes compared), so a hit is always right. */
#define CACHE_SLOTS 16384
#define CACHE_KEY_MAX 22
#define CACHE_IDS_MAX 8
typedef struct cache_entry {
    uint8_t len; /* 0 = empty */
    uint8_t nids;
    char key[CACHE_KEY_MAX];
    uint32_t ids[CACHE_IDS_MAX];
} cache_entry_t;

/* And one for longer pre-tokens (CJK runs, identifiers), as the reference caches words of
 * up to 256 characters. */
#define MCACHE_SLOTS 2048
#define MCACHE_KEY_MAX 126
#define MCACHE_IDS_MAX 32
typedef struct mcache_entry {
    uint8_t len;
    uint8_t nids;
    char key[MCACHE_KEY_MAX];
    uint32_t ids[MCACHE_IDS_MAX];
} mcache_entry_t;

/* A view of either cache's entry. */
typedef struct cache_ref {
    uint8_t *len, *nids;
    char *key;
    uint32_t *ids;
    uint32_t max_ids;
} cache_ref_t;

/* A cache of whole segments (the text between two added tokens, such as one chat message's
 * content): a conversation sends its history again every turn, and a segment's tokens
 * depend on its bytes only, because added tokens split the text before anything else runs.
 * Keyed by XXH3-128 and length; bounded in slots and in bytes. */
#define SEG_SLOTS 1024
#define SEG_MIN_BYTES 128
#define SEG_BUDGET_BYTES (8u << 20)
typedef struct seg_entry {
    XXH128_hash_t key;
    size_t len;
    uint32_t *ids;
    uint32_t nids;
} seg_entry_t;

struct ib_tok_state {
    const ib_tokenizer_t *t;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    char *clean; /* the text with invalid UTF-8 replaced */
    size_t clean_cap;
    /* BPE scratch, sized to the longest pre-token so far */
    uint32_t *sym;
    int32_t *next;
    int32_t *prev;
    uint32_t *rank;
    uint64_t *heap;
    size_t cap;
    cache_entry_t *cache; /* CACHE_SLOTS entries */
    mcache_entry_t *mcache; /* MCACHE_SLOTS entries */
    seg_entry_t *segs;    /* SEG_SLOTS entries */
    int segs_off;
    size_t seg_bytes;     /* held by segs[].ids */
};

ib_tok_state_t *ib_tok_state_new(const ib_tokenizer_t *t)
{
    ib_tok_state_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->t = t;
    s->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    s->mctx = pcre2_match_context_create(NULL);
    s->jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, NULL);
    s->cache = calloc(CACHE_SLOTS, sizeof(*s->cache));
    s->mcache = calloc(MCACHE_SLOTS, sizeof(*s->mcache));
    s->segs = calloc(SEG_SLOTS, sizeof(*s->segs));
    if (s->md == NULL || s->mctx == NULL || s->jit_stack == NULL || s->cache == NULL || s->mcache == NULL ||
        s->segs == NULL) {
        ib_tok_state_free(s);
        return NULL;
    }
    pcre2_jit_stack_assign(s->mctx, NULL, s->jit_stack);
    return s;
}

void ib_tok_state_free(ib_tok_state_t *s)
{
    if (s == NULL)
        return;
    pcre2_match_data_free(s->md);
    pcre2_match_context_free(s->mctx);
    pcre2_jit_stack_free(s->jit_stack);
    free(s->clean);
    free(s->sym);
    free(s->next);
    free(s->prev);
    free(s->rank);
    free(s->heap);
    free(s->cache);
    free(s->mcache);
    if (s->segs != NULL)
        for (size_t i = 0; i < SEG_SLOTS; i++)
            free(s->segs[i].ids);
    free(s->segs);
    free(s);
}

const ib_tokenizer_t *ib_tok_state_tokenizer(const ib_tok_state_t *s) { return s->t; }

void ib_tok_state_segment_cache(ib_tok_state_t *s, int on) { s->segs_off = !on; }

static int push(ib_tok_ids_t *out, uint32_t id)
{
    if (out->len == out->cap) {
        size_t cap = out->cap ? out->cap * 2 : 256;
        uint32_t *ids = realloc(out->ids, cap * sizeof(*ids));
        if (ids == NULL)
            return -1;
        out->ids = ids;
        out->cap = cap;
    }
    out->ids[out->len++] = id;
    return 0;
}

/* ---- UTF-8 repair: WHATWG decode with replacement, re-encoded ---- */

/* Writes <len> bytes of <in> to <out> (room for 3 * len bytes) with every maximal invalid
 * subsequence replaced by U+FFFD. Returns the output length. */
static size_t repair_utf8(const unsigned char *in, size_t len, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        unsigned char b = in[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xBF;
        if (b < 0x80) {
            out[o++] = (char)b;
            i++;
            continue;
        } else if (b >= 0xC2 && b <= 0xDF) {
            need = 1;
        } else if (b >= 0xE0 && b <= 0xEF) {
            need = 2;
            if (b == 0xE0)
                lo = 0xA0;
            if (b == 0xED)
                hi = 0x9F;
        } else if (b >= 0xF0 && b <= 0xF4) {
            need = 3;
            if (b == 0xF0)
                lo = 0x90;
            if (b == 0xF4)
                hi = 0x8F;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
            continue;
        }
        size_t k = 1;
        for (; k <= need && i + k < len; k++) {
            unsigned char c = in[i + k];
            if (c < lo || c > hi)
                break;
            lo = 0x80;
            hi = 0xBF;
        }
        if (k == need + 1) {
            memcpy(out + o, in + i, k);
            o += k;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += k;
    }
    return o;
}

/* ---- BPE ---- */

static int reserve(ib_tok_state_t *s, size_t n)
{
    if (n <= s->cap)
        return 0;
    size_t cap = s->cap ? s->cap : 64;
    while (cap < n)
        cap *= 2;
    uint32_t *sym = realloc(s->sym, cap * sizeof(*sym));
    if (sym)
        s->sym = sym;
    int32_t *next = realloc(s->next, cap * sizeof(*next));
    if (next)
        s->next = next;
    int32_t *prev = realloc(s->prev, cap * sizeof(*prev));
    if (prev)
        s->prev = prev;
    uint32_t *rank = realloc(s->rank, cap * sizeof(*rank));
    if (rank)
        s->rank = rank;
    uint64_t *heap = realloc(s->heap, 2 * cap * sizeof(*heap));
    if (heap)
        s->heap = heap;
    if (!sym || !next || !prev || !rank || !heap)
        return -1;
    s->cap = cap;
    return 0;
}

static inline uint32_t pair_rank(const ib_tokenizer_t *t, const ib_tok_state_t *s, int32_t i)
{
    uint32_t res = IB_TOK_NONE;
    int32_t j = s->next[i];
    return j < 0 ? IB_TOK_NONE : ib_tok_merge(t, s->sym[i], s->sym[j], &res);
}

/* Merges symbol <i> with its successor into <res>. */
static inline void merge_at(ib_tok_state_t *s, int32_t i, uint32_t res)
{
    int32_t j = s->next[i];
    s->sym[i] = res;
    s->next[i] = s->next[j];
    if (s->next[j] >= 0)
        s->prev[s->next[j]] = i;
    s->sym[j] = IB_TOK_NONE;
}

/* Small pre-tokens: keep the rank of each adjacent pair, merge the lowest (leftmost on a
 * tie), update the two ranks around it. */
static void bpe_scan(const ib_tokenizer_t *t, ib_tok_state_t *s, int32_t n)
{
    for (int32_t i = 0; i < n; i++)
        s->rank[i] = pair_rank(t, s, i);
    for (;;) {
        uint32_t best = IB_TOK_NONE;
        int32_t at = -1;
        for (int32_t i = 0; i >= 0; i = s->next[i])
            if (s->rank[i] < best) {
                best = s->rank[i];
                at = i;
            }
        if (at < 0)
            return;
        uint32_t res = IB_TOK_NONE;
        ib_tok_merge(t, s->sym[at], s->sym[s->next[at]], &res);
        merge_at(s, at, res);
        s->rank[at] = pair_rank(t, s, at);
        if (s->prev[at] >= 0)
            s->rank[s->prev[at]] = pair_rank(t, s, s->prev[at]);
    }
}

/* A binary min-heap of (rank << 32 | position): the lowest rank, then the leftmost. */
static void heap_push(uint64_t *h, size_t *n, uint64_t v)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (h[p] <= v)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && h[c + 1] < h[c])
            c++;
        if (v <= h[c])
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

/* Long pre-tokens: the same order with a heap; a popped entry whose pair has changed since
 * it was pushed is stale (a rank names one pair, so equal rank means the same merge). */
static void bpe_heap(const ib_tokenizer_t *t, ib_tok_state_t *s, int32_t n)
{
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < n; i++) {
        uint32_t r = pair_rank(t, s, i);
        if (r != IB_TOK_NONE)
            heap_push(s->heap, &hn, (uint64_t)r << 32 | (uint32_t)i);
    }
    while (hn > 0) {
        uint64_t e = heap_pop(s->heap, &hn);
        int32_t i = (int32_t)(uint32_t)e;
        uint32_t r = (uint32_t)(e >> 32);
        if (s->sym[i] == IB_TOK_NONE || s->next[i] < 0)
            continue;
        uint32_t res = IB_TOK_NONE;
        if (ib_tok_merge(t, s->sym[i], s->sym[s->next[i]], &res) != r)
            continue;
        merge_at(s, i, res);
        uint32_t ri = pair_rank(t, s, i);
        if (ri != IB_TOK_NONE)
            heap_push(s->heap, &hn, (uint64_t)ri << 32 | (uint32_t)i);
        int32_t p = s->prev[i];
        if (p >= 0) {
            uint32_t rp = pair_rank(t, s, p);
            if (rp != IB_TOK_NONE)
                heap_push(s->heap, &hn, (uint64_t)rp << 32 | (uint32_t)p);
        }
    }
}

static int bpe(ib_tok_state_t *s, const char *p, size_t n, ib_tok_ids_t *out)
{
    const ib_tokenizer_t *t = s->t;
    if (n == 1)
        return push(out, t->byte_id[(unsigned char)p[0]]);
    cache_ref_t ce = {0};
    if (n <= CACHE_KEY_MAX) {
        cache_entry_t *e = &s->cache[XXH3_64bits(p, n) & (CACHE_SLOTS - 1)];
        ce = (cache_ref_t){&e->len, &e->nids, e->key, e->ids, CACHE_IDS_MAX};
    } else if (n <= MCACHE_KEY_MAX) {
        mcache_entry_t *e = &s->mcache[XXH3_64bits(p, n) & (MCACHE_SLOTS - 1)];
        ce = (cache_ref_t){&e->len, &e->nids, e->key, e->ids, MCACHE_IDS_MAX};
    }
    if (ce.len != NULL && *ce.len == n && memcmp(ce.key, p, n) == 0) {
        for (uint32_t k = 0; k < *ce.nids; k++)
            if (push(out, ce.ids[k]) != 0)
                return -1;
        return 0;
    }
    if (t->ignore_merges) {
        uint32_t id = ib_tok_vocab_lookup(t, p, n);
        if (id != IB_TOK_NONE)
            return push(out, id);
    }
    if (n > INT32_MAX / 2 || reserve(s, n) != 0)
        return -1;
    int32_t m = (int32_t)n;
    for (int32_t i = 0; i < m; i++) {
        s->sym[i] = t->byte_id[(unsigned char)p[i]];
        s->next[i] = i + 1 < m ? i + 1 : -1;
        s->prev[i] = i - 1;
    }
    if (m <= BPE_SCAN_MAX)
        bpe_scan(t, s, m);
    else
        bpe_heap(t, s, m);
    size_t first = out->len;
    for (int32_t i = 0; i >= 0; i = s->next[i])
        if (push(out, s->sym[i]) != 0)
            return -1;
    if (ce.len != NULL && out->len - first <= ce.max_ids) {
        *ce.len = (uint8_t)n;
        *ce.nids = (uint8_t)(out->len - first);
        memcpy(ce.key, p, n);
        memcpy(ce.ids, out->ids + first, *ce.nids * sizeof(uint32_t));
    }
    return 0;
}

/* ---- pre-tokenization and segments ---- */

static int pretokenize(ib_tok_state_t *s, const char *p, size_t n, ib_tok_ids_t *out)
{
    PCRE2_SIZE at = 0;
    while (at < n) {
        int rc = pcre2_jit_match(s->t->re, (PCRE2_SPTR)p, n, at, 0, s->md, s->mctx);
        if (rc == PCRE2_ERROR_NOMATCH)
            return bpe(s, p + at, n - at, out); /* text between matches is kept too */
        if (rc < 0)
            return -1;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
        if (ov[0] > at && bpe(s, p + at, ov[0] - at, out) != 0)
            return -1;
        if (ov[1] > ov[0]) {
            if (bpe(s, p + ov[0], ov[1] - ov[0], out) != 0)
                return -1;
            at = ov[1];
        } else { /* an empty match: step over one character */
            at = ov[0] + 1;
            while (at < n && ((unsigned char)p[at] & 0xC0) == 0x80)
                at++;
            if (bpe(s, p + ov[0], at - ov[0], out) != 0)
                return -1;
        }
    }
    return 0;
}

/* Code points that are NFC_Quick_Check=Yes with combining class 0 and never combine with
 * what precedes them: text made only of these is already in NFC. Conservative: scripts that
 * take combining marks (and the marks themselves) are left to utf8proc. */
static int nfc_inert(uint32_t cp)
{
    return cp < 0x300 || (cp >= 0x2010 && cp <= 0x2027) || (cp >= 0x2030 && cp <= 0x205E) ||
           (cp >= 0x3001 && cp <= 0x3029) || (cp >= 0x3030 && cp <= 0x303F) || (cp >= 0x3041 && cp <= 0x3096) ||
           (cp >= 0x30A1 && cp <= 0x30FA) || (cp >= 0x3400 && cp <= 0x4DBF) || (cp >= 0x4E00 && cp <= 0x9FFF) ||
           (cp >= 0xAC00 && cp <= 0xD7A3) || (cp >= 0xFF01 && cp <= 0xFF5E);
}

/* 1 when NFC might change <p> (valid UTF-8). */
static int may_need_nfc(const char *p, size_t n)
{
    const unsigned char *u = (const unsigned char *)p;
    for (size_t i = 0; i < n;) {
        if (u[i] < 0xCC) { /* ASCII, U+0080..U+02FF and continuation bytes */
            i++;
            continue;
        }
        uint32_t cp;
        if (u[i] < 0xE0 && i + 1 < n) {
            cp = (uint32_t)(u[i] & 0x1F) << 6 | (u[i + 1] & 0x3F);
            i += 2;
        } else if (u[i] < 0xF0 && i + 2 < n) {
            cp = (uint32_t)(u[i] & 0x0F) << 12 | (uint32_t)(u[i + 1] & 0x3F) << 6 | (u[i + 2] & 0x3F);
            i += 3;
        } else {
            return 1;
        }
        if (!nfc_inert(cp))
            return 1;
    }
    return 0;
}

static int segment_uncached(ib_tok_state_t *s, const char *p, size_t n, ib_tok_ids_t *out);

static int segment(ib_tok_state_t *s, const char *p, size_t n, ib_tok_ids_t *out)
{
    if (n < SEG_MIN_BYTES || s->segs_off)
        return segment_uncached(s, p, n, out);
    XXH128_hash_t key = XXH3_128bits(p, n);
    seg_entry_t *e = &s->segs[key.low64 & (SEG_SLOTS - 1)];
    if (e->ids != NULL && e->len == n && XXH128_isEqual(e->key, key)) {
        if (out->len + e->nids > out->cap) {
            size_t cap = out->cap ? out->cap : 256;
            while (cap < out->len + e->nids)
                cap *= 2;
            uint32_t *ids = realloc(out->ids, cap * sizeof(*ids));
            if (ids == NULL)
                return -1;
            out->ids = ids;
            out->cap = cap;
        }
        memcpy(out->ids + out->len, e->ids, e->nids * sizeof(uint32_t));
        out->len += e->nids;
        return 0;
    }
    size_t first = out->len;
    if (segment_uncached(s, p, n, out) != 0)
        return -1;
    size_t nids = out->len - first, bytes = nids * sizeof(uint32_t);
    size_t held = e->ids != NULL ? e->nids * sizeof(uint32_t) : 0;
    if (s->seg_bytes - held + bytes > SEG_BUDGET_BYTES)
        return 0; /* over budget: not cached */
    uint32_t *copy = malloc(bytes ? bytes : 1);
    if (copy == NULL)
        return 0;
    memcpy(copy, out->ids + first, bytes);
    free(e->ids);
    s->seg_bytes = s->seg_bytes - held + bytes;
    *e = (seg_entry_t){key, n, copy, (uint32_t)nids};
    return 0;
}

/* The NFC form of <p> (malloc'd, length in *m) when the tokenizer normalizes and NFC may
 * change it; NULL when the text stands as it is (or utf8proc refused it, which it should
 * not on repaired UTF-8). */
static char *nfc_of(const ib_tokenizer_t *t, const char *p, size_t n, size_t *m)
{
    if (!t->nfc || !may_need_nfc(p, n))
        return NULL;
    utf8proc_uint8_t *norm = NULL;
    utf8proc_ssize_t len =
        utf8proc_map((const utf8proc_uint8_t *)p, (utf8proc_ssize_t)n, &norm, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (len < 0) {
        free(norm);
        return NULL;
    }
    *m = (size_t)len;
    return (char *)norm;
}

/* <text> with invalid UTF-8 replaced: <text> itself when valid, else the repair in *buf
 * (grown to 3 x len as needed). NULL when out of memory. */
static const char *repaired(const char *text, size_t *len, char **buf, size_t *cap)
{
    if (ib_utf8_valid(text, *len))
        return text;
    if (*len > SIZE_MAX / 3)
        return NULL;
    if (3 * *len + 1 > *cap) {
        char *c = realloc(*buf, 3 * *len + 1);
        if (c == NULL)
            return NULL;
        *buf = c;
        *cap = 3 * *len + 1;
    }
    *len = repair_utf8((const unsigned char *)text, *len, *buf);
    return *buf;
}

static int segment_uncached(ib_tok_state_t *s, const char *p, size_t n, ib_tok_ids_t *out)
{
    if (n == 0)
        return 0;
    size_t m;
    char *norm = nfc_of(s->t, p, n, &m);
    int rc = norm != NULL ? pretokenize(s, norm, m, out) : pretokenize(s, p, n, out);
    free(norm);
    return rc;
}

int ib_tokenize(ib_tok_state_t *s, const char *text, size_t len, unsigned flags, ib_tok_ids_t *out)
{
    const ib_tokenizer_t *t = s->t;
    if ((text = repaired(text, &len, &s->clean, &s->clean_cap)) == NULL)
        return -1;
    if ((flags & IB_TOK_NO_SPECIAL) || t->nadded == 0)
        return segment(s, text, len, out);
    size_t start = 0;
    for (size_t i = 0; i < len;) {
        if (t->added_lead >= 0) { /* skip to the next byte an added token can start with */
            const char *next = memchr(text + i, t->added_lead, len - i);
            if (next == NULL)
                break;
            i = (size_t)(next - text);
        }
        unsigned char b = (unsigned char)text[i];
        uint32_t lo = t->added_first[b], hi = t->added_first[b + 1];
        const ib_added_token_t *hit = NULL;
        /* the text's next 8 bytes against each candidate's first 8 (one compare instead
         * of a memcmp call per candidate: a '<' meets some 20 of them), then the rest */
        uint64_t next8 = 0;
        memcpy(&next8, text + i, len - i < 8 ? len - i : 8);
        for (uint32_t k = lo; k < hi; k++) {
            const ib_added_token_t *a = &t->added[k];
            if (a->len <= len - i && (next8 & a->head_mask) == a->head &&
                (a->len <= 8 || memcmp(text + i + 8, t->arena + a->off + 8, a->len - 8) == 0)) {
                hit = a;
                break;
            }
        }
        if (hit == NULL) {
            i++;
            continue;
        }
        if (segment(s, text + start, i - start, out) != 0 || push(out, hit->id) != 0)
            return -1;
        i += hit->len;
        start = i;
    }
    return segment(s, text + start, len - start, out);
}

int ib_tokenizer_normalize(const ib_tokenizer_t *t, const char *text, size_t len, ib_buf_t *out)
{
    char *clean = NULL;
    size_t cap = 0;
    if ((text = repaired(text, &len, &clean, &cap)) == NULL)
        return -1;
    /* Added tokens are ASCII in both families and NFC leaves ASCII alone, so normalizing
     * the whole text equals normalizing the pieces between them. */
    size_t m;
    char *norm = nfc_of(t, text, len, &m);
    int rc = norm != NULL ? ib_buf_try_append(out, norm, m) : ib_buf_try_append(out, text, len);
    free(norm);
    free(clean);
    return rc;
}
