/* ib-load: command line, engine metric scrapes, and the report. */
#include "ibrain/loadrun.h"
#include "ibrain/http1.h"
#include "ibrain/net.h"

#include <arpa/inet.h>

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ib-load --target HOST:PORT [--target HOST:PORT ...] [workload] [options]\n"
            "  (several targets on one host: requests take them in turn, as behind a client-side balancer)\n"
            "workload (one of):\n"
            "  --trace FILE               Mooncake JSONL (hash_ids) or Azure CSV trace, replayed at its arrival times\n"
            "  --shared-prefix G,P        G groups x P prompts sharing a per-group system prompt\n"
            "  --multi-turn U             U users, each a conversation of --turns turns\n"
            "shape:\n"
            "  --system-tokens N          system prompt length (default 2048)\n"
            "  --question-tokens N        question length (default 128)\n"
            "  --history-tokens N         multi-turn: per-user context in the first turn (default 1000)\n"
            "  --output-tokens N          synthetic workloads: completion length (default 256)\n"
            "  --turns N                  multi-turn: turns per user (default 5)\n"
            "  --think-ms N               multi-turn: pause between an answer and the next turn (default 0)\n"
            "  --rate R                   synthetic: Poisson arrivals (requests or users per second; 0 = all at once)\n"
            "  --seed N                   text and arrival seed (default 1)\n"
            "  --bytes-per-token N        text bytes per token (default 4: a word that is one Qwen3 or Llama 3 token,\n"
            "                             and 4 bytes for the mock engine without a tokenizer; else random letters)\n"
            "  --trace-block-tokens N     tokens per trace hash_id (default 512)\n"
            "  --spread-ms N              spread each run of equal trace timestamps over N ms\n"
            "                             (default: 3000 for Mooncake traces, whose timestamps come in 3 s steps; else 0)\n"
            "run:\n"
            "  --speedup X                divide arrival times by X (default 1)\n"
            "  --concurrency N            closed loop: N requests in flight, arrival times ignored\n"
            "  --limit N                  send at most N requests\n"
            "  --max-output N             cap output tokens per request\n"
            "  --max-input N              trace workloads: cap prompt tokens per request (e.g. the engines'\n"
            "                             context length minus --max-output and the chat template's few tokens)\n"
            "  --api chat|completions     endpoint (default chat)\n"
            "  --no-stream                non-streaming requests (TTFT is then the whole response)\n"
            "  --no-ignore-eos            do not send \"ignore_eos\": true\n"
            "  --session-header           multi-turn: send X-Session-Id: user-N\n"
            "  --model NAME               model field (default mock)\n"
            "  --max-conns N              connection limit (default 4096)\n"
            "  --timeout-s X              per-request timeout (default 600)\n"
            "  --metrics HOST:PORT        an engine to scrape for prefix-cache counters before and after (repeatable)\n"
            "  --json FILE                write the summary as JSON\n"
            "  --progress | --quiet       progress line on stderr (default: when stderr is a terminal)\n"
            "  --log-errors               a line on stderr per failed request: its time, kind, where it failed\n"
            "                             (connect, write, read) and the connection's earlier requests\n"
            "  --requests-log FILE        a tab-separated line per request: sent_s target outcome (ok status io\n"
            "                             timeout protocol) status bytes (response bytes read) first_ms (first\n"
            "                             token, -1 for none) end_ms stream_error (an SSE error event's code)\n"
            "                             io_where (connect write read) engine\n"
            "  --failover                 several targets: a request whose target refused the connection (or\n"
            "                             whose kept-alive connection could not take it) goes to the next\n"
            "                             target, which a client-side balancer would do; the refusing target\n"
            "                             is skipped for a second\n");
}

/* ---- engine metrics ---- */

typedef struct cache_counters {
    double queries, hits;
    int ok;
} cache_counters_t;

/* Sums the prefix-cache counters of a Prometheus text body, under vLLM's names
 * (vllm:prefix_cache_queries_total / _hits_total), which ib-mock-engine serves too. */
static void sum_cache_metrics(const char *text, size_t len, cache_counters_t *c)
{
    static const char q[] = "vllm:prefix_cache_queries_total", h[] = "vllm:prefix_cache_hits_total";
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        size_t nq = sizeof(q) - 1, nh = sizeof(h) - 1;
        double *dst = NULL;
        size_t skip = 0;
        if ((size_t)(le - p) > nq && memcmp(p, q, nq) == 0 && (p[nq] == '{' || p[nq] == ' '))
            dst = &c->queries, skip = nq;
        else if ((size_t)(le - p) > nh && memcmp(p, h, nh) == 0 && (p[nh] == '{' || p[nh] == ' '))
            dst = &c->hits, skip = nh;
        if (dst != NULL) {
            const char *v = memchr(p + skip, ' ', (size_t)(le - p - skip));
            if (p[skip] == '{') { /* skip labels, which may contain spaces */
                const char *close = memchr(p + skip, '}', (size_t)(le - p - skip));
                v = close ? memchr(close, ' ', (size_t)(le - close)) : NULL;
            }
            if (v != NULL)
                *dst += strtod(v + 1, NULL);
        }
        p = le + 1;
    }
}

static int scrape(char **targets, int n, cache_counters_t *out)
{
    memset(out, 0, sizeof(*out));
    out->ok = 1;
    for (int i = 0; i < n; i++) {
        ib_buf_t body = {0};
        int st = ib_http_get(targets[i], "/metrics", 5000, &body);
        if (st != 200) {
            fprintf(stderr, "ib-load: cannot scrape http://%s/metrics (status %d)\n", targets[i], st);
            out->ok = 0;
        } else {
            sum_cache_metrics(body.ptr, body.len, out);
        }
        ib_buf_free(&body);
    }
    return out->ok ? 0 : -1;
}

/* ---- report ---- */

static void print_dist(const char *name, const ib_samples_t *s)
{
    if (s->n == 0) {
        printf("  %-14s (no samples)\n", name);
        return;
    }
    printf("  %-14s p50 %9.2f  p90 %9.2f  p99 %9.2f  max %9.2f  mean %9.2f  (n=%zu)\n", name, ib_samples_pct(s, 50),
           ib_samples_pct(s, 90), ib_samples_pct(s, 99), ib_samples_pct(s, 100), ib_samples_mean(s), s->n);
}

static void json_dist(FILE *f, const char *name, const ib_samples_t *s, int last)
{
    if (s->n == 0)
        fprintf(f, "  \"%s\": null%s\n", name, last ? "" : ",");
    else
        fprintf(f, "  \"%s\": {\"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, \"max\": %.3f, \"mean\": %.3f, \"n\": %zu}%s\n",
                name, ib_samples_pct(s, 50), ib_samples_pct(s, 90), ib_samples_pct(s, 99), ib_samples_pct(s, 100),
                ib_samples_mean(s), s->n, last ? "" : ",");
}

/* "400 context_length_exceeded", "503", "io": one error kind. */
static void format_kind(const ib_load_error_kind_t *e, char *out, size_t cap)
{
    if (e->status == 0)
        snprintf(out, cap, "%s", e->kind);
    else
        snprintf(out, cap, "%d%s%s", e->status, e->kind[0] ? " " : "", e->kind);
}

static double balance(const ib_load_result_t *r)
{
    if (r->nengines == 0)
        return NAN;
    double sum = 0, max = 0;
    for (uint32_t i = 0; i < r->nengines; i++) {
        sum += (double)r->engines[i].requests;
        if ((double)r->engines[i].requests > max)
            max = (double)r->engines[i].requests;
    }
    return max / (sum / r->nengines);
}

int main(int argc, char **argv)
{
    ib_load_options_t o;
    ib_load_options_defaults(&o);
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    uint32_t ntargets = 0;
    const char *targets[IB_LOAD_MAX_TARGETS], *trace = NULL, *json_path = NULL, *sp = NULL;
    uint32_t mt_users = 0, output_tokens = 256, max_input = 0;
    long spread_ms = -1;
    double rate = 0;
    char *metrics[64];
    int nmetrics = 0;
    o.progress = isatty(2);
    enum { O_TARGET = 1, O_TRACE, O_SP, O_MT, O_SYS, O_Q, O_HIST, O_OUT, O_TURNS, O_THINK, O_RATE, O_SEED, O_BPT,
           O_TBT, O_SPREAD, O_SPEED, O_CONC, O_LIMIT, O_MAXOUT, O_MAXIN, O_API, O_NOSTREAM, O_NOEOS, O_SESS, O_MODEL,
           O_MAXCONN, O_TIMEOUT, O_METRICS, O_JSON, O_PROGRESS, O_QUIET, O_HELP, O_LOGERR, O_REQLOG, O_FAILOVER };
    static const struct option opts[] = {
        {"target", 1, 0, O_TARGET},       {"trace", 1, 0, O_TRACE},
        {"shared-prefix", 1, 0, O_SP},    {"multi-turn", 1, 0, O_MT},
        {"system-tokens", 1, 0, O_SYS},   {"question-tokens", 1, 0, O_Q},
        {"history-tokens", 1, 0, O_HIST}, {"output-tokens", 1, 0, O_OUT},
        {"turns", 1, 0, O_TURNS},         {"think-ms", 1, 0, O_THINK},
        {"rate", 1, 0, O_RATE},           {"seed", 1, 0, O_SEED},
        {"bytes-per-token", 1, 0, O_BPT}, {"trace-block-tokens", 1, 0, O_TBT},
        {"spread-ms", 1, 0, O_SPREAD},    {"speedup", 1, 0, O_SPEED},
        {"concurrency", 1, 0, O_CONC},    {"limit", 1, 0, O_LIMIT},
        {"max-output", 1, 0, O_MAXOUT},   {"api", 1, 0, O_API},
        {"no-stream", 0, 0, O_NOSTREAM},  {"no-ignore-eos", 0, 0, O_NOEOS},
        {"session-header", 0, 0, O_SESS}, {"model", 1, 0, O_MODEL},
        {"max-conns", 1, 0, O_MAXCONN},   {"timeout-s", 1, 0, O_TIMEOUT},
        {"metrics", 1, 0, O_METRICS},     {"json", 1, 0, O_JSON},
        {"progress", 0, 0, O_PROGRESS},   {"quiet", 0, 0, O_QUIET},
        {"max-input", 1, 0, O_MAXIN},     {"help", 0, 0, O_HELP},           {"log-errors", 0, 0, O_LOGERR},
        {"requests-log", 1, 0, O_REQLOG}, {"failover", 0, 0, O_FAILOVER},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end = NULL;
        unsigned long long u = optarg ? strtoull(optarg, &end, 10) : 0;
        int num_ok = optarg && *optarg && *optarg != '-' && end && *end == '\0' && u <= UINT32_MAX;
        switch (c) {
        case O_TARGET:
            if (ntargets == IB_LOAD_MAX_TARGETS) {
                fprintf(stderr, "ib-load: at most %d --target\n", IB_LOAD_MAX_TARGETS);
                return 2;
            }
            targets[ntargets++] = optarg;
            continue;
        case O_TRACE: trace = optarg; continue;
        case O_SP: sp = optarg; continue;
        case O_API:
            if (strcmp(optarg, "chat") && strcmp(optarg, "completions")) {
                fprintf(stderr, "ib-load: --api is chat or completions\n");
                return 2;
            }
            o.chat = strcmp(optarg, "chat") == 0;
            continue;
        case O_NOSTREAM: o.stream = 0; continue;
        case O_NOEOS: o.ignore_eos = 0; continue;
        case O_SESS: o.session_header = 1; continue;
        case O_MODEL: o.model = optarg; continue;
        case O_METRICS:
            if (nmetrics < 64)
                metrics[nmetrics++] = optarg;
            continue;
        case O_JSON: json_path = optarg; continue;
        case O_PROGRESS: o.progress = 1; continue;
        case O_QUIET: o.progress = 0; continue;
        case O_LOGERR: o.log_errors = 1; continue;
        case O_REQLOG: o.requests_log = optarg; continue;
        case O_FAILOVER: o.failover = 1; continue;
        case O_HELP: usage(stdout); return 0;
        case O_RATE: case O_SPEED: case O_TIMEOUT: {
            double d = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !(d >= 0) || (c != O_RATE && d == 0)) {
                fprintf(stderr, "ib-load: %s wants a positive number, got '%s'\n", argv[optind - 1], optarg);
                return 2;
            }
            if (c == O_RATE) rate = d; else if (c == O_SPEED) o.speedup = d; else o.timeout_s = d;
            continue;
        }
        case '?': usage(stderr); return 2;
        }
        if (!num_ok) {
            fprintf(stderr, "ib-load: %s wants a non-negative integer, got '%s'\n", argv[optind - 1], optarg);
            return 2;
        }
        switch (c) {
        case O_MT: mt_users = (uint32_t)u; break;
        case O_SYS: w.system_tokens = (uint32_t)u; break;
        case O_Q: w.question_tokens = (uint32_t)u; break;
        case O_HIST: w.history_tokens = (uint32_t)u; break;
        case O_OUT: output_tokens = (uint32_t)u; break;
        case O_TURNS: w.turns = (uint32_t)u; break;
        case O_THINK: o.think_ms = (uint32_t)u; break;
        case O_SEED: w.seed = u; break;
        case O_BPT: w.bytes_per_token = (uint32_t)u; break;
        case O_TBT: w.block_tokens = (uint32_t)u; break;
        case O_SPREAD: spread_ms = (long)u; break;
        case O_CONC: o.concurrency = (uint32_t)u; break;
        case O_LIMIT: o.limit = u; break;
        case O_MAXOUT: o.max_output = (uint32_t)u; break;
        case O_MAXIN: max_input = (uint32_t)u; break;
        case O_MAXCONN: o.max_conns = (uint32_t)u; break;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ib-load: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (ntargets == 0 || (!!trace + !!sp + !!mt_users) != 1) {
        fprintf(stderr, "ib-load: need --target and exactly one of --trace, --shared-prefix, --multi-turn\n");
        usage(stderr);
        return 2;
    }
    if (w.bytes_per_token < 2 || w.block_tokens == 0 || o.max_conns == 0 || (mt_users && w.turns == 0)) {
        fprintf(stderr, "ib-load: --bytes-per-token must be >= 2, --trace-block-tokens, --max-conns, --turns >= 1\n");
        return 2;
    }
    static char host[INET_ADDRSTRLEN];
    o.ntargets = ntargets;
    for (uint32_t t = 0; t < ntargets; t++) {
        struct sockaddr_in a;
        char h[INET_ADDRSTRLEN];
        if (ib_parse_hostport(targets[t], &a) != 0 || a.sin_port == 0) {
            fprintf(stderr, "ib-load: --target wants IPV4:PORT, got '%s'\n", targets[t]);
            return 2;
        }
        inet_ntop(AF_INET, &a.sin_addr, h, sizeof(h));
        if (t > 0 && strcmp(h, host) != 0) {
            fprintf(stderr, "ib-load: every --target must be on the same host (%s, then %s)\n", host, h);
            return 2;
        }
        memcpy(host, h, sizeof(host));
        o.ports[t] = ntohs(a.sin_port);
    }
    o.host = host;

    int rc = 0;
    if (trace != NULL) {
        /* Peek at the format to choose the default spread. */
        FILE *f = fopen(trace, "r");
        int first = f ? fgetc(f) : EOF;
        if (f)
            fclose(f);
        uint32_t spread = spread_ms >= 0 ? (uint32_t)spread_ms : (first == '{' ? 3000 : 0);
        rc = ib_load_read_trace(&w, trace, o.limit, spread);
    } else if (sp != NULL) {
        unsigned g, p;
        char tail;
        if (sscanf(sp, "%u,%u%c", &g, &p, &tail) != 2 || g == 0 || p == 0) {
            fprintf(stderr, "ib-load: --shared-prefix wants G,P (e.g. 64,16), got '%s'\n", sp);
            return 2;
        }
        rc = ib_load_gen_shared_prefix(&w, g, p, output_tokens, rate);
    } else {
        rc = ib_load_gen_multi_turn(&w, mt_users, output_tokens, rate);
    }
    if (rc != 0)
        return 1;
    if (trace != NULL && max_input > 0)
        for (size_t i = 0; i < w.nitems; i++)
            if (w.items[i].input_tokens > max_input)
                w.items[i].input_tokens = max_input;

    cache_counters_t before = {0}, after = {0};
    if (nmetrics > 0 && scrape(metrics, nmetrics, &before) != 0)
        return 1;
    ib_load_result_t r;
    if (ib_load_run(&w, &o, &r) != 0)
        return 1;
    int have_cache = nmetrics > 0 && scrape(metrics, nmetrics, &after) == 0;
    double dq = after.queries - before.queries, dh = after.hits - before.hits;
    double hit_rate = have_cache && dq > 0 ? dh / dq : NAN;

    uint64_t errors = r.sent - r.ok;
    const char *src = w.source == IB_SRC_MOONCAKE ? "mooncake trace"
                      : w.source == IB_SRC_AZURE   ? "azure trace"
                      : w.source == IB_SRC_SHARED_PREFIX ? "shared-prefix"
                                                         : "multi-turn";
    printf("ib-load: %s against %s:%u (%s, %s)\n", src, o.host, o.ports[0], o.chat ? "chat" : "completions",
           o.stream ? "streaming" : "non-streaming");
    printf("  requests      sent %llu  ok %llu  errors %llu (status %llu [4xx %llu, 5xx %llu], io %llu, timeout %llu, "
           "protocol %llu)\n",
           (unsigned long long)r.sent, (unsigned long long)r.ok, (unsigned long long)errors,
           (unsigned long long)r.err_status, (unsigned long long)r.status_4xx, (unsigned long long)r.status_5xx,
           (unsigned long long)r.err_io, (unsigned long long)r.err_timeout, (unsigned long long)r.err_protocol);
    if (o.failover)
        printf("  failovers     %llu (sent again to another target)\n", (unsigned long long)r.failovers);
    if (r.nerror_kinds > 0) {
        printf("  error kinds  ");
        for (uint32_t i = 0; i < r.nerror_kinds; i++) {
            char k[96];
            format_kind(&r.error_kinds[i], k, sizeof(k));
            printf("%s %llu x %s", i ? "," : "", (unsigned long long)r.error_kinds[i].count, k);
        }
        printf("\n");
    }
    printf("  duration      %.2f s  throughput %.2f req/s  %.1f output tok/s\n", r.duration_s,
           r.duration_s > 0 ? (double)r.ok / r.duration_s : 0, r.duration_s > 0 ? (double)r.output_tokens / r.duration_s : 0);
    printf("  latency (ms)\n");
    print_dist("ttft", &r.ttft_ms);
    print_dist("itl", &r.itl_ms);
    print_dist("e2e", &r.e2e_ms);
    printf("  tokens        prompt %llu  cached (usage) %llu  output %llu\n", (unsigned long long)r.prompt_tokens,
           (unsigned long long)r.cached_tokens, (unsigned long long)r.output_tokens);
    if (have_cache)
        printf("  engine cache  hit rate %.4f  (%.0f of %.0f prompt tokens, from %d /metrics)\n",
               isnan(hit_rate) ? 0.0 : hit_rate, dh, dq, nmetrics);
    if (r.nengines > 0) {
        printf("  engines      ");
        for (uint32_t i = 0; i < r.nengines; i++)
            printf(" %s=%llu", r.engines[i].id, (unsigned long long)r.engines[i].requests);
        printf("  (max/mean %.3f)\n", balance(&r));
    }

    if (json_path != NULL) {
        FILE *f = fopen(json_path, "w");
        if (f == NULL) {
            perror("ib-load: --json");
            return 1;
        }
        fprintf(f, "{\n  \"source\": \"%s\",\n  \"target\": \"%s:%u\",\n", src, o.host, o.ports[0]);
        fprintf(f, "  \"sent\": %llu,\n  \"ok\": %llu,\n  \"errors\": %llu,\n", (unsigned long long)r.sent,
                (unsigned long long)r.ok, (unsigned long long)errors);
        fprintf(f, "  \"failovers\": %llu,\n", (unsigned long long)r.failovers);
        fprintf(f,
                "  \"errors_by_kind\": {\"status\": %llu, \"status_4xx\": %llu, \"status_5xx\": %llu, \"io\": %llu, "
                "\"timeout\": %llu, \"protocol\": %llu},\n",
                (unsigned long long)r.err_status, (unsigned long long)r.status_4xx, (unsigned long long)r.status_5xx,
                (unsigned long long)r.err_io, (unsigned long long)r.err_timeout, (unsigned long long)r.err_protocol);
        fprintf(f, "  \"error_kinds\": {");
        for (uint32_t i = 0; i < r.nerror_kinds; i++) {
            char k[96];
            format_kind(&r.error_kinds[i], k, sizeof(k));
            fprintf(f, "%s\"%s\": %llu", i ? ", " : "", k, (unsigned long long)r.error_kinds[i].count);
        }
        fprintf(f, "},\n");
        fprintf(f, "  \"duration_s\": %.3f,\n  \"throughput_rps\": %.3f,\n  \"output_tokens_per_s\": %.1f,\n",
                r.duration_s, r.duration_s > 0 ? (double)r.ok / r.duration_s : 0,
                r.duration_s > 0 ? (double)r.output_tokens / r.duration_s : 0);
        fprintf(f, "  \"prompt_tokens\": %llu,\n  \"cached_tokens\": %llu,\n  \"output_tokens\": %llu,\n",
                (unsigned long long)r.prompt_tokens, (unsigned long long)r.cached_tokens,
                (unsigned long long)r.output_tokens);
        if (have_cache && !isnan(hit_rate))
            fprintf(f, "  \"cache_hit_rate\": %.6f,\n  \"cache_hit_tokens\": %.0f,\n  \"cache_query_tokens\": %.0f,\n",
                    hit_rate, dh, dq);
        else
            fprintf(f, "  \"cache_hit_rate\": null,\n");
        fprintf(f, "  \"engines\": {");
        for (uint32_t i = 0; i < r.nengines; i++)
            fprintf(f, "%s\"%s\": %llu", i ? ", " : "", r.engines[i].id, (unsigned long long)r.engines[i].requests);
        fprintf(f, "},\n");
        if (r.nengines > 0)
            fprintf(f, "  \"balance_max_over_mean\": %.4f,\n", balance(&r));
        json_dist(f, "ttft_ms", &r.ttft_ms, 0);
        json_dist(f, "itl_ms", &r.itl_ms, 0);
        json_dist(f, "e2e_ms", &r.e2e_ms, 1);
        fprintf(f, "}\n");
        fclose(f);
    }
    ib_load_result_free(&r);
    ib_load_workload_free(&w);
    return errors == 0 ? 0 : 3;
}
