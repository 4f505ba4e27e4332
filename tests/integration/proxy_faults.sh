# ibrain under faults: a replica that is down (retry elsewhere, then ejection), a replica
# killed mid-stream (the client's stream ends with an error event), clients that leave
# mid-stream (in-flight returns to 0), no fd leak after 10,000 requests, and a drain on
# SIGTERM that lets open streams finish.
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --itl-ms 1 --prefill-us-per-token 0 --overhead-ms 0
ib_engine e2 --itl-ms 1 --prefill-us-per-token 0 --overhead-ms 0
ib_engine slow --itl-ms 50
# A port nobody listens on: bind one, then close it.
dead=$(ib_free_port)
# Round-robin, so that the dead replica surely gets requests (ties between equal replicas
# are broken at random: an affinity router may send none there); passive health only
# (the prober has its own test in proxy_edges.sh).
ib_ibrain ib --workers 2 --model mock --policy round-robin --probe-ms 0 --eject-after 2 --eject-ms 60000 \
  --drain-timeout-ms 8000 \
  --replica e1=127.0.0.1:$(ib_port e1) --replica e2=127.0.0.1:$(ib_port e2) --replica dead=127.0.0.1:$dead
port=$(ib_port ib)
base="http://127.0.0.1:$port"

# 1. Replica down: every request still succeeds (retried elsewhere), and the dead replica
#    is ejected after 2 failures.
"$IB_LOAD_BIN" --target 127.0.0.1:$port --shared-prefix 2,50 --system-tokens 32 --question-tokens 8 --output-tokens 2 \
  --concurrency 4 --json "$IB_TMP/d.json" --quiet >/dev/null || ib_fail "requests failed with a replica down"
ib_expect_eq "ok with a replica down" "$(ib_json "$IB_TMP/d.json" 'd["ok"]')" 100
ib_expect_eq "dead ejected" "$(ib_metric "$base/metrics" 'ibrain_replica_healthy{replica="dead"}')" 0
retries=$(ib_metric "$base/metrics" ibrain_retries_total)
[ "$retries" -ge 2 ] || ib_fail "expected retries, got $retries"
ib_expect_eq "connect errors" "$(ib_metric "$base/metrics" 'ibrain_upstream_errors_total{replica="dead",kind="connect"}')" "$retries"

# 1b. Two replicas of four down and never ejected (--eject-after 1000): a request is sent to
#     up to three replicas, never twice to the same, so every one still succeeds (with one
#     retry, one that went from one dead replica to the other failed with a 502).
dead2=$(ib_free_port)
ib_ibrain ib4 --workers 1 --model mock --policy round-robin --probe-ms 0 --eject-after 1000 \
  --replica e1=127.0.0.1:$(ib_port e1) --replica dead=127.0.0.1:$dead --replica dead2=127.0.0.1:$dead2 \
  --replica e2=127.0.0.1:$(ib_port e2)
"$IB_LOAD_BIN" --target 127.0.0.1:$(ib_port ib4) --shared-prefix 2,50 --system-tokens 32 --question-tokens 8 \
  --output-tokens 2 --concurrency 4 --json "$IB_TMP/d2.json" --quiet >/dev/null || ib_fail "requests failed with two replicas down"
ib_expect_eq "ok with two of four replicas down" "$(ib_json "$IB_TMP/d2.json" 'd["ok"]')" 100
echo "two of four replicas down: 100 of 100 ok, $(ib_metric "http://127.0.0.1:$(ib_port ib4)/metrics" ibrain_retries_total) retries"
ib_stop ib4 || ib_fail "ib4 exited with $?"

# 2. Replica killed mid-stream: a second ibrain in front of the slow engine only.
ib_ibrain ib2 --workers 1 --model mock --replica slow=127.0.0.1:$(ib_port slow)
curl -s -N --max-time 20 "http://127.0.0.1:$(ib_port ib2)/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":500}' >"$IB_TMP/cut.sse" &
client=$!
sleep 0.5
ib_stop slow KILL || true
wait $client || ib_fail "curl did not end cleanly after the replica died (exit $?)"
grep -q '^data: {"error":{"message":"the model replica failed mid-stream"' "$IB_TMP/cut.sse" ||
  ib_fail "no error event at the end of the cut stream: $(tail -c 300 "$IB_TMP/cut.sse")"
[ "$(grep -c '"content"' "$IB_TMP/cut.sse")" -ge 3 ] || ib_fail "tokens before the cut were not relayed"
ib_expect_eq "midstream counted" \
  "$(ib_metric "http://127.0.0.1:$(ib_port ib2)/metrics" 'ibrain_upstream_errors_total{replica="slow",kind="midstream"}')" 1

# 3. Clients leaving mid-stream: in-flight back to 0, aborts counted.
for i in $(seq 1 20); do
  /usr/bin/python3 "$IB_SRC/tests/interop/raw_http.py" "$port" stream-abort >/dev/null || ib_fail "stream-abort client"
done
for i in $(seq 1 50); do
  a=$(ib_metric "$base/metrics" 'ibrain_replica_in_flight{replica="e1"}')
  b=$(ib_metric "$base/metrics" 'ibrain_replica_in_flight{replica="e2"}')
  [ "$a" = 0 ] && [ "$b" = 0 ] && break
  sleep 0.1
done
ib_expect_eq "in flight after aborts" "$a/$b" "0/0"
ib_expect_eq "aborts" "$(ib_metric "$base/metrics" ibrain_client_aborts_total)" 20
# The engines saw the disconnects too (ibrain closed the upstream side).
for i in $(seq 1 50); do
  r1=$(ib_metric "http://127.0.0.1:$(ib_port e1)/metrics" 'vllm:num_requests_running{engine="0",model_name="mock"}')
  r2=$(ib_metric "http://127.0.0.1:$(ib_port e2)/metrics" 'vllm:num_requests_running{engine="0",model_name="mock"}')
  [ "$r1" = 0 ] && [ "$r2" = 0 ] && break
  sleep 0.1
done
ib_expect_eq "engine sequences after aborts" "$r1/$r2" "0/0"

# 4. No fd leak after 10,000 requests.
fds_before=$(ls /proc/${IB_PID[ib]}/fd | wc -l)
n=10000
[ "${IB_SANITIZED:-OFF}" = ON ] && n=3000
"$IB_LOAD_BIN" --target 127.0.0.1:$port --shared-prefix 10,$((n / 10)) --system-tokens 16 --question-tokens 4 \
  --output-tokens 1 --concurrency 64 --json "$IB_TMP/many.json" --quiet >/dev/null || ib_fail "load run failed"
ib_expect_eq "requests ok" "$(ib_json "$IB_TMP/many.json" 'd["ok"]')" $n
sleep 0.3
fds_after=$(ls /proc/${IB_PID[ib]}/fd | wc -l)
# Allow for the pooled upstream connections (at most 64 per replica per worker).
[ "$fds_after" -le $((fds_before + 2 * 2 * 64)) ] || ib_fail "fds grew from $fds_before to $fds_after"
ib_expect_eq "open client connections" "$(ib_metric "$base/metrics" ibrain_connections_open)" 1 # the scrape itself

# 5. SIGTERM with a stream open: it completes, new connections are refused, exit 0.
#    Lame duck: a kept-alive connection that sends a request within --drain-idle-ms (1 s)
#    is served with Connection: close; one left idle is closed after it. The client below
#    sends the SIGTERM itself, between its requests.
curl -s -N "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"mock","stream":true,"messages":[{"role":"user","content":"finish me"}],"max_tokens":300}' \
  >"$IB_TMP/drain.sse" &
client=$!
for ((i = 0; i < 100; i++)); do [ -s "$IB_TMP/drain.sse" ] && break; sleep 0.05; done # the stream is on
[ -s "$IB_TMP/drain.sse" ] || ib_fail "the stream to drain did not start"
/usr/bin/python3 - "$(ib_port ib)" "${IB_PID[ib]}" >"$IB_TMP/lameduck.txt" 2>&1 <<'PY' || ib_fail "lame duck: $(cat "$IB_TMP/lameduck.txt")"
import os, signal, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
body = b'{"model":"mock","max_tokens":2,"messages":[{"role":"user","content":"lame duck"}]}'
req = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
def exchange(s):
    s.sendall(req)
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(65536)
        if not d:
            raise SystemExit("closed before an answer")
        data += d
    return data.split(b"\r\n\r\n", 1)[0].decode()
busy, idle = socket.create_connection(("127.0.0.1", port)), socket.create_connection(("127.0.0.1", port))
for s in (busy, idle):
    assert exchange(s).startswith("HTTP/1.1 200"), "before SIGTERM"
os.kill(pid, signal.SIGTERM)
time.sleep(0.3)
head = exchange(busy)
assert head.startswith("HTTP/1.1 200") and "connection: close" in head.lower(), head
t0 = time.time()
idle.settimeout(5)
try:
    while idle.recv(65536):
        pass
except socket.timeout:
    raise SystemExit("the idle connection was not closed")
print("lame duck: a request 0.3 s into the drain on a kept-alive connection got 200 with Connection: close; "
      "the idle one was closed %.1f s later" % (time.time() - t0))
PY
cat "$IB_TMP/lameduck.txt"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$base/health" || true)
[ "$code" = 000 ] || ib_fail "new connection accepted while draining ($code)"
wait $client || true
tail -n 2 "$IB_TMP/drain.sse" | grep -q 'data: \[DONE\]' || ib_fail "stream cut by the drain: $(tail -c 200 "$IB_TMP/drain.sse")"
ib_stop ib || ib_fail "ibrain exited with $? after the drain"
echo "proxy_faults: ok"
