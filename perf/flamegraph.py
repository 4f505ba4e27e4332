#!/usr/bin/env python3
"""Turns `perf script` output into a flame graph (a self-contained SVG, or an HTML page
wrapping it), and prints the top frames. Debian packages no FlameGraph scripts, so this is
a small stand-in: stacks are folded (root;...;leaf -> samples) and drawn as nested
rectangles whose width is the share of samples; hovering shows the frame and its share.

usage: flamegraph.py PERF_SCRIPT_TXT OUT.svg|OUT.html [--title TITLE] [--top N]
"""
import argparse
import collections
import html
import re
import sys


def fold(lines):
    """Yields one stack per sample of `perf script` output, root first: the thread name,
    then the frames from the outermost call to the leaf."""
    comm, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if comm is not None:
                yield (comm,) + tuple(reversed(frames))  # perf prints the leaf first
            comm, frames = None, []
            continue
        if not line.startswith((" ", "\t")):
            comm, frames = line.split()[0], []  # sample header: comm pid [cpu] time: event
            continue
        if comm is not None:
            m = re.match(r"\s*[0-9a-f]+\s+(.+?)\s+\((.*)\)$", line)
            sym = m.group(1) if m else line.strip()
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            if sym == "[unknown]" and m:
                sym = "[" + m.group(2).split("/")[-1] + "]"
            frames.append(sym)
    if comm is not None:
        yield (comm,) + tuple(reversed(frames))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--title", default="ibrain flame graph")
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    counts = collections.Counter()
    with open(a.input, errors="replace") as f:
        for st in fold(f):
            counts[st] += 1
    total = sum(counts.values())
    if total == 0:
        sys.exit("no samples in " + a.input)

    # Tree of frames.
    root = {"n": 0, "c": {}}
    self_counts = collections.Counter()
    for st, n in counts.items():
        node = root
        node["n"] += n
        for fr in st:
            node = node["c"].setdefault(fr, {"n": 0, "c": {}})
            node["n"] += n
        self_counts[st[-1]] += n

    width, row = 1200.0, 16
    rects = []

    def walk(node, name, x, depth):
        w = width * node["n"] / total
        if w >= 0.3:
            rects.append((x, depth, w, name, node["n"]))
        cx = x
        for child, cn in sorted(node["c"].items()):
            walk(cn, child, cx, depth + 1)
            cx += width * cn["n"] / total

    walk(root, "all", 0.0, 0)
    depth_max = max(d for _, d, _, _, _ in rects)
    height = (depth_max + 3) * row
    out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="monospace" font-size="11">'
           % (width, height),
           '<text x="4" y="14">%s (%d samples)</text>' % (html.escape(a.title), total)]
    for x, d, w, name, n in rects:
        y = height - (d + 1) * row
        hue = (hash(name) % 40) + 10
        label = name if len(name) * 7 < w else (name[: int(w / 7) - 2] + ".." if w > 30 else "")
        out.append('<g><title>%s: %d samples (%.2f%%)</title><rect x="%.1f" y="%d" width="%.1f" height="%d" '
                   'fill="hsl(%d,85%%,60%%)" stroke="white" stroke-width="0.5"/><text x="%.1f" y="%d">%s</text></g>'
                   % (html.escape(name), n, 100.0 * n / total, x, y, w, row - 1, hue, x + 2, y + row - 4,
                      html.escape(label)))
    out.append("</svg>")
    svg = "\n".join(out)
    with open(a.output, "w") as f:
        if a.output.endswith(".html"):
            f.write("<!doctype html><meta charset=utf-8><title>%s</title><body>%s</body>" % (html.escape(a.title), svg))
        else:
            f.write(svg)
    incl = collections.Counter()
    for st, n in counts.items():
        for fr in set(st[1:]):
            incl[fr] += n
    print("%d samples; top frames by self time:" % total)
    for name, n in self_counts.most_common(a.top):
        print("  %6.2f%%  %s" % (100.0 * n / total, name))
    print("top frames by inclusive time:")
    for name, n in incl.most_common(a.top):
        print("  %6.2f%%  %s" % (100.0 * n / total, name))
    cats = collections.Counter()
    for st, n in counts.items():
        cats[category(st[1:])] += n
    print("where the samples go (each sample in the first category its stack matches):")
    for name, _ in CATEGORIES:
        print("  %6.2f%%  %s" % (100.0 * cats[name] / total, name))


def _has(*names):
    return lambda frames: any(f in names for f in frames)


ROUTING = ("ib_oai_parse", "ib_prompt_build", "ib_chat_render", "ib_router_pick", "ib_router_commit",
           "ib_affinity_match", "ib_affinity_insert", "ib_tokenize", "ib_hashchain")
# Kernel and user-space work by what it is for, checked in this order (a send inside a
# busy-poll loop's io_uring_get_events counts as a send).
CATEGORIES = [
    ("sends (TCP transmit, and the loopback delivery to the peer it runs)", _has("io_send", "tcp_sendmsg")),
    ("receives (TCP copy-out, and the ACKs it sends)", _has("io_recv", "tcp_recvmsg")),
    ("accepts, connects, closes", _has("io_accept", "io_connect", "__x64_sys_close", "io_shutdown", "tcp_close")),
    ("busy polling (sched_yield between polls)", _has("do_sched_yield", "__x64_sys_sched_yield", "sched_yield")),
    ("sleeping and waking (io_uring waits, the scheduler)", _has("io_cqring_wait", "schedule", "__schedule")),
    ("io_uring itself (submission, completions, timers)", _has("__do_sys_io_uring_enter", "io_submit_sqes")),
    ("routing: parse, render, tokenize, hash, pick", _has(*ROUTING)),
    ("other kernel (interrupts, page faults, timers)", lambda fr: any(f.startswith(("asm_", "irq", "__sysvec")) for f in fr)),
    ("ibrain's own user space (HTTP, relay, loop, clocks)", lambda fr: True),
]


def category(frames):
    for name, match in CATEGORIES:
        if match(frames):
            return name
    return CATEGORIES[-1][0]


if __name__ == "__main__":
    main()
