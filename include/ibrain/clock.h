/* Monotonic time in nanoseconds, the one clock every ibrain component measures with, and
 * the wall clock for timestamps. */
#ifndef IBRAIN_CLOCK_H
#define IBRAIN_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t ib_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wall-clock time (Unix epoch), for timestamps other processes read (snapshots, status,
 * write-back batches); never for measuring intervals. */
static inline int64_t ib_wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static inline uint64_t ib_wall_ms(void) { return (uint64_t)(ib_wall_us() / 1000); }

#endif
