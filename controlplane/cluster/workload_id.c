/* Workload ids and resource quantities (include/ibrain/cluster.h). */
#include <string.h>

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

int ib_quantity_valid(const char *s)
{
    static const char *const suffixes[] = {"", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    size_t i = 0, digits = 0;
    while (s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (s[i] == '.') {
        i++;
        while (s[i] >= '0' && s[i] <= '9')
            i++, digits++;
    }
    if (digits == 0)
        return 0;
    for (size_t k = 0; k < sizeof(suffixes) / sizeof(suffixes[0]); k++)
        if (strcmp(s + i, suffixes[k]) == 0)
            return 1;
    return 0;
}
