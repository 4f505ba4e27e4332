# Thousands of concurrent streams on one engine (one core), clients that vanish mid-stream,
# and a drain on SIGTERM that lets open streams finish.
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --itl-ms 20 --max-seqs 4096 --prefill-us-per-token 0 --overhead-ms 0 --drain-timeout-ms 8000
port=$(ib_port e1)
base="http://127.0.0.1:$port"
conc=2000
[ "${IB_SANITIZED:-OFF}" = ON ] && conc=1000

# 1. Closed loop with $conc streams in flight: every request succeeds.
"$IB_LOAD_BIN" --target 127.0.0.1:$port --shared-prefix 10,$((conc / 5)) --system-tokens 64 --question-tokens 16 \
  --output-tokens 20 --concurrency $conc --json "$IB_TMP/c.json" --quiet >"$IB_TMP/c.txt" 2>&1 ||
  ib_fail "ib-load: $(cat "$IB_TMP/c.txt")"
ib_expect_eq "concurrent ok" "$(ib_json "$IB_TMP/c.json" 'd["ok"]')" $((conc * 2))
peak=$(ib_metric_sum "$base/metrics" '^vllm:request_success_total.*finished_reason="(stop|length)"')
ib_expect_eq "finished" "$peak" $((conc * 2))

# 2. Clients that disconnect mid-stream: the engine cancels their sequences and frees slots.
clients=()
for i in $(seq 1 50); do
  curl -s -N --max-time 0.3 -H 'Content-Type: application/json' "$base/v1/chat/completions" \
    -d '{"model":"mock","stream":true,"messages":[{"role":"user","content":"bye"}],"max_tokens":1000}' >/dev/null &
  clients+=($!)
done
for pid in "${clients[@]}"; do wait "$pid" 2>/dev/null || true; done
for i in $(seq 1 50); do
  running=$(curl -s "$base/metrics" | awk '/^vllm:num_requests_running/ {print $2}')
  [ "$running" = 0 ] && break
  sleep 0.1
done
ib_expect_eq "slots after disconnects" "$running" 0
cancelled=$(curl -s "$base/metrics" | awk '/^vllm:request_success_total.*finished_reason="abort"/ {print $2}')
ib_expect_eq "cancelled" "$cancelled" 50
fds=$(ls /proc/${IB_PID[e1]}/fd | wc -l)
[ "$fds" -lt 64 ] || ib_fail "engine holds $fds fds after the clients left"

# 3. SIGTERM while a stream is open: the stream completes, then the engine exits 0.
curl -s -N -H 'Content-Type: application/json' "$base/v1/chat/completions" \
  -d '{"model":"mock","stream":true,"messages":[{"role":"user","content":"finish me"}],"max_tokens":50}' \
  >"$IB_TMP/drain.sse" &
client=$!
sleep 0.3
ib_stop e1 TERM || ib_fail "engine exited with $? on SIGTERM"
wait $client || true
tail -c 20 "$IB_TMP/drain.sse" | grep -q 'data: \[DONE\]' || ib_fail "stream cut by the drain: $(tail -c 300 "$IB_TMP/drain.sse")"
grep -c '"content"' "$IB_TMP/drain.sse" | grep -qx 50 || ib_fail "drained stream lacks tokens"
echo "engine_streams: ok"
