/* ib-manager: the workload manager of one replica (include/ibrain/manager.h). */
#include <errno.h>
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
               "  --config FILE             options from a file first, one \"name value\" a line (\"engine-port 8000\");\n"
               "                            '#' starts a comment; options given after it override it (the\n"
               "                            kubernetes driver's ConfigMap holds this file)\n"
               "  --engine-cmd 'CMD ARGS'   the engine; {port} {model} {weights} {replica} {host} {kv_port}\n"
               "                            {kv_replay_port} are substituted\n"
               "  --engine-host ADDR        {host}: where the engine listens (default 127.0.0.1; 0.0.0.0 in a pod)\n"
               "                            (default: ib-mock-engine beside this binary, serving {model} on {port})\n"
               "  --engine-port N           the engine's port (default a free loopback port)\n"
               "  --kv-port N               {kv_port}: the engine's KV events PUB port (default a free port)\n"
               "  --kv-replay-port N        {kv_replay_port}: its replay ROUTER port (default a free port)\n"
               "  --state-dir DIR           where the engine's log goes (default .)\n"
               "  --ready-timeout-ms N      engine start to healthy, else restart (default 60000)\n"
               "  --drain-timeout-ms N      on SIGTERM, the engine's time to finish before SIGKILL (default 10000)\n");
}

/* The argv that --config FILE makes: the file's options, then the command line's. */
typedef struct conf_argv {
    char *text;  /* the file, cut into values */
    char *names; /* "--name" strings */
    char **argv;
    int argc;
} conf_argv_t;

static void conf_free(conf_argv_t *c)
{
    free(c->text);
    free(c->names);
    free(c->argv);
}

/* <c> with the options of <path> ("name value" lines) in place of argv's "--config PATH".
 * 0, or -1 with a message on stderr. */
static int read_config(const char *path, int argc, char **argv, conf_argv_t *c)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr, "ib-manager: --config %s: %s\n", path, strerror(errno));
        return -1;
    }
    char *text = calloc(1, 65537);
    size_t len = text ? fread(text, 1, 65536, f) : 0;
    int big = text != NULL && !feof(f);
    fclose(f);
    if (text == NULL || big) {
        fprintf(stderr, "ib-manager: --config %s: %s\n", path, text ? "over 64 KiB" : "out of memory");
        free(text);
        return -1;
    }
    text[len] = '\0';
    size_t lines = 1;
    for (size_t i = 0; i < len; i++)
        lines += text[i] == '\n';
    char **av = calloc(2 * lines + (size_t)argc + 1, sizeof(*av));
    /* "--name" strings: written in front of each name, in the space the file gives */
    char *names = calloc(1, len + 3 * lines + 1);
    if (av == NULL || names == NULL) {
        fprintf(stderr, "ib-manager: out of memory\n");
        free(av), free(names), free(text);
        return -1;
    }
    int n = 0;
    av[n++] = argv[0];
    char *w = names, *save = NULL;
    unsigned lineno = 0;
    for (char *line = strtok_r(text, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        line += strspn(line, " \t");
        size_t l = strcspn(line, "\r");
        line[l] = '\0';
        if (line[0] == '\0' || line[0] == '#')
            continue;
        size_t nl = strcspn(line, " \t");
        char *value = line + nl;
        if (*value != '\0')
            *value++ = '\0';
        value += strspn(value, " \t");
        if (strcmp(line, "config") == 0) {
            fprintf(stderr, "ib-manager: --config %s: line %u: a config file cannot name another\n", path, lineno);
            free(av), free(names), free(text);
            return -1;
        }
        av[n++] = w;
        w += sprintf(w, "--%s", line) + 1;
        if (*value != '\0')
            av[n++] = value;
    }
    for (int i = 3; i < argc; i++)
        av[n++] = argv[i];
    av[n] = NULL;
    *c = (conf_argv_t){.text = text, .names = names, .argv = av, .argc = n};
    return 0;
}

int main(int argc, char **argv)
{
    ib_manager_config_t cfg = {.listen = "127.0.0.1:0", .workload = "", .replica = "replica", .model = "mock"};
    static const struct option opts[] = {
        {"listen", 1, 0, 'l'},     {"port-file", 1, 0, 'p'},        {"workload", 1, 0, 'w'},
        {"replica", 1, 0, 'r'},    {"model", 1, 0, 'm'},            {"weights", 1, 0, 'W'},
        {"engine-cmd", 1, 0, 'e'}, {"engine-port", 1, 0, 'P'},      {"state-dir", 1, 0, 's'},
        {"ready-timeout-ms", 1, 0, 'R'}, {"drain-timeout-ms", 1, 0, 'D'}, {"help", 0, 0, 'h'},
        {"engine-host", 1, 0, 'H'}, {"config", 1, 0, 'c'}, {"kv-port", 1, 0, 'k'},
        {"kv-replay-port", 1, 0, 'K'}, {0, 0, 0, 0}};
    char **args = argv;
    conf_argv_t conf = {0};
    if (argc >= 3 && strcmp(argv[1], "--config") == 0) { /* the file's options come first */
        if (read_config(argv[2], argc, argv, &conf) != 0)
            return 2;
        args = conf.argv;
        argc = conf.argc;
    }
    int c, bad = 0;
    while (!bad && (c = getopt_long(argc, args, "", opts, NULL)) != -1) {
        switch (c) {
        case 'H': cfg.engine_host = optarg; break;
        case 'c':
            fprintf(stderr, "ib-manager: --config must be the first option\n");
            bad = 1;
            break;
        case 'l': cfg.listen = optarg; break;
        case 'p': cfg.port_file = optarg; break;
        case 'w': cfg.workload = optarg; break;
        case 'r': cfg.replica = optarg; break;
        case 'm': cfg.model = optarg; break;
        case 'W': cfg.weights = optarg; break;
        case 'e': cfg.engine_cmd = optarg; break;
        case 'P': cfg.engine_port = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'k': cfg.kv_port = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'K': cfg.kv_replay_port = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 's': cfg.state_dir = optarg; break;
        case 'R': cfg.ready_timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'D': cfg.drain_timeout_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'h': usage(stdout); conf_free(&conf); return 0;
        default: usage(stderr); bad = 1; break;
        }
    }
    if (bad || optind < argc || cfg.weights == NULL) {
        if (!bad)
            usage(stderr);
        conf_free(&conf);
        return 2;
    }
    char engine[PATH_MAX], cmd[PATH_MAX + 128];
    if (cfg.engine_cmd == NULL) { /* the mock engine of this build */
        if (ib_exe_sibling("../tools/ib-mock-engine", engine, sizeof(engine)) != 0)
            snprintf(engine, sizeof(engine), "ib-mock-engine");
        snprintf(cmd, sizeof(cmd), "%s --listen 127.0.0.1:{port} --model {model} --id {replica}", engine);
        cfg.engine_cmd = cmd;
    }
    int rc = ib_manager_run(&cfg);
    conf_free(&conf);
    return rc;
}
