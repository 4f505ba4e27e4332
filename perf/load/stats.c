/* Sample sets and nearest-rank percentiles for ib-load (include/ibrain/loadgen.h). */
#include "ibrain/loadgen.h"

#include <math.h>
#include <stdlib.h>

int ib_samples_add(ib_samples_t *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 1024;
        double *v = realloc(s->v, cap * sizeof(*v));
        if (v == NULL)
            return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
    return 0;
}

void ib_samples_free(ib_samples_t *s)
{
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void ib_samples_sort(ib_samples_t *s)
{
    if (s->n > 1)
        qsort(s->v, s->n, sizeof(double), cmp_double);
}

double ib_samples_pct(const ib_samples_t *s, double p)
{
    if (s->n == 0)
        return NAN;
    size_t rank = (size_t)ceil(p / 100.0 * (double)s->n);
    if (rank < 1)
        rank = 1;
    if (rank > s->n)
        rank = s->n;
    return s->v[rank - 1];
}

double ib_samples_mean(const ib_samples_t *s)
{
    if (s->n == 0)
        return NAN;
    double sum = 0;
    for (size_t i = 0; i < s->n; i++)
        sum += s->v[i];
    return sum / (double)s->n;
}
