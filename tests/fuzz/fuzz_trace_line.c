/* libFuzzer: ib-load's trace line parsers (Mooncake JSONL and Azure CSV) and the prompt
 * built from whatever parses. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/loadgen.h"
#include "ibrain/ondemand_c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ib_json_parser_t *p;
    if (p == NULL)
        p = ib_json_parser_new(1 << 20);
    ib_load_item_t it;
    char err[160];
    ib_load_workload_t w;
    ib_load_workload_init(&w);
    if (ib_load_parse_mooncake_line(p, (const char *)data, size, &it, err, sizeof(err)) == 0) {
        CHECK(it.input_tokens > 0);
        /* Bound the prompt so the fuzzer spends its time on parsing. */
        if (it.input_tokens <= 65536) {
            w.source = IB_SRC_MOONCAKE;
            ib_buf_t sys = {0}, out = {0};
            CHECK(ib_load_item_prompt(&w, &it, &sys, &out) == 0);
            uint64_t cover = (uint64_t)it.nkeys * w.block_tokens;
            uint64_t want = it.input_tokens < cover ? it.input_tokens : cover;
            CHECK(out.len == want * w.bytes_per_token);
            ib_buf_free(&sys);
            ib_buf_free(&out);
        }
        free(it.keys);
    } else {
        CHECK(err[0] != '\0');
    }
    if (ib_load_parse_azure_line((const char *)data, size, &it, err, sizeof(err)) == 0)
        CHECK(it.input_tokens > 0);
    return 0;
}
