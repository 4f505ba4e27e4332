/* Shared by the unit tests and the fuzz targets that need a proxy: the standalone
 * configuration of three replicas (r0, r1, r2 at 127.0.0.1:9, never connected to) of model
 * "demo", one worker, listening on a free loopback port. */
#ifndef IBRAIN_TESTS_PROXY_CONFIG_H
#define IBRAIN_TESTS_PROXY_CONFIG_H

#include "ibrain/proxy.h"

static inline void ib_test_proxy_config(ib_proxy_config_t *cfg, const char *policy, const char *instance)
{
    ib_proxy_config_defaults(cfg);
    cfg->listen = "127.0.0.1:0";
    cfg->workers = 1;
    cfg->replica_specs[0] = "r0=127.0.0.1:9";
    cfg->replica_specs[1] = "r1=127.0.0.1:9";
    cfg->replica_specs[2] = "r2=127.0.0.1:9";
    cfg->nreplicas = 3;
    cfg->models[0] = "demo";
    cfg->nmodels = 1;
    cfg->policy = policy;
    cfg->instance_id = instance;
}

#endif
