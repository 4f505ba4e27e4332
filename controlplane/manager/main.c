/* ib-manager: the workload manager of one replica (include/ibrain/manager.h). */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ibrain/manager.h"
#include "ibrain/net.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ib-manager --weights PATH [options]\n"
               "  --listen IPV4:PORT        status server (GET /status, /health, /metrics) (default 127.0.0.1:0)\n"
               "  --port-file F             write the status port to F once listening\n"
               "  --workload ID --replica ID --model NAME   names reported in /status and passed to the engine\n"
               "  --weights PATH            model weights (file or directory): checked and fingerprinted first\n"
               "  --engine-cmd 'CMD ARGS'   the engine; {port} {model} {weights} {replica} are substituted\n"
               "                            (default: ib-mock-engine beside this binary, serving {model} on {port})\n"
               "  --engine-port N           the engine's port (default a free loopback port)\n"
               "  --state-dir DIR           where the engine's log goes (default .)\n"
               "  --ready-timeout-ms N      engine start to healthy, else restart (default 60000)\n"
               "  --drain-timeout-ms N      on SIGTERM, the engine's time to finish before SIGKILL (default 10000)\n");
}

int main(int argc, char **argv)
{
    ib_manager_config_t cfg = {.listen = "127.0.0.1:0", .workload = "", .replica = "replica", .model = "mock"};
    static const struct option opts[] = {
        {"listen", 1, 0, 'l'},     {"port-file", 1, 0, 'p'},        {"workload", 1, 0, 'w'},
        {"replica", 1, 0, 'r'},    {"model", 1, 0, 'm'},            {"weights", 1, 0, 'W'},
        {"engine-cmd", 1, 0, 'e'}, {"engine-port", 1, 0, 'P'},      {"state-dir", 1, 0, 's'},
        {"ready-timeout-ms", 1, 0, 'R'}, {"drain-timeout-ms", 1, 0, 'D'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'l': cfg.listen = optarg; break;
        case 'p': cfg.port_file = optarg; break;
        case 'w': cfg.workload = optarg; break;
        case 'r': cfg.replica = optarg; break;
        case 'm': cfg.model = optarg; break;
        case 'W': cfg.weights = optarg; break;
        case 'e': cfg.engine_cmd = optarg; break;
        case 'P': cfg.engine_port = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 's': cfg.state_dir = optarg; break;
        case 'R': cfg.ready_timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'D': cfg.drain_timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc || cfg.weights == NULL) {
        usage(stderr);
        return 2;
    }
    char engine[PATH_MAX], cmd[PATH_MAX + 128];
    if (cfg.engine_cmd == NULL) { /* the mock engine of this build */
        if (ib_exe_sibling("../tools/ib-mock-engine", engine, sizeof(engine)) != 0)
            snprintf(engine, sizeof(engine), "ib-mock-engine");
        snprintf(cmd, sizeof(cmd), "%s --listen 127.0.0.1:{port} --model {model} --id {replica}", engine);
        cfg.engine_cmd = cmd;
    }
    return ib_manager_run(&cfg);
}
