/*
 * ib-tokenize: the tokenizer library from the command line.
 *
 *   ib-tokenize --tokenizer FILE info                 load time, memory, sizes (JSON)
 *   ib-tokenize --tokenizer FILE encode [--no-special] < text      ids, one line
 *   ib-tokenize --tokenizer FILE decode [--skip-special] < ids     text
 *   ib-tokenize --tokenizer FILE hex-lines [--no-special] < lines  one hex string per line
 *                                                      in, one line of ids per line out
 *   ib-tokenize --tokenizer FILE chat-lines --template T < lines   one chat request body
 *                                                      (JSON) per line, rendered, encoded
 *   ib-tokenize --tokenizer FILE roundtrip-lines < lines  decode(encode(s)) == s for every
 *                                                      valid UTF-8 hex line (NFC(s) for a
 *                                                      tokenizer that normalizes); exit 1 if not
 *   ib-tokenize --tokenizer FILE bench [--seconds S] FILE...   MB/s and tokens/s per file
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ibrain/chat.h"
#include "ibrain/clock.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/tokenizer.h"

static void usage(void)
{
    fprintf(stderr, "usage: ib-tokenize --tokenizer FILE "
                    "info|encode|decode|hex-lines|chat-lines|roundtrip-lines|bench [options] [FILE...]\n"
                    "  --no-special     added tokens in the text are plain text (encode, hex-lines)\n"
                    "  --skip-special   leave special tokens out (decode)\n"
                    "  --template T     chat template for chat-lines: llama3 | chatml | qwen3\n"
                    "  --seconds S      bench: time per file (default 2)\n");
    exit(2);
}

static char *read_all(FILE *f, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + IB_JSON_PADDING);
    while (buf != NULL) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
        if (n == cap) {
            cap *= 2;
            char *b = realloc(buf, cap + IB_JSON_PADDING);
            if (b == NULL) {
                free(buf);
                return NULL;
            }
            buf = b;
        }
    }
    if (buf != NULL)
        memset(buf + n, 0, IB_JSON_PADDING);
    *len = n;
    return buf;
}

static void print_ids(const ib_tok_ids_t *ids)
{
    for (size_t i = 0; i < ids->len; i++)
        printf(i ? " %u" : "%u", ids->ids[i]);
    putchar('\n');
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes a hex line in place; returns its byte length or -1. */
static long unhex(char *line, size_t n)
{
    if (n % 2 != 0)
        return -1;
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval((unsigned char)line[2 * i]), lo = hexval((unsigned char)line[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        line[i] = (char)(hi << 4 | lo);
    }
    return (long)(n / 2);
}

static size_t chomp(char *line, size_t n)
{
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    return n;
}

/* Throughput of the tokenizer itself: the segment cache is off (it would serve a repeated
 * file whole); the pre-token cache of frequent words stays, as in the reference. */
static int bench(ib_tok_state_t *st, char **files, int nfiles, double seconds)
{
    ib_tok_ids_t ids = {0};
    ib_tok_state_segment_cache(st, 0);
    for (int f = 0; f < nfiles; f++) {
        FILE *in = fopen(files[f], "rb");
        if (in == NULL) {
            perror(files[f]);
            return 1;
        }
        size_t len;
        char *text = read_all(in, &len);
        fclose(in);
        if (text == NULL)
            return 1;
        /* The first pass runs on a fresh state (empty pre-token cache): the cold figure. */
        ib_tok_state_t *cold = ib_tok_state_new(ib_tok_state_tokenizer(st));
        if (cold == NULL)
            return 1;
        ib_tok_state_segment_cache(cold, 0);
        uint64_t c0 = ib_now_ns();
        if (ib_tokenize(cold, text, len, 0, &ids) != 0)
            return 1;
        double cold_s = (double)(ib_now_ns() - c0) / 1e9;
        ib_tok_state_free(cold);
        uint64_t t0 = ib_now_ns(), deadline = t0 + (uint64_t)(seconds * 1e9);
        size_t rounds = 0, tokens = 0;
        do {
            ib_tok_ids_reset(&ids);
            if (ib_tokenize(st, text, len, 0, &ids) != 0)
                return 1;
            tokens += ids.len;
            rounds++;
        } while (ib_now_ns() < deadline);
        double s = (double)(ib_now_ns() - t0) / 1e9;
        printf("{\"file\":\"%s\",\"bytes\":%zu,\"tokens\":%zu,\"rounds\":%zu,\"mb_per_s\":%.2f,"
               "\"tokens_per_s\":%.0f,\"cold_mb_per_s\":%.2f}\n",
               files[f], len, ids.len, rounds, (double)len * (double)rounds / s / 1e6, (double)tokens / s,
               (double)len / cold_s / 1e6);
        free(text);
    }
    ib_tok_ids_free(&ids);
    return 0;
}

int main(int argc, char **argv)
{
    const char *path = NULL, *mode = NULL, *template_name = "llama3";
    unsigned enc_flags = 0, dec_flags = 0;
    double seconds = 2.0;
    char **files = calloc((size_t)argc, sizeof(*files));
    int nfiles = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strcmp(argv[i], "--template") == 0 && i + 1 < argc)
            template_name = argv[++i];
        else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--no-special") == 0)
            enc_flags |= IB_TOK_NO_SPECIAL;
        else if (strcmp(argv[i], "--skip-special") == 0)
            dec_flags |= IB_TOK_SKIP_SPECIAL;
        else if (argv[i][0] == '-')
            usage();
        else if (mode == NULL)
            mode = argv[i];
        else
            files[nfiles++] = argv[i];
    }
    if (path == NULL || mode == NULL)
        usage();
    char err[256];
    ib_tokenizer_t *tok = ib_tokenizer_load(path, err, sizeof(err));
    if (tok == NULL) {
        fprintf(stderr, "ib-tokenize: %s\n", err);
        return 1;
    }
    ib_tok_state_t *st = ib_tok_state_new(tok);
    if (st == NULL)
        return 1;
    int rc = 0;
    ib_tok_ids_t ids = {0};
    if (strcmp(mode, "info") == 0) {
        ib_tokenizer_info_t info;
        ib_tokenizer_get_info(tok, &info);
        printf("{\"vocab_size\":%u,\"merges\":%u,\"added_tokens\":%u,\"nfc\":%s,\"ignore_merges\":%s,"
               "\"memory_bytes\":%zu,\"load_ms\":%.1f}\n",
               info.vocab_size, info.nmerges, info.nadded, info.nfc ? "true" : "false",
               info.ignore_merges ? "true" : "false", info.memory_bytes, info.load_ms);
    } else if (strcmp(mode, "encode") == 0) {
        size_t len;
        char *text = read_all(stdin, &len);
        if (text == NULL || ib_tokenize(st, text, len, enc_flags, &ids) != 0)
            rc = 1;
        else
            print_ids(&ids);
        free(text);
    } else if (strcmp(mode, "decode") == 0) {
        unsigned long v;
        while (scanf("%lu", &v) == 1) {
            uint32_t id = (uint32_t)v;
            if (ids.len == ids.cap) {
                ids.cap = ids.cap ? ids.cap * 2 : 256;
                ids.ids = realloc(ids.ids, ids.cap * sizeof(*ids.ids));
                if (ids.ids == NULL)
                    return 1;
            }
            ids.ids[ids.len++] = id;
        }
        ib_buf_t out = {0};
        if (ib_detokenize(tok, ids.ids, ids.len, dec_flags, &out) != 0)
            rc = 1;
        else
            fwrite(out.ptr, 1, out.len, stdout);
        ib_buf_free(&out);
    } else if (strcmp(mode, "hex-lines") == 0 || strcmp(mode, "roundtrip-lines") == 0 ||
               strcmp(mode, "chat-lines") == 0) {
        int chat = strcmp(mode, "chat-lines") == 0, roundtrip = strcmp(mode, "roundtrip-lines") == 0;
        ib_chat_template_t tpl;
        if (chat && ib_chat_template_parse(template_name, &tpl) != 0) {
            fprintf(stderr, "ib-tokenize: unknown template %s\n", template_name);
            return 2;
        }
        ib_json_parser_t *jp = ib_json_parser_new(1 << 20);
        ib_buf_t text = {0}, back = {0};
        char *line = NULL;
        size_t cap = 0, lineno = 0, checked = 0, bad = 0, normalized = 0;
        ssize_t got;
        while ((got = getline(&line, &cap, stdin)) >= 0) {
            lineno++;
            size_t n = chomp(line, (size_t)got);
            ib_tok_ids_reset(&ids);
            const char *p = line;
            size_t plen;
            if (chat) {
                ib_oai_request_t req;
                ib_json_error_t jerr;
                ib_buf_reset(&text);
                if (ib_oai_parse(jp, IB_API_CHAT, line, n, n, &req, &jerr) != 0) {
                    fprintf(stderr, "ib-tokenize: line %zu: %s\n", lineno, jerr.message);
                    rc = 1;
                    break;
                }
                if (ib_chat_render(tpl, &req, &text) != 0)
                    return 1;
                p = text.ptr;
                plen = text.len;
            } else {
                long m = unhex(line, n);
                if (m < 0) {
                    fprintf(stderr, "ib-tokenize: line %zu: not hex\n", lineno);
                    rc = 1;
                    break;
                }
                plen = (size_t)m;
            }
            if (ib_tokenize(st, p, plen, enc_flags, &ids) != 0) {
                rc = 1;
                break;
            }
            if (!roundtrip) {
                print_ids(&ids);
                continue;
            }
            if (!ib_utf8_valid(p, plen))
                continue;
            checked++;
            ib_buf_reset(&back);
            ib_buf_reset(&text);
            if (ib_detokenize(tok, ids.ids, ids.len, 0, &back) != 0 ||
                ib_tokenizer_normalize(tok, p, plen, &text) != 0)
                return 1;
            if (text.len != plen || memcmp(text.ptr, p, plen) != 0)
                normalized++; /* not in NFC: decoding gives the NFC form */
            if (back.len != text.len || memcmp(back.ptr, text.ptr, text.len) != 0) {
                bad++;
                fprintf(stderr, "ib-tokenize: line %zu: decode(encode(s)) != s\n", lineno);
            }
        }
        if (roundtrip) {
            printf("{\"checked\":%zu,\"changed_by_normalizer\":%zu,\"mismatches\":%zu}\n", checked, normalized,
                   bad);
            if (bad > 0)
                rc = 1;
        }
        free(line);
        ib_buf_free(&text);
        ib_buf_free(&back);
        ib_json_parser_free(jp);
    } else if (strcmp(mode, "bench") == 0) {
        if (nfiles == 0)
            usage();
        rc = bench(st, files, nfiles, seconds);
    } else {
        usage();
    }
    ib_tok_ids_free(&ids);
    ib_tok_state_free(st);
    ib_tokenizer_free(tok);
    free(files);
    return rc;
}
