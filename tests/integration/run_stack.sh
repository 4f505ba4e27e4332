# The README's run command's script: starts the embedded stack, serves a request, and
# stops every process on Ctrl-C (SIGINT).
source "$IB_SRC/tests/lib/proc.sh"

state="$IB_TMP/stack"
# A shell without job control starts background commands with SIGINT ignored, which a
# trap cannot undo; restore the default disposition, as a terminal's Ctrl-C would find it.
IB_PORT=0 IB_PORT_BASE=0 IB_REPLICAS=2 IB_STATE_DIR="$state" ib_spawn stack /usr/bin/python3 -c \
  'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])' \
  bash "$IB_SRC/tools/run-stack.sh" "$(basename "$IB_BUILD")"
for ((i = 0; i < 100; i++)); do
  grep -q '^run-stack: ready' "$IB_TMP/stack.log" && break
  sleep 0.1
done
grep -q '^run-stack: ready' "$IB_TMP/stack.log" || ib_fail "stack not ready"
p0=$(cat "$state/engine-0.port")
p1=$(cat "$state/engine-1.port")
front=$(cat "$state/ibrain.port")
engine_pids=$(pgrep -f "port-file $state/" || true)
ib_expect_eq "processes running" "$(echo "$engine_pids" | wc -w)" 3
redis_pid=$(sed -n 's/.*Redis version=.*pid=\([0-9]*\).*/\1/p' "$state/redis.log" | head -n 1)
[ -n "$redis_pid" ] && kill -0 "$redis_pid" 2>/dev/null || ib_fail "the stack's redis-server is not running"
engine_pids="$engine_pids $redis_pid"
for p in $p0 $p1 $front; do
  code=$(curl -s -o "$IB_TMP/r.json" -w '%{http_code}' "http://127.0.0.1:$p/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{"model":"demo","messages":[{"role":"user","content":"Hello!"}],"max_tokens":4}')
  ib_expect_eq "request to $p" "$code" 200
done
# The stack routes on tokens: ibrain counted the prompt tokens the replica reported.
ib_expect_eq "tokens counted by ibrain" "$(ib_metric "http://127.0.0.1:$front/metrics" ibrain_prompt_tokens_total)" \
  "$(ib_json "$IB_TMP/r.json" 'd["usage"]["prompt_tokens"]')"
# Ctrl-C: the script stops the engines it started and exits 0.
ib_stop stack INT || ib_fail "run-stack exited with $?"
for pid in $engine_pids; do
  kill -0 "$pid" 2>/dev/null && ib_fail "engine $pid still running after Ctrl-C"
done
grep -q 'run-stack: stopped' "$IB_TMP/stack.log" || ib_fail "no clean stop: $(cat "$IB_TMP/stack.log")"
echo "run_stack: ok"
