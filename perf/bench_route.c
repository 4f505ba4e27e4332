/*
 * Routing cost per request: parse (simdjson shim) + render (chat template) + hash (XXH3
 * prefix chain) + pick (affinity policy over 8 replicas, table warm), on chat bodies of
 * about 1 KB, 8 KB and 32 KB; next to memcpy and a single XXH3 pass over the same bytes,
 * the floor any router that looks at the prompt pays. Prints ns per request, medians of
 * REPEAT batches.
 *
 * usage: ib-bench-route [REPEAT]
 */
#include "ibrain/chat.h"
#include "ibrain/clock.h"
#include "ibrain/hashchain.h"
#include "ibrain/ondemand_c.h"
#include "ibrain/route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxh_x86dispatch.h>

#define NREP 8

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* A chat body of about <target> bytes: a system prompt and a few turns. */
static size_t make_body(char *buf, size_t cap, size_t target)
{
    size_t n = (size_t)snprintf(buf, cap, "{\"model\":\"demo\",\"stream\":true,\"max_tokens\":128,\"messages\":["
                                          "{\"role\":\"system\",\"content\":\"You are a helpful assistant.\"}");
    int turn = 0;
    while (n + 600 < target && n + 700 < cap) {
        n += (size_t)snprintf(buf + n, cap - n, ",{\"role\":\"%s\",\"content\":\"", turn % 2 ? "assistant" : "user");
        for (int k = 0; k < 500; k++)
            buf[n++] = (char)("abcdefghijklmnopqrstuvwxyz     "[(k * 7 + turn * 13) % 31]);
        n += (size_t)snprintf(buf + n, cap - n, "\"}");
        turn++;
    }
    n += (size_t)snprintf(buf + n, cap - n, "]}");
    return n;
}

int main(int argc, char **argv)
{
    int repeat = argc > 1 ? atoi(argv[1]) : 7;
    ib_json_parser_t *json = ib_json_parser_new(1 << 20);
    ib_router_t rt;
    if (json == NULL || ib_router_init(&rt, IB_POLICY_AFFINITY, NREP, 17, 65536, 0) != 0)
        return 1;
    static char body[40000 + IB_JSON_PADDING], copy[40000];
    uint64_t hashes[1024];
    ib_buf_t prompt = {0};
    int64_t load[NREP] = {3, 1, 4, 1, 5, 9, 2, 6};
    uint8_t usable[NREP] = {1, 1, 1, 1, 1, 1, 1, 1};
    printf("%-8s %10s %14s %14s %14s %14s\n", "body", "bytes", "route ns/req", "memcpy ns", "xxh3 ns", "route/xxh3");
    size_t sizes[] = {1024, 8192, 32768};
    for (size_t s = 0; s < 3; s++) {
        size_t len = make_body(body, sizeof(body) - IB_JSON_PADDING, sizes[s]);
        memset(body + len, 0, IB_JSON_PADDING);
        int iters = (int)(2000000 / (len / 64 + 1));
        uint64_t route_ns[31], copy_ns[31], xxh_ns[31];
        volatile uint64_t sink = 0;
        /* Warm the table with this prompt on replica 5, as a returning conversation. */
        for (int r = 0; r < repeat && r < 31; r++) {
            uint64_t t0 = ib_now_ns();
            for (int i = 0; i < iters; i++) {
                ib_oai_request_t req;
                ib_json_error_t err;
                if (ib_oai_parse(json, IB_API_CHAT, body, len, len + IB_JSON_PADDING, &req, &err) != 0)
                    return 2;
                ib_buf_reset(&prompt);
                ib_chat_render(IB_TEMPLATE_CHATML, &req, &prompt);
                size_t nb = ib_hashchain(prompt.ptr, prompt.len, 64, hashes, 1024);
                ib_route_input_t in = {.hashes = hashes, .nblocks = nb, .load = load, .usable = usable,
                                       .nreplicas = NREP, .random = (uint64_t)i};
                ib_route_decision_t d;
                ib_router_pick(&rt, &in, &d);
                ib_router_commit(&rt, &in, d.replica);
                sink += (uint64_t)d.replica;
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
    ib_buf_free(&prompt);
    ib_router_destroy(&rt);
    ib_json_parser_free(json);
    return 0;
}
