/* Shared by the libFuzzer targets. */
#ifndef IBRAIN_TESTS_FUZZ_H
#define IBRAIN_TESTS_FUZZ_H

#include <stdlib.h>

/* Checked in every build type (assert() is compiled out with NDEBUG). */
#define CHECK(c)                                                                                                       \
    do {                                                                                                               \
        if (!(c))                                                                                                      \
            abort();                                                                                                   \
    } while (0)

#endif
