#!/usr/bin/env python3
"""Slopes of perf/soak.sh's samples: each column's least-squares slope per hour, over the
run after a 10-minute warm-up and over its last third, with the first and last values.
Memory that fills a bounded structure (the affinity table's pages touched for the first
time, the Redis stream up to its cap) rises early and then stays: the last third shows
whether anything still grows.

  soak_slopes.py SAMPLES.tsv
"""
import sys


def slope(rows, j):
    xs = [r[0] for r in rows]
    ys = [r[j] for r in rows]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    return (sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0), my


def main(path):
    rows = [l.rstrip("\n").split("\t") for l in open(path)]
    head, data = rows[0], [[float(x) for x in r] for r in rows[1:] if len(r) == len(rows[0])]
    if len(data) < 6:
        sys.exit("soak_slopes.py: too few samples")
    warm = data[min(10, len(data) // 3):]
    last = data[-max(3, len(data) // 3):]
    print("%-12s %12s %12s %12s  %-28s %-28s" % ("", "first", "last", "mean", "slope after warm-up /h",
                                                "slope over the last third /h"))
    for j, name in enumerate(head[1:], 1):
        s1, m1 = slope(warm, j)
        s2, m2 = slope(last, j)
        print("%-12s %12.0f %12.0f %12.0f  %+12.1f (%+6.2f%%)      %+12.1f (%+6.2f%%)" % (
            name, data[0][j], data[-1][j], m1, s1 * 60, 100 * s1 * 60 / m1 if m1 else 0.0,
            s2 * 60, 100 * s2 * 60 / m2 if m2 else 0.0))
    print("(minutes %d-%d after the warm-up, %d-%d the last third)" % (warm[0][0], warm[-1][0], last[0][0], last[-1][0]))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
