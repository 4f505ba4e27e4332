/*
 * ib-netdelay: holds every packet of an NFQUEUE queue for a fixed time, then lets it go
 * (libnetfilter_queue). The chaos campaign's delay fault (perf/chaos.sh): this machine's
 * kernel has no netem qdisc, so a rule marks the packets from ibrain to one engine and
 * queues them here (iptables -j NFQUEUE --queue-bypass: with no listener, they pass).
 *
 *   ib-netdelay --queue N --delay-ms D
 *
 * Packets leave in the order they came, each D ms after it was queued (to the
 * millisecond); only their metadata is copied to user space. SIGTERM or SIGINT lets the
 * held packets go at once and exits.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>

#define HELD_MAX 65536u /* the queue's length in the kernel, and ours */

typedef struct held {
    uint32_t id;
    uint64_t due_ns;
} held_t;

typedef struct delayer {
    struct nfq_q_handle *q;
    uint64_t delay_ns;
    held_t held[HELD_MAX]; /* a FIFO: every packet waits as long, so the oldest is due first */
    uint32_t head, len;
    uint64_t passed, dropped;
} delayer_t;

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int on_packet(struct nfq_q_handle *q, struct nfgenmsg *msg, struct nfq_data *nfa, void *arg)
{
    (void)msg;
    delayer_t *d = arg;
    struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
    if (ph == NULL)
        return 0;
    uint32_t id = ntohl(ph->packet_id);
    if (d->len == HELD_MAX) { /* cannot happen with the kernel queue as long: let it pass */
        d->dropped++;
        return nfq_set_verdict(q, id, NF_ACCEPT, 0, NULL);
    }
    d->held[(d->head + d->len++) % HELD_MAX] = (held_t){id, now_ns() + d->delay_ns};
    return 0;
}

/* Lets go what is due (all with <all>); returns the ms until the next is due, or -1. */
static int release(delayer_t *d, int all)
{
    uint64_t now = now_ns();
    while (d->len > 0) {
        held_t *h = &d->held[d->head];
        if (!all && h->due_ns > now)
            return (int)((h->due_ns - now + 999999) / 1000000);
        nfq_set_verdict(d->q, h->id, NF_ACCEPT, 0, NULL);
        d->head = (d->head + 1) % HELD_MAX;
        d->len--;
        d->passed++;
    }
    return -1;
}

int main(int argc, char **argv)
{
    long queue = -1, delay_ms = -1;
    static const struct option opts[] = {{"queue", 1, 0, 'q'}, {"delay-ms", 1, 0, 'd'}, {"help", 0, 0, 'h'}, {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        char *end;
        long v = optarg ? strtol(optarg, &end, 10) : 0;
        if (optarg && (*optarg == '\0' || *end != '\0' || v < 0 || v > 65535)) {
            fprintf(stderr, "ib-netdelay: %s wants a number from 0 to 65535, got '%s'\n", argv[optind - 1], optarg);
            return 2;
        }
        switch (c) {
        case 'q': queue = v; break;
        case 'd': delay_ms = v; break;
        case 'h': printf("usage: ib-netdelay --queue N --delay-ms D\n"); return 0;
        default: return 2;
        }
    }
    if (queue < 0 || delay_ms < 0) {
        fprintf(stderr, "usage: ib-netdelay --queue N --delay-ms D\n");
        return 2;
    }
    delayer_t *d = calloc(1, sizeof(*d));
    struct nfq_handle *h = nfq_open();
    if (d == NULL || h == NULL) {
        fprintf(stderr, "ib-netdelay: cannot open netfilter_queue: %s\n", strerror(errno));
        return 1;
    }
    d->delay_ns = (uint64_t)delay_ms * 1000000ull;
    d->q = nfq_create_queue(h, (uint16_t)queue, on_packet, d);
    if (d->q == NULL || nfq_set_mode(d->q, NFQNL_COPY_META, 0) < 0 || nfq_set_queue_maxlen(d->q, HELD_MAX) < 0) {
        fprintf(stderr, "ib-netdelay: cannot bind queue %ld: %s\n", queue, strerror(errno));
        return 1;
    }
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    int fd = nfq_fd(h);
    fprintf(stderr, "ib-netdelay: queue %ld, %ld ms\n", queue, delay_ms);
    char buf[65536] __attribute__((aligned));
    for (;;) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {sfd, POLLIN, 0}};
        int rc = poll(p, 2, release(d, 0));
        if (rc < 0 && errno != EINTR)
            break;
        if (p[1].revents)
            break;
        if (p[0].revents) {
            ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
            if (n > 0)
                nfq_handle_packet(h, buf, (int)n);
            else if (n < 0 && errno == ENOBUFS)
                fprintf(stderr, "ib-netdelay: the kernel dropped packets (ENOBUFS)\n");
        }
    }
    release(d, 1);
    fprintf(stderr, "ib-netdelay: %llu packets delayed\n", (unsigned long long)d->passed);
    nfq_destroy_queue(d->q);
    nfq_close(h);
    free(d);
    return 0;
}
