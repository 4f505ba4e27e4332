/* ib-clusterd: the cluster server (include/ibrain/cluster.h) with a driver from ib_drivers[]. */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ibrain/cluster.h"
#include "ibrain/net.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: ib-clusterd [options]\n"
               "  --listen IPV4:PORT   gRPC (default 127.0.0.1:7070; port 0: free)\n"
               "  --port-file F        write the gRPC port to F once listening\n"
               "  --state-dir DIR      managers' port files and logs (default ./ib-cluster-state)\n"
               "  --manager PATH       the ib-manager binary (default: beside this one)\n"
               "  --engine 'CMD'       the command of engine \"mock\", placeholders included (default: this\n"
               "                       build's ib-mock-engine --listen 127.0.0.1:{port} --model {model} --id {replica})\n"
               "  --http-listen IPV4:PORT   GET /metrics and /health (default none; port 0: free)\n"
               "  --http-port-file F   write that port to F\n"
               "  --drain-grace-ms N   a retiring replica is announced as draining this long before it is\n"
               "                       stopped, so that routers stop sending to it first (default 1500)\n"
               "  --kubeconfig F       kubernetes: the API server and credentials (default: in-cluster, the\n"
               "                       pod's service account)\n"
               "  --namespace NS       kubernetes: where workloads go (default: the kubeconfig context's or\n"
               "                       the pod's, else default)\n"
               "  --image REF          kubernetes: the workload pods' image (ib-manager with the engines;\n"
               "                       default ibrain.local/ib-manager:latest)\n"
               "  --pull-policy P      kubernetes: IfNotPresent (default), Never or Always\n"
               "  --pod-drain-s N      kubernetes: a pod shows as terminating this long before its manager\n"
               "                       drains (preStop; default 3)\n"
               "  --pod-grace-s N      kubernetes: terminationGracePeriodSeconds (default 30)\n"
               "  --rollout-deadline-s N  kubernetes: a rollout that makes no progress this long (a new pod\n"
               "                       never ready) makes the workload degraded (default 600)\n"
               "  --driver NAME        what runs the replicas (default %s):\n",
            ib_drivers[0].name);
    for (const ib_driver_entry_t *d = ib_drivers; d->name != NULL; d++)
        fprintf(f, "                         %-8s %s\n", d->name, d->summary);
}

int main(int argc, char **argv)
{
    ib_cluster_config_t cfg = {.listen = "127.0.0.1:7070", .state_dir = "ib-cluster-state"};
    static const struct option opts[] = {{"listen", 1, 0, 'l'},  {"port-file", 1, 0, 'p'}, {"state-dir", 1, 0, 's'},
                                         {"manager", 1, 0, 'm'}, {"engine", 1, 0, 'e'},    {"help", 0, 0, 'h'},
                                         {"http-listen", 1, 0, 'H'}, {"http-port-file", 1, 0, 'P'},
                                         {"drain-grace-ms", 1, 0, 'g'}, {"driver", 1, 0, 'd'},
                                         {"kubeconfig", 1, 0, 'k'}, {"namespace", 1, 0, 'n'},
                                         {"image", 1, 0, 'i'}, {"pull-policy", 1, 0, 'u'},
                                         {"pod-drain-s", 1, 0, 'D'}, {"pod-grace-s", 1, 0, 'G'},
                                         {"rollout-deadline-s", 1, 0, 'R'},
                                         {0, 0, 0, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'd': cfg.driver = optarg; break;
        case 'k': cfg.kubeconfig = optarg; break;
        case 'n': cfg.namespace_ = optarg; break;
        case 'i': cfg.image = optarg; break;
        case 'u': cfg.pull_policy = optarg; break;
        case 'D': cfg.pod_drain_s = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'G': cfg.pod_grace_s = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'R': cfg.rollout_deadline_s = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'l': cfg.listen = optarg; break;
        case 'p': cfg.port_file = optarg; break;
        case 's': cfg.state_dir = optarg; break;
        case 'm': cfg.manager = optarg; break;
        case 'e': cfg.engine = optarg; break;
        case 'H': cfg.http_listen = optarg; break;
        case 'P': cfg.http_port_file = optarg; break;
        case 'g': cfg.drain_grace_ms = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    char manager[PATH_MAX];
    if (cfg.manager == NULL) {
        if (ib_exe_sibling("ib-manager", manager, sizeof(manager)) != 0)
            snprintf(manager, sizeof(manager), "./ib-manager");
        cfg.manager = manager;
    }
    char mock[PATH_MAX + 128];
    if (cfg.engine == NULL) {
        char bin[PATH_MAX];
        if (ib_exe_sibling("../tools/ib-mock-engine", bin, sizeof(bin)) != 0)
            snprintf(bin, sizeof(bin), "ib-mock-engine");
        snprintf(mock, sizeof(mock), "%s --listen 127.0.0.1:{port} --model {model} --id {replica}", bin);
        cfg.engine = mock;
    }
    if (cfg.drain_grace_ms == 0)
        cfg.drain_grace_ms = 1500;
    if (mkdir(cfg.state_dir, 0755) != 0 && access(cfg.state_dir, W_OK) != 0) {
        perror(cfg.state_dir);
        return 1;
    }
    const ib_driver_entry_t *entry = ib_driver_find(cfg.driver);
    if (entry == NULL) {
        fprintf(stderr, "ib-clusterd: --driver: no driver named '%s' (", cfg.driver);
        for (const ib_driver_entry_t *e = ib_drivers; e->name != NULL; e++)
            fprintf(stderr, "%s%s", e == ib_drivers ? "" : ", ", e->name);
        fprintf(stderr, ")\n");
        return 2;
    }
    ib_driver_t *d = entry->create(&cfg);
    if (d == NULL)
        return 1;
    int rc = ib_cluster_run(&cfg, d);
    d->destroy(d);
    return rc;
}
