/*
 * ib-kv-flood: publishes a stream of vLLM KV-cache event batches as fast as it can, to
 * measure what one consumer absorbs (perf/bench-kv-events.sh).
 *
 *   ib-kv-flood ENDPOINT BATCHES [BLOCKS_PER_BATCH] [BLOCK_SIZE]
 *
 * Binds a ZMQ PUB on ENDPOINT (no send high-water mark: nothing is dropped at this end),
 * waits for a subscriber (ZMQ_XPUB-less: a first sleep of 1 s), then sends BATCHES batches
 * with sequences 0, 1, 2 ... Batch k stores a fresh prompt of BLOCKS_PER_BATCH blocks
 * (BlockStored, parent nil, distinct token ids) and removes the blocks batch k - 64 stored
 * (one BlockRemoved per block, as vLLM sends them), so a consumer's state stays bounded.
 * The payloads are a pre-encoded cycle of 4,096 batches, so the sender costs one memcpy-free
 * send per frame. Prints the blocks sent and the seconds it took to stderr.
 */
#include <msgpack.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define CYCLE 4096u
#define WINDOW 64u

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: ib-kv-flood ENDPOINT BATCHES [BLOCKS_PER_BATCH=16] [BLOCK_SIZE=16]\n");
        return 2;
    }
    const char *ep = argv[1];
    unsigned long long batches = strtoull(argv[2], NULL, 10);
    uint32_t nb = argc > 3 ? (uint32_t)atoi(argv[3]) : 16, bs = argc > 4 ? (uint32_t)atoi(argv[4]) : 16;
    if (nb == 0 || bs == 0 || nb > 4096 || bs > 1024) {
        fprintf(stderr, "ib-kv-flood: blocks per batch 1..4096, block size 1..1024\n");
        return 2;
    }
    msgpack_sbuffer *cycle = calloc(CYCLE, sizeof(*cycle));
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    for (uint32_t k = 0; k < CYCLE; k++) {
        msgpack_sbuffer_init(&cycle[k]);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &cycle[k], msgpack_sbuffer_write);
        msgpack_pack_array(&pk, 3);
        msgpack_pack_double(&pk, (double)wall.tv_sec); /* the lag histogram is not the point here */
        msgpack_pack_array(&pk, 1 + nb);
        msgpack_pack_array(&pk, 7);
        pack_str(&pk, "BlockStored");
        msgpack_pack_array(&pk, nb);
        for (uint32_t j = 0; j < nb; j++)
            msgpack_pack_uint64(&pk, ((uint64_t)k << 20 | j) * 0x9e3779b97f4a7c15ull | 1);
        msgpack_pack_nil(&pk);
        msgpack_pack_array(&pk, nb * bs);
        for (uint32_t t = 0; t < nb * bs; t++)
            msgpack_pack_uint32(&pk, (k * 7919u + t * 31u) % 150000u);
        msgpack_pack_uint32(&pk, bs);
        msgpack_pack_nil(&pk);
        pack_str(&pk, "GPU");
        uint32_t old = (k + CYCLE - WINDOW) % CYCLE;
        for (uint32_t j = 0; j < nb; j++) {
            msgpack_pack_array(&pk, 3);
            pack_str(&pk, "BlockRemoved");
            msgpack_pack_array(&pk, 1);
            msgpack_pack_uint64(&pk, ((uint64_t)old << 20 | j) * 0x9e3779b97f4a7c15ull | 1);
            pack_str(&pk, "GPU");
        }
        msgpack_pack_int(&pk, 0);
    }
    void *ctx = zmq_ctx_new(), *pub = zmq_socket(ctx, ZMQ_PUB);
    int zero = 0;
    zmq_setsockopt(pub, ZMQ_SNDHWM, &zero, sizeof(zero));
    if (zmq_bind(pub, ep) != 0) {
        fprintf(stderr, "ib-kv-flood: bind %s: %s\n", ep, zmq_strerror(zmq_errno()));
        return 1;
    }
    sleep(1); /* the subscriber connects */
    double t0 = now_s();
    for (unsigned long long s = 0; s < batches; s++) {
        uint8_t be[8];
        for (int i = 0; i < 8; i++)
            be[i] = (uint8_t)(s >> (56 - 8 * i));
        const msgpack_sbuffer *b = &cycle[s % CYCLE];
        zmq_send(pub, "", 0, ZMQ_SNDMORE);
        zmq_send(pub, be, 8, ZMQ_SNDMORE);
        zmq_send(pub, b->data, b->size, 0);
    }
    double t1 = now_s();
    fprintf(stderr, "ib-kv-flood: %llu batches, %llu block events (%u stored + %u removed each) sent in %.3f s\n",
            batches, batches * 2 * nb, nb, nb, t1 - t0);
    sleep(30); /* stays bound while the consumer drains (killed by the script) */
    zmq_close(pub);
    zmq_ctx_term(ctx);
    for (uint32_t k = 0; k < CYCLE; k++)
        msgpack_sbuffer_destroy(&cycle[k]);
    free(cycle);
    return 0;
}
