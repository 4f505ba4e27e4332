/*
 * Routing cost per request: parse (simdjson shim) + render (chat template) + [tokenize] +
 * hash (XXH3 prefix chain) + pick (affinity policy over 8 replicas, table warm), on chat
 * bodies of about 1 KB, 8 KB and 32 KB; next to memcpy and a single XXH3 pass over the same
 * bytes, the floor any router that looks at the prompt pays. Prints ns per request, medians
 * of REPEAT batches. The prompt goes through ib_prompt_build, as in ibrain.
 *
 * A last row routes 8 KB bodies of COLD_CONVERSATIONS different conversations (their
 * system prompts differ, so every block does), in random order, over a table that holds
 * them all: the table's sets (8 MiB) are then mostly out of the caches, as in a server
 * with many conversations, where the warm rows above find them in L1.
 *
 * usage: ib-bench-route [--tokenizer tokenizer.json] [--text FILE] [REPEAT]
 *   --tokenizer   blocks of 16 tokens (else 64-byte blocks, as ibrain without a tokenizer)
 *   --text        message contents are taken from FILE (else synthetic letters and spaces)
 *   --cold        no segment cache: every message is tokenized again, as for a new
 *                 conversation (the pre-token cache of frequent words stays on)
 */
#include "ibrain/net.h"
#include "ibrain/chat.h"
#include "ibrain/clock.h"
#include "ibrain/hashchain.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/prompt.h"
#include "ibrain/route.h"
#include "ibrain/tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxh_x86dispatch.h>

#define NREP 8
#define COLD_CONVERSATIONS 2048

/* What one request costs the router: parse, render [+ tokenize], hash, pick, commit. The
 * chosen replica, or -1 when the body does not parse. */
typedef struct bench {
    ib_json_parser_t *json;
    ib_tok_state_t *st;
    ib_prompt_t prompt;
    ib_router_t rt;
} bench_t;

static int route_once(bench_t *b, const char *body, size_t len, uint64_t random)
{
    static const int64_t load[NREP] = {3, 1, 4, 1, 5, 9, 2, 6};
    static const uint8_t usable[NREP] = {1, 1, 1, 1, 1, 1, 1, 1};
    ib_oai_request_t req;
    ib_json_error_t err;
    if (ib_oai_parse(b->json, IB_API_CHAT, body, len, len + IB_JSON_PADDING, &req, &err) != 0)
        return -1;
    if (ib_prompt_build(&b->prompt, IB_TEMPLATE_CHATML, &req, b->st, b->st != NULL ? 16 : 64, 4) != 0)
        return -1;
    ib_aff_walk_t walk;
    walk.h = NULL;
    ib_route_input_t in = {.hashes = b->prompt.hashes, .nblocks = b->prompt.nblocks, .load = load, .usable = usable,
                           .nreplicas = NREP, .random = random, .walk = &walk};
    ib_route_decision_t d;
    ib_router_pick(&b->rt, &in, &d);
    ib_router_commit(&b->rt, &in, d.replica);
    return d.replica;
}

static void usage(void)
{
    fprintf(stderr, "usage: ib-bench-route [--tokenizer tokenizer.json] [--text FILE] [--cold] [REPEAT]\n");
    exit(2);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* A chat body of about <target> bytes: a system prompt and a few turns of 500 characters,
 * taken from <text> (JSON-escaped, consecutive slices) or synthetic. */
static size_t make_body(char *buf, size_t cap, size_t target, const char *text, size_t text_len)
{
    size_t n = (size_t)snprintf(buf, cap, "{\"model\":\"demo\",\"stream\":true,\"max_tokens\":128,\"messages\":["
                                          "{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"}");
    int turn = 0;
    size_t at = 0;
    while (n + 600 < target && n + 1100 < cap) {
        n += (size_t)snprintf(buf + n, cap - n, ",{\"role\":\"%s\",\"content\":\"", turn % 2 ? "assistant" : "user");
        for (int k = 0; k < 500; k++) {
            char c;
            if (text_len > 0) {
                c = text[at++ % text_len];
                if (c == '\n' || c == '\t' || c == '\r' || (unsigned char)c < 0x20)
                    c = ' ';
                if (c == '"' || c == '\\')
                    buf[n++] = '\\';
            } else {
                c = "abcdefghijklmnopqrstuvwxyz     "[(k * 7 + turn * 13) % 31];
            }
            buf[n++] = c;
        }
        n += (size_t)snprintf(buf + n, cap - n, "\"}");
        turn++;
    }
    n += (size_t)snprintf(buf + n, cap - n, "]}");
    return n;
}

int main(int argc, char **argv)
{
    int repeat = 7;
    const char *tok_path = NULL, *text_path = NULL;
    int cold = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            tok_path = argv[++i];
        else if (strcmp(argv[i], "--text") == 0 && i + 1 < argc)
            text_path = argv[++i];
        else if (strcmp(argv[i], "--cold") == 0)
            cold = 1;
        else if ((repeat = atoi(argv[i])) <= 0)
            usage();
    }
    ib_tokenizer_t *tok = NULL;
    ib_tok_state_t *st = NULL;
    if (tok_path != NULL) {
        char err[256];
        tok = ib_tokenizer_load(tok_path, err, sizeof(err));
        st = tok != NULL ? ib_tok_state_new(tok) : NULL;
        if (st == NULL) {
            fprintf(stderr, "ib-bench-route: %s\n", err);
            return 1;
        }
        ib_tok_state_segment_cache(st, !cold);
    }
    size_t text_len = 0;
    char *text = NULL;
    if (text_path != NULL && ((text = ib_read_file(text_path, &text_len)) == NULL || text_len == 0)) {
        perror(text_path);
        return 1;
    }
    bench_t b = {.json = ib_json_parser_new(1 << 20), .st = st};
    if (b.json == NULL || ib_router_init(&b.rt, IB_POLICY_AFFINITY, NREP, 17, 65536, 0) != 0)
        return 1;
    static char body[40000 + IB_JSON_PADDING], copy[40000];
    printf("# blocks: %s%s; text: %s\n", tok != NULL ? "16 tokens (tokenizer on)" : "64 bytes (tokenizer off)",
           tok != NULL ? (cold ? ", segment cache off" : ", segment cache on") : "",
           text_path != NULL ? text_path : "synthetic");
    printf("%-8s %10s %14s %14s %14s %14s\n", "body", "bytes", "route ns/req", "memcpy ns", "xxh3 ns", "route/xxh3");
    size_t sizes[] = {1024, 8192, 32768};
    for (size_t s = 0; s < 3; s++) {
        size_t len = make_body(body, sizeof(body) - IB_JSON_PADDING, sizes[s], text, text_len);
        memset(body + len, 0, IB_JSON_PADDING);
        int iters = (int)(2000000 / (len / 64 + 1));
        uint64_t route_ns[31], copy_ns[31], xxh_ns[31];
        volatile uint64_t sink = 0;
        /* Warm the table with this prompt on replica 5, as a returning conversation. */
        for (int r = 0; r < repeat && r < 31; r++) {
            uint64_t t0 = ib_now_ns();
            for (int i = 0; i < iters; i++) {
                int rep = route_once(&b, body, len, (uint64_t)i);
                if (rep < 0)
                    return 2;
                sink += (uint64_t)rep;
            }
            uint64_t t1 = ib_now_ns();
            for (int i = 0; i < iters; i++) {
                memcpy(copy, body, len);
                sink += (uint64_t)copy[i % len];
            }
            uint64_t t2 = ib_now_ns();
            for (int i = 0; i < iters; i++)
                sink += XXH3_64bits_withSeed(body, len, (uint64_t)i);
            uint64_t t3 = ib_now_ns();
            route_ns[r] = (t1 - t0) / (uint64_t)iters;
            copy_ns[r] = (t2 - t1) / (uint64_t)iters;
            xxh_ns[r] = (t3 - t2) / (uint64_t)iters;
        }
        int m = repeat < 31 ? repeat : 31;
        qsort(route_ns, (size_t)m, sizeof(uint64_t), cmp_u64);
        qsort(copy_ns, (size_t)m, sizeof(uint64_t), cmp_u64);
        qsort(xxh_ns, (size_t)m, sizeof(uint64_t), cmp_u64);
        printf("%-8s %10zu %14llu %14llu %14llu %13.1fx\n", s == 0 ? "1 KB" : s == 1 ? "8 KB" : "32 KB", len,
               (unsigned long long)route_ns[m / 2], (unsigned long long)copy_ns[m / 2],
               (unsigned long long)xxh_ns[m / 2], (double)route_ns[m / 2] / (double)(xxh_ns[m / 2] ? xxh_ns[m / 2] : 1));
        (void)sink;
    }
    /* The cold row: the 8 KB body, its system prompt numbered per conversation. */
    size_t len = make_body(body, sizeof(body) - IB_JSON_PADDING, 8192, text, text_len);
    memset(body + len, 0, IB_JSON_PADDING);
    char *sys = strstr(body, "You are a helpful assistant.");
    if (sys == NULL)
        return 2;
    for (int k = 0; k < COLD_CONVERSATIONS; k++) { /* each conversation's first turn */
        char id[32];
        snprintf(id, sizeof(id), "Conversation %05d assistant", k); /* as long as what it replaces */
        memcpy(sys, id, 28);
        if (route_once(&b, body, len, (uint64_t)k) < 0)
            return 2;
    }
    uint64_t cold_ns[31], x = 88172645463325252ull;
    int cold_iters = 20000;
    for (int r = 0; r < repeat && r < 31; r++) {
        uint64_t t0 = ib_now_ns();
        for (int i = 0; i < cold_iters; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            char id[32];
            snprintf(id, sizeof(id), "Conversation %05d assistant", (int)(x % COLD_CONVERSATIONS));
            memcpy(sys, id, 28);
            if (route_once(&b, body, len, x) < 0)
                return 2;
        }
        cold_ns[r] = (ib_now_ns() - t0) / (uint64_t)cold_iters;
    }
    int m = repeat < 31 ? repeat : 31;
    qsort(cold_ns, (size_t)m, sizeof(uint64_t), cmp_u64);
    printf("%-8s %10zu %14llu   (%d conversations, random order: the table out of the caches)\n", "8 KB cold", len,
           (unsigned long long)cold_ns[m / 2], COLD_CONVERSATIONS);
    ib_prompt_free(&b.prompt);
    ib_tok_state_free(st);
    ib_tokenizer_free(tok);
    free(text);
    ib_router_destroy(&b.rt);
    ib_json_parser_free(b.json);
    return 0;
}
