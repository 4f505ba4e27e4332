# The workload manager (ib-manager) with a real mock engine: compile (weights checked and
# fingerprinted), execute, ready; the engine killed -> restarted and ready again; SIGTERM
# -> the engine drains and stops, the manager exits 0; a missing weights path -> failed
# with the reason, nothing started; bad requests to the status server get errors.
source "$IB_SRC/tests/lib/proc.sh"
mgr="$IB_BUILD/controlplane/ib-manager"
engine="$IB_BUILD/tools/ib-mock-engine"

mkdir -p "$IB_TMP/weights/shards"
head -c 300000 /dev/urandom >"$IB_TMP/weights/shards/model-00001.bin"
echo '{"architectures": ["MockForCausalLM"]}' >"$IB_TMP/weights/config.json"
status() { curl -s "http://127.0.0.1:$(ib_port "$1")/status" >"$IB_TMP/$1.status.json" && cat "$IB_TMP/$1.status.json"; }
field() { ib_json "$IB_TMP/$1.status.json" "d$2"; }
wait_phase() { # NAME PHASE
  for ((i = 0; i < 150; i++)); do
    status "$1" >/dev/null
    [ "$(field "$1" '["phase"]')" = "$2" ] && return 0
    sleep 0.1
  done
  ib_fail "$1 not $2: $(cat "$IB_TMP/$1.status.json")"
}

# 1. compile -> execute -> ready, and a request to the engine it started
ib_spawn m1 "$mgr" --listen 127.0.0.1:0 --port-file @PORTFILE --workload w --replica w-r0 --model demo \
  --weights "$IB_TMP/weights" --state-dir "$IB_TMP" --drain-timeout-ms 5000 \
  --engine-cmd "$engine --listen 127.0.0.1:{port} --model {model} --id {replica} --itl-ms 10"
ib_wait_port m1 >/dev/null
wait_phase m1 ready
ib_expect_eq "weights bytes" "$(field m1 '["weights"]["bytes"]')" \
  "$(($(stat -c %s "$IB_TMP/weights/shards/model-00001.bin") + $(stat -c %s "$IB_TMP/weights/config.json")))"
ib_expect_eq "weights files" "$(field m1 '["weights"]["files"]')" 2
sum1=$(field m1 '["weights"]["xxh3_128"]')
[ ${#sum1} = 32 ] || ib_fail "checksum '$sum1'"
addr=$(field m1 '["engine_address"]')
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$addr/v1/chat/completions" \
  -d '{"model":"demo","messages":[{"role":"user","content":"hi"}],"max_tokens":2}')
ib_expect_eq "request to the managed engine" "$code" 200

# 2. the engine killed -> restarted with back-off, ready again
kill -KILL "$(field m1 '["engine_pid"]')"
wait_phase m1 restarting
grep -q "killed by signal 9" "$IB_TMP/m1.status.json" || ib_fail "reason: $(cat "$IB_TMP/m1.status.json")"
wait_phase m1 ready
ib_expect_eq "restarts" "$(field m1 '["restarts"]')" 1
curl -s "http://127.0.0.1:$(ib_port m1)/metrics" >"$IB_TMP/m.txt"
promtool check metrics <"$IB_TMP/m.txt" >/dev/null 2>&1 || ib_fail "promtool: $(promtool check metrics <"$IB_TMP/m.txt" 2>&1)"
grep -q '^ib_manager_engine_restarts_total 1$' "$IB_TMP/m.txt" || ib_fail "restarts metric"

# 3. status server: wrong method and path
ib_expect_eq "POST /status" "$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$(ib_port m1)/status")" 405
ib_expect_eq "GET /nope" "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(ib_port m1)/nope")" 404
printf 'garbage\r\n\r\n' | timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$(ib_port m1); cat >&3; cat <&3" >"$IB_TMP/garbage.txt" || true
grep -q "400" "$IB_TMP/garbage.txt" || ib_fail "garbage got: $(cat "$IB_TMP/garbage.txt")"
# A client that trickles its head (a byte every 0.3 s, for 8 s) holds the one-thread status
# server for at most 2 s: /status, which the local driver reads, answers meanwhile.
mport=$(ib_port m1)
(exec 3<>"/dev/tcp/127.0.0.1/$mport"; for ((i = 0; i < 26; i++)); do printf 'G' >&3 2>/dev/null || break; sleep 0.3; done) &
trickler=$!
sleep 0.2
t0=$(date +%s%N)
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 6 "http://127.0.0.1:$mport/status" || true)
ms=$((($(date +%s%N) - t0) / 1000000))
kill "$trickler" 2>/dev/null || true
wait "$trickler" 2>/dev/null || true
ib_expect_eq "/status beside a trickling client (${ms} ms)" "$code" 200
((ms < 4000)) || ib_fail "/status waited ${ms} ms behind a trickling client"
echo "status server: /status answered in ${ms} ms beside a client trickling its head"

# 4. drain: a stream in flight finishes, the engine stops, the manager exits 0
addr=$(status m1 >/dev/null; field m1 '["engine_address"]')
epid=$(field m1 '["engine_pid"]')
curl -sN "http://$addr/v1/chat/completions" \
  -d '{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":100}' >"$IB_TMP/stream.txt" &
streamer=$!
sleep 0.3
ib_stop m1 TERM || ib_fail "manager exited with $?"
wait "$streamer" || true
ib_expect_eq "stream finished during the drain" "$(grep -c '^data: {' "$IB_TMP/stream.txt")/$(grep -c '^data: \[DONE\]' "$IB_TMP/stream.txt")" "100/1"
kill -0 "$epid" 2>/dev/null && ib_fail "engine $epid still running after the drain"

# 5. compile failure: reported with its reason, no engine started
ib_spawn m2 "$mgr" --listen 127.0.0.1:0 --port-file @PORTFILE --replica w-r1 --weights "$IB_TMP/no-such-weights" \
  --engine-cmd "$engine --listen 127.0.0.1:{port}"
ib_wait_port m2 >/dev/null
wait_phase m2 failed
grep -q "No such file or directory" "$IB_TMP/m2.status.json" || ib_fail "reason: $(cat "$IB_TMP/m2.status.json")"
ib_expect_eq "no engine" "$(field m2 '["engine_pid"]')" 0
chmod 000 "$IB_TMP/weights/config.json"
if [ "$(id -u)" != 0 ]; then # root reads anything
  ib_spawn m3 "$mgr" --listen 127.0.0.1:0 --port-file @PORTFILE --replica w-r2 --weights "$IB_TMP/weights"
  ib_wait_port m3 >/dev/null
  wait_phase m3 failed
  grep -q "not readable" "$IB_TMP/m3.status.json" || ib_fail "reason: $(cat "$IB_TMP/m3.status.json")"
  ib_stop m3 || ib_fail "m3 exited with $?"
fi
chmod 644 "$IB_TMP/weights/config.json"
ib_stop m2 || ib_fail "m2 exited with $?"
echo "manager_lifecycle: ok"
