# ibrain in front of two mock engines: proxying (plain, streaming, keep-alive, pipelining,
# chunked bodies, 100-continue), local routes, and bad input that gets its status while
# the proxy keeps serving everyone else.
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --itl-ms 2
ib_engine e2 --itl-ms 2
ib_ibrain ib --workers 2 --model mock --replica e1=127.0.0.1:$(ib_port e1) --replica e2=127.0.0.1:$(ib_port e2) \
  --header-timeout-ms 1000 --max-body-bytes 65536 --max-head-bytes 8192
port=$(ib_port ib)
base="http://127.0.0.1:$port"
raw() { /usr/bin/python3 "$IB_SRC/tests/interop/raw_http.py" "$port" "$1" >>"$IB_TMP/raw.log" 2>&1 || ib_fail "raw case $1: $(tail -3 "$IB_TMP/raw.log")"; }

# Proxying, non-streaming and streaming, with the routing headers.
curl -s -D "$IB_TMP/h" -o "$IB_TMP/r.json" "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -H 'X-Request-Id: test-123' -d '{"model":"mock","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
ib_expect_eq "completion tokens" "$(ib_json "$IB_TMP/r.json" 'd["usage"]["completion_tokens"]')" 3
grep -qi '^x-request-id: test-123' "$IB_TMP/h" || ib_fail "X-Request-Id not echoed: $(cat "$IB_TMP/h")"
grep -qi '^x-ib-replica: e[12]' "$IB_TMP/h" || ib_fail "no X-IB-Replica"
curl -s -N "$base/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":5}' >"$IB_TMP/sse"
ib_expect_eq "SSE events" "$(grep -c '^data: {' "$IB_TMP/sse")" 5
tail -n 2 "$IB_TMP/sse" | grep -q '^data: \[DONE\]' || ib_fail "stream not ended by [DONE]"

# Streaming passes through as it is produced: the first event arrives long before the last.
/usr/bin/python3 - "$port" <<'PY' || ib_fail "stream was buffered"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
body = b'{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":40}'
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
t0 = time.time(); buf = b""; first = None
while b"[DONE]" not in buf:
    d = s.recv(65536)
    if not d: break
    if first is None and b"data:" in d: first = time.time() - t0
    buf += d
total = time.time() - t0
print("first event %.3f s, whole stream %.3f s" % (first, total))
sys.exit(0 if first < total / 4 else 1)
PY

# Raw-protocol cases.
for c in pipelining chunked-body expect-continue keepalive; do raw "$c"; done

# Local routes.
ib_expect_eq "/v1/models" "$(curl -s "$base/v1/models" | /usr/bin/python3 -c 'import json,sys; print([m["id"] for m in json.load(sys.stdin)["data"]])')" "['mock']"
ib_expect_eq "/ready" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$base/ready")" 200
ib_expect_eq "POST /health" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' -X POST "$base/health")" 405
ib_expect_eq "unknown route" "$(curl -s --max-time 5 -o /dev/null -w '%{http_code}' "$base/nope")" 404
# An error from the engine passes through untouched.
ib_expect_eq "engine 404" "$(curl -s -o "$IB_TMP/e.json" -w '%{http_code}' "$base/v1/chat/completions" \
  -d '{"model":"other","messages":[{"role":"user","content":"x"}]}')" 404
ib_expect_eq "engine error code" "$(ib_json "$IB_TMP/e.json" 'd["error"]["code"]')" model_not_found

# Bad input: each gets its status and a JSON error.
raw 'bad:400:GARBAGE GARBAGE\r\n\r\n'
raw 'bad:400:\x00\x01\x02\x03\r\n\r\n'
raw 'bad:400:POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n'
raw 'bad:501:POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n'
raw 'bad:413:POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 70000\r\n\r\n'
raw "bad:431:GET /health HTTP/1.1\\r\\nX-Big: $(head -c 9000 /dev/zero | tr '\0' 'a')\\r\\n\\r\\n"
raw 'bad:400:POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n'
raw truncated-body
raw slowloris

# Meanwhile and after all that: still serving, with nothing stuck in flight.
"$IB_LOAD_BIN" --target 127.0.0.1:$port --shared-prefix 4,50 --system-tokens 64 --question-tokens 8 --output-tokens 4 \
  --concurrency 20 --json "$IB_TMP/l.json" --quiet >/dev/null || ib_fail "load after bad input failed"
ib_expect_eq "load ok" "$(ib_json "$IB_TMP/l.json" 'd["ok"]')" 200
ib_expect_eq "both replicas used" "$(ib_json "$IB_TMP/l.json" 'sorted(d["engines"])')" "['e1', 'e2']"
for r in e1 e2; do
  ib_expect_eq "in flight $r" "$(ib_metric "$base/metrics" "ibrain_replica_in_flight{replica=\"$r\"}")" 0
done
ib_expect_eq "408 counted" "$(ib_metric "$base/metrics" 'ibrain_requests_total{route="none",status="408"}')" 1

# Busy polling (on by default, 50 us) is for a closed loop: a client asking one request
# after another on one connection. One that does so, within a 1 ms window here (this
# Python client's turnaround, on a loaded machine too), is polled for; an idle ibrain
# sleeps: it takes almost no CPU over 2 s with nothing to do (a worker that kept polling
# would take 2 s of CPU per worker).
ib_ibrain poll --workers 1 --model mock --replica e1=127.0.0.1:$(ib_port e1) --busy-poll-us 1000
/usr/bin/python3 - "$(ib_port poll)" <<'PY' || ib_fail "a closed loop on one connection"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for _ in range(200):
    c.request("GET", "/v1/models")
    r = c.getresponse()
    assert r.status == 200, r.status
    r.read()
PY
polled=$(ib_metric "http://127.0.0.1:$(ib_port poll)/metrics" ibrain_busy_poll_seconds_total)
/usr/bin/python3 -c "import sys; sys.exit(0 if float('$polled') > 0 else 1)" || ib_fail "no busy polling counted: '$polled'"
ib_stop poll || ib_fail "ibrain --busy-poll-us 1000 exited with $?"
t0=$(ib_cpu_ticks "${IB_PID[ib]}")
sleep 2
t1=$(ib_cpu_ticks "${IB_PID[ib]}")
[ $((t1 - t0)) -lt $(($(getconf CLK_TCK) / 5)) ] || ib_fail "idle ibrain used $((t1 - t0)) ticks of CPU in 2 s"
# --busy-poll-us 0: workers sleep at once, and serve the same.
ib_ibrain nopoll --workers 1 --model mock --replica e1=127.0.0.1:$(ib_port e1) --busy-poll-us 0
nbase="http://127.0.0.1:$(ib_port nopoll)"
for _ in 1 2 3; do
  ib_expect_eq "no-poll request" "$(curl -s -o /dev/null -w '%{http_code}' "$nbase/v1/chat/completions" \
    -d '{"model":"mock","messages":[{"role":"user","content":"hi"}],"max_tokens":2}')" 200
done
ib_expect_eq "no polling" "$(ib_metric "$nbase/metrics" ibrain_busy_poll_seconds_total)" 0.000000
ib_stop nopoll || ib_fail "ibrain --busy-poll-us 0 exited with $?"

ib_stop ib || ib_fail "ibrain exited with $?"
echo "proxy_http: ok"
