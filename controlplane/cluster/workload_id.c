/* Workload ids (include/ibrain/cluster.h). */
#include "ibrain/cluster.h"

int ib_workload_id_valid(const char *s, size_t n)
{
    if (s == NULL || n == 0 || n > IB_WORKLOAD_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
            return 0;
    return 1;
}
