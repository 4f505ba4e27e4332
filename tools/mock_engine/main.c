/* ib-mock-engine: command line. See docs/operations.md for the model it simulates. */
#include "ibrain/mock_engine.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ib-mock-engine [options]\n"
            "  --listen HOST:PORT         address to serve on (default 127.0.0.1:8000; port 0 = any free port)\n"
            "  --port-file FILE           write the bound port here once listening\n"
            "  --model NAME               model name served (default mock)\n"
            "  --id NAME                  engine id, sent as X-Engine-Id (default engine-PORT)\n"
            "  --template NAME            chat template: chatml (Qwen3) | llama3 | plain (default chatml)\n"
            "  --bytes-per-token N        token count approximation: ceil(bytes/N) (default 4)\n"
            "  --max-model-len N          prompt + completion limit in tokens (default 131072)\n"
            "  --tokenizer FILE           tokenizer.json: real prompt token counts and KV blocks of --block-size\n"
            "                             tokens (default: tokens estimated as --bytes-per-token bytes)\n"
            "  --default-max-tokens N     completion length when the request names none (default 64)\n"
            "  --max-body-bytes N         request body limit (default 8388608)\n"
            "  --max-seqs N               concurrent sequences; more wait in a queue (default 256)\n"
            "  --block-size N             KV block size in tokens (default 16)\n"
            "  --cache-blocks N           prefix cache capacity in blocks (default 65536)\n"
            "  --cache-ttl-ms N           drop blocks unused for this long (default 0: never)\n"
            "  --overhead-ms X            fixed cost of each prefill (default 2)\n"
            "  --prefill-us-per-token X   cost of each uncached prompt token (default 20)\n"
            "  --itl-ms X                 inter-token latency with one sequence decoding (default 10)\n"
            "  --itl-us-per-seq X         added per other sequence decoding (default 20)\n"
            "  --drain-timeout-ms N       on SIGTERM, finish open streams for at most this long (default 5000)\n"
            "  --kv-events-config JSON    publish KV-cache events as vLLM does (its KVEventsConfig keys:\n"
            "                             enable_kv_cache_events, publisher, endpoint, replay_endpoint, topic,\n"
            "                             buffer_steps, hwm); needs --tokenizer\n"
            "  --kv-events-encoding E     array (tagged arrays, vLLM 0.11; default) | map (maps with \"type\")\n"
            "  --prefix-caching-hash-algo A  sha256 (default) | sha256_cbor | xxhash | xxhash_cbor\n"
            "  --kv-events-drop-seq N     tests: do not send batch N live (replay still has it); repeatable, 8 at most\n"
            "environment, as vLLM reads it: PYTHONHASHSEED (seeds NONE_HASH; unset: random),\n"
            "  VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES (1, default: events carry the low 64 bits; 0: the digest)\n");
}

static int parse_u64(const char *name, const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s == '\0' || *s == '-' || *end != '\0' || v > max) {
        fprintf(stderr, "ib-mock-engine: %s wants an integer in 0..%llu, got '%s'\n", name, (unsigned long long)max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* A non-negative decimal in <unit_ns> units, returned in ns. */
static int parse_ns(const char *name, const char *s, double unit_ns, uint64_t *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || !(v >= 0) || v * unit_ns > 1e15) {
        fprintf(stderr, "ib-mock-engine: %s wants a non-negative number, got '%s'\n", name, s);
        return -1;
    }
    *out = (uint64_t)(v * unit_ns + 0.5);
    return 0;
}

int main(int argc, char **argv)
{
    ib_engine_config_t cfg;
    ib_engine_config_defaults(&cfg);
    enum { O_LISTEN = 1, O_PORTFILE, O_MODEL, O_ID, O_TEMPLATE, O_BPT, O_MAXLEN, O_DEFMAX, O_MAXBODY, O_SEQS,
           O_BLOCK, O_CBLOCKS, O_TTL, O_OVERHEAD, O_PREFILL, O_ITL, O_ITLSEQ, O_DRAIN, O_TOKENIZER, O_KVCFG, O_KVENC, O_HASHALGO, O_KVDROP, O_HELP };
    static const struct option opts[] = {
        {"listen", 1, 0, O_LISTEN},       {"port-file", 1, 0, O_PORTFILE},      {"model", 1, 0, O_MODEL},
        {"id", 1, 0, O_ID},               {"template", 1, 0, O_TEMPLATE},        {"bytes-per-token", 1, 0, O_BPT},
        {"max-model-len", 1, 0, O_MAXLEN}, {"default-max-tokens", 1, 0, O_DEFMAX}, {"max-body-bytes", 1, 0, O_MAXBODY},
        {"max-seqs", 1, 0, O_SEQS},       {"block-size", 1, 0, O_BLOCK},         {"cache-blocks", 1, 0, O_CBLOCKS},
        {"cache-ttl-ms", 1, 0, O_TTL},    {"overhead-ms", 1, 0, O_OVERHEAD},     {"prefill-us-per-token", 1, 0, O_PREFILL},
        {"itl-ms", 1, 0, O_ITL},          {"itl-us-per-seq", 1, 0, O_ITLSEQ},    {"drain-timeout-ms", 1, 0, O_DRAIN},
        {"tokenizer", 1, 0, O_TOKENIZER}, {"kv-events-config", 1, 0, O_KVCFG}, {"kv-events-encoding", 1, 0, O_KVENC},
        {"prefix-caching-hash-algo", 1, 0, O_HASHALGO}, {"kv-events-drop-seq", 1, 0, O_KVDROP},
        {"help", 0, 0, O_HELP}, {0, 0, 0, 0}};
    char err[512];
    const char *seed = getenv("PYTHONHASHSEED"), *inth = getenv("VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES");
    if (seed != NULL) {
        cfg.kv_events.have_seed = 1;
        snprintf(cfg.kv_events.seed, sizeof(cfg.kv_events.seed), "%s", seed);
    }
    if (inth != NULL)
        cfg.kv_events.int_hashes = atoi(inth) != 0;
    int c;
    uint64_t v;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        int rc = 0;
        switch (c) {
        case O_LISTEN: cfg.listen = optarg; break;
        case O_PORTFILE: cfg.port_file = optarg; break;
        case O_MODEL: cfg.model = optarg; break;
        case O_ID: cfg.engine_id = optarg; break;
        case O_TOKENIZER: cfg.tokenizer = optarg; break;
        case O_TEMPLATE:
            if (ib_chat_template_parse(optarg, &cfg.chat_template) != 0) {
                fprintf(stderr, "ib-mock-engine: unknown --template '%s' (chatml, qwen3, llama3, plain)\n", optarg);
                rc = -1;
            }
            break;
        case O_BPT: rc = parse_u64("--bytes-per-token", optarg, 64, &v); cfg.bytes_per_token = (uint32_t)v; break;
        case O_MAXLEN: rc = parse_u64("--max-model-len", optarg, 1u << 30, &v); cfg.max_model_len = (uint32_t)v; break;
        case O_DEFMAX: rc = parse_u64("--default-max-tokens", optarg, 1u << 20, &v); cfg.default_max_tokens = (uint32_t)v; break;
        case O_MAXBODY: rc = parse_u64("--max-body-bytes", optarg, 1u << 30, &v); cfg.max_body_bytes = v; break;
        case O_SEQS: rc = parse_u64("--max-seqs", optarg, 1u << 20, &v); cfg.sched.max_seqs = (uint32_t)v; break;
        case O_BLOCK: rc = parse_u64("--block-size", optarg, 1u << 16, &v); cfg.sched.block_tokens = (uint32_t)v; break;
        case O_CBLOCKS: rc = parse_u64("--cache-blocks", optarg, 1u << 28, &v); cfg.sched.cache_blocks = (uint32_t)v; break;
        case O_TTL: rc = parse_ns("--cache-ttl-ms", optarg, 1e6, &cfg.sched.cache_ttl_ns); break;
        case O_OVERHEAD: rc = parse_ns("--overhead-ms", optarg, 1e6, &cfg.sched.overhead_ns); break;
        case O_PREFILL: rc = parse_ns("--prefill-us-per-token", optarg, 1e3, &cfg.sched.prefill_ns_per_token); break;
        case O_ITL: rc = parse_ns("--itl-ms", optarg, 1e6, &cfg.sched.itl_ns); break;
        case O_ITLSEQ: rc = parse_ns("--itl-us-per-seq", optarg, 1e3, &cfg.sched.itl_ns_per_seq); break;
        case O_DRAIN: rc = parse_u64("--drain-timeout-ms", optarg, 1u << 30, &v); cfg.drain_timeout_ms = (uint32_t)v; break;
        case O_KVCFG:
            if (ib_kvpub_config_parse(&cfg.kv_events, optarg, err, sizeof(err)) != 0) {
                fprintf(stderr, "ib-mock-engine: %s\n", err);
                rc = -1;
            }
            break;
        case O_KVENC:
            if (strcmp(optarg, "array") == 0 || strcmp(optarg, "map") == 0) {
                cfg.kv_events.encoding = optarg[0] == 'a' ? IB_KVENC_ARRAY : IB_KVENC_MAP;
            } else {
                fprintf(stderr, "ib-mock-engine: --kv-events-encoding wants array or map, got '%s'\n", optarg);
                rc = -1;
            }
            break;
        case O_HASHALGO:
            if (ib_kvpub_algo_parse(optarg, &cfg.kv_events.algo) != 0) {
                fprintf(stderr, "ib-mock-engine: --prefix-caching-hash-algo: sha256, sha256_cbor, xxhash or "
                                "xxhash_cbor, not '%s'\n", optarg);
                rc = -1;
            }
            break;
        case O_KVDROP:
            if (cfg.kv_events.ndrop == 8) {
                fprintf(stderr, "ib-mock-engine: at most 8 --kv-events-drop-seq\n");
                rc = -1;
                break;
            }
            rc = parse_u64("--kv-events-drop-seq", optarg, UINT64_MAX - 1, &cfg.kv_events.drop_seq[cfg.kv_events.ndrop++]);
            break;
        case O_HELP: usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
        if (rc != 0)
            return 2;
    }
    if (optind < argc) {
        fprintf(stderr, "ib-mock-engine: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    ib_engine_t *eng = ib_engine_create(&cfg);
    if (eng == NULL)
        return 1;
    int rc = ib_engine_run(eng);
    ib_engine_destroy(eng);
    return rc;
}
