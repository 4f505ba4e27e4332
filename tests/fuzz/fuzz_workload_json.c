/* libFuzzer: the orchestrator's workload body reader (ib_workload_json_read) and the engine
 * command built from what it accepts. Invariants: no crash or leak; on error a message is
 * set and the spec is unchanged; on success every string field is NUL-terminated within
 * its array and numbers are in range. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"

#include "ibrain/cluster.h"
#include "ibrain/orchestrator.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ib_json_parser_t *p;
    if (p == NULL)
        p = ib_json_parser_new(1 << 16);
    ib_workload_spec_t s, before;
    memset(&s, 0x5a, sizeof(s));
    s.id[sizeof(s.id) - 1] = '\0';
    before = s;
    uint32_t present = 0;
    ib_field_error_t e;
    if (ib_workload_json_read(p, (const char *)data, size, size, &s, &present, &e) != 0) {
        CHECK(e.message[0] != '\0');
        CHECK(memcmp(&s, &before, sizeof(s)) == 0);
        return 0;
    }
    if (present & IB_WF_REPLICAS)
        CHECK(s.replicas >= 1 && s.replicas <= IB_MAX_WORKLOAD_REPLICAS);
    if (present & IB_WF_BLOCK)
        CHECK(s.block_size <= 65536);
    if (present & IB_WF_MODEL)
        CHECK(memchr(s.model, '\0', sizeof(s.model)) != NULL);
    if (present & IB_WF_ENGINE_ARGS)
        CHECK(memchr(s.engine_args, '\0', sizeof(s.engine_args)) != NULL);
    /* make every field a string for the command builder */
    s.id[sizeof(s.id) - 1] = s.model[sizeof(s.model) - 1] = s.weights[sizeof(s.weights) - 1] = '\0';
    s.engine[sizeof(s.engine) - 1] = s.engine_args[sizeof(s.engine_args) - 1] = '\0';
    s.engine_cmd[sizeof(s.engine_cmd) - 1] = s.chat_template[sizeof(s.chat_template) - 1] = '\0';
    s.tokenizer[sizeof(s.tokenizer) - 1] = '\0';
    char out[1024], err[200];
    if (ib_engine_command(&s, "mock --port {port}", out, sizeof(out), err, sizeof(err)) != 0)
        CHECK(strchr(err, ':') != NULL);
    else
        CHECK(memchr(out, '\0', sizeof(out)) != NULL);
    return 0;
}
