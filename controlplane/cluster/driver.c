/* The cluster server's drivers, by name (include/ibrain/cluster.h). A new driver is one
 * row here and its driver_NAME.c; the server only calls through the ops table. */
#include <string.h>

#include "ibrain/cluster.h"

const ib_driver_entry_t ib_drivers[] = {
    {.name = "local", .summary = "one ib-manager child process per replica, on this machine",
     .create = ib_driver_local_new},
    {.name = "kubernetes", .summary = "a Deployment + headless Service + ConfigMap per workload, by server-side apply",
     .create = ib_driver_kubernetes_new},
    {.name = NULL},
};

const ib_driver_entry_t *ib_driver_find(const char *name)
{
    if (name == NULL)
        return &ib_drivers[0];
    for (const ib_driver_entry_t *d = ib_drivers; d->name != NULL; d++)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}
