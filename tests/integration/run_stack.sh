# The README's run command's script: starts the whole embedded stack (redis-server, cluster
# server, orchestrator, ibrain) and deploys the demo workload, serves requests, and
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
front=$(cat "$state/ibrain.port")
# Every process of the stack is in the script's session (managers lead their own process
# groups, not sessions).
sid=${IB_PID[stack]}
session() { ps -s "$sid" -o pid=,args= 2>/dev/null || true; }
for name in redis-server ib-clusterd ib-orchestrator dataplane/ibrain; do
  grep -q "$name" <<<"$(session)" || ib_fail "$name not running: $(session)"
done
ib_expect_eq "managers running" "$(session | grep -cE '^ *[0-9]+ [^ ]*ib-manager ')" 2
ib_expect_eq "engines running" "$(session | grep -cE '^ *[0-9]+ [^ ]*ib-mock-engine ')" 2
export IBCTL_SERVER="http://127.0.0.1:$(cat "$state/orchestrator.port")" IBCTL_TOKEN_FILE="$state/token"
addrs=$("$IB_BUILD/controlplane/ibctl" -o json workload get demo |
  /usr/bin/python3 -c 'import json,sys; print(" ".join(r["address"] for r in json.load(sys.stdin)["status"]["replicas"]))')
ib_expect_eq "ready replicas" "$(echo "$addrs" | wc -w)" 2
for a in $addrs "127.0.0.1:$front"; do
  code=$(curl -s -o "$IB_TMP/r.json" -w '%{http_code}' "http://$a/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{"model":"demo","messages":[{"role":"user","content":"Hello!"}],"max_tokens":4}')
  ib_expect_eq "request to $a" "$code" 200
done
grep -q "curl -s http://127.0.0.1:$front/v1/chat/completions" "$IB_TMP/stack.log" || ib_fail "no ready-to-paste request printed"
# The demo's engines publish their KV-cache events; ibrain routes both replicas on them.
wait_until 20 "both demo replicas routed on their KV events" \
  'test "$(ib_metric_sum "http://127.0.0.1:$front/metrics" "^ibrain_kv_routing_mode[{].*mode=\"precise\".* 1$")" = 2'
# The stack routes on tokens: ibrain counted the prompt tokens the replica reported.
ib_expect_eq "tokens counted by ibrain" "$(ib_metric "http://127.0.0.1:$front/metrics" ibrain_prompt_tokens_total)" \
  "$(ib_json "$IB_TMP/r.json" 'd["usage"]["prompt_tokens"]')"
# Ctrl-C: the script stops everything it started (the cluster server its managers and
# engines) and exits 0.
ib_stop stack INT || ib_fail "run-stack exited with $?"
for ((i = 0; i < 50; i++)); do [ -z "$(session)" ] && break; sleep 0.1; done
[ -z "$(session)" ] || ib_fail "still running after Ctrl-C: $(session)"
grep -q 'run-stack: stopped' "$IB_TMP/stack.log" || ib_fail "no clean stop: $(cat "$IB_TMP/stack.log")"
! grep -q 'unexpectedly' "$IB_TMP/stack.log" || ib_fail "Ctrl-C reported as an unexpected exit: $(cat "$IB_TMP/stack.log")"

# A process that dies is reported by name, and the script stops the rest and exits 1.
IB_PORT=0 IB_PORT_BASE=0 IB_REPLICAS=1 IB_STATE_DIR="$IB_TMP/stack2" ib_spawn stack2 \
  bash "$IB_SRC/tools/run-stack.sh" "$(basename "$IB_BUILD")"
for ((i = 0; i < 100; i++)); do
  grep -q '^run-stack: ready' "$IB_TMP/stack2.log" && break
  sleep 0.1
done
grep -q '^run-stack: ready' "$IB_TMP/stack2.log" || ib_fail "second stack not ready: $(cat "$IB_TMP/stack2.log")"
sid=${IB_PID[stack2]}
victim=$(session | awk '/dataplane\/ibrain / {print $1}')
[ -n "$victim" ] || ib_fail "no ibrain in the second stack: $(session)"
kill -KILL "$victim"
for ((i = 0; i < 100; i++)); do kill -0 "$sid" 2>/dev/null || break; sleep 0.1; done
rc=0
ib_stop stack2 || rc=$?
ib_expect_eq "exit code after an unexpected exit" "$rc" 1
grep -q "^run-stack: ibrain (pid $victim) exited unexpectedly on signal KILL" "$IB_TMP/stack2.log" ||
  ib_fail "unexpected exit not reported: $(cat "$IB_TMP/stack2.log")"
for ((i = 0; i < 50; i++)); do [ -z "$(session)" ] && break; sleep 0.1; done
[ -z "$(session)" ] || ib_fail "still running after ibrain died: $(session)"
echo "run_stack: ok"
