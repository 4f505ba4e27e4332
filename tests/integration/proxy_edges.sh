# ibrain at the edges of HTTP that clients and replicas reach by accident or on purpose:
#   - slow-loris: a request head trickled in one line a second is refused with 408 within
#     the header timeout counted from its first byte, on a connection's first request too;
#   - a complete request followed by a half-close (shutdown(SHUT_WR)) is answered, then
#     the connection closed;
#   - a replica that hangs (SIGSTOP) fails its health probes, is marked unresponsive, and
#     the requests it holds are retried elsewhere within seconds (not the 5-minute upstream
#     timeout); it is taken back once it answers again;
#   - at the connection cap, the longest-idle keep-alive connection makes room for a new
#     one; with every connection busy, new ones are refused and counted, and the admin
#     listener still answers /health and /metrics;
#   - a client that stops reading its stream is closed after --send-timeout-ms and its
#     exchange abandoned (counted), and ibrain goes on serving;
#   - out of file descriptors: accept errors back off instead of spinning, existing
#     connections keep being served, the condition is counted, and once clients leave
#     ibrain accepts again and stops cleanly on SIGTERM;
#   - over the buffer budget (--max-buffer-mb): clients that read nothing of their streams
#     pin ibrain's buffers; a new chat request gets 503 with Retry-After (counted), /health
#     answers, the pinned relays hold 64 KiB each instead of 1 MiB, and once the clients
#     leave the buffers are given back and chats are served again.
source "$IB_SRC/tests/lib/proc.sh"

ib_engine e1 --itl-ms 1 --prefill-us-per-token 0 --overhead-ms 0
ib_ibrain ib --workers 1 --model mock --header-timeout-ms 1500 --replica e1=127.0.0.1:$(ib_port e1)
port=$(ib_port ib)

# 1. Slow-loris on a new connection's first request, and on a keep-alive connection's
#    second: one header line every 400 ms never completes the head.
/usr/bin/python3 - "$port" <<'PY' || ib_fail "slow-loris"
import socket, sys, time
port = int(sys.argv[1])

def trickle(s, label):
    t0 = time.monotonic()
    s.settimeout(0.4)
    got = b""
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    for i in range(40):  # 16 s of trickling at most
        try:
            s.sendall(b"X-Slow-%d: 1\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
            if b"\r\n\r\n" in got:
                break
        except socket.timeout:
            pass
    took = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408"), (label, got[:80], took)
    # the header timeout (1.5 s) runs from the head's first byte; the tick is 100 ms
    assert took < 3.0, (label, "408 after %.1f s" % took)
    print("%s: 408 after %.2f s" % (label, took))

s = socket.create_connection(("127.0.0.1", port))
trickle(s, "first request")
s.close()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
first = s.recv(4096)
assert first.startswith(b"HTTP/1.1 200"), first
trickle(s, "second request")
s.close()
PY

# 2. A half-closed request is answered: local and proxied.
/usr/bin/python3 - "$port" <<'PY' || ib_fail "half-close"
import socket, sys
port = int(sys.argv[1])
def ask(req):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(req)
    s.shutdown(socket.SHUT_WR)
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    return got
r = ask(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
assert r.startswith(b"HTTP/1.1 200") and b'{"status":"ok"}' in r, r[:200]
body = b'{"model":"mock","messages":[{"role":"user","content":"hi"}],"max_tokens":3}'
r = ask(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body))
assert r.startswith(b"HTTP/1.1 200") and b"chat.completion" in r, r[:300]
# A stray CRLF after the request, then the half-close: still answered, no 400 counted.
r = ask(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n\r\n")
assert r.startswith(b"HTTP/1.1 200"), r[:200]
# An HTTP/1.0 stream, half-closed: its body ends with the connection, and once the last
# byte is sent nothing is in flight on it; it is freed all the same (it was not: it stayed
# open in ibrain's count, its descriptor with it).
body = b'{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":20}'
r = ask(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body))
assert r.startswith(b"HTTP/1.1 200") and r.rstrip().endswith(b"data: [DONE]"), r[-300:]
print("half-close: answered")
PY
# Every connection of this section is gone; the scrape's own is the one left open.
wait_until 5 "half-closed connections freed" \
  '[ "$(ib_metric "http://127.0.0.1:$port/metrics" ibrain_connections_open)" = 1 ]'
ib_expect_eq "no 400 for a stray CRLF" "$(ib_metric "http://127.0.0.1:$port/metrics" 'ibrain_requests_total{route="none",status="400"}')" ""

# A client that pipelines requests and never reads its answers: the answers stop piling
# up at the output's high-water mark, the input fills to its cap, and the client is
# closed; ibrain's memory stays bounded (each /metrics answer is kilobytes).
/usr/bin/python3 - "$port" "${IB_PID[ib]}" <<'PY' || ib_fail "pipelining without reading"
import socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
def rss_mb():
    for l in open("/proc/%d/status" % pid):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) / 1024
before = rss_mb()
s = socket.create_connection(("127.0.0.1", port))
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.settimeout(5)
req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
sent, closed = 0, False
t0 = time.monotonic()
while sent < 64 << 20 and time.monotonic() - t0 < 20:
    try:
        sent += s.send(req)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        closed = True
        break
after = rss_mb()
assert closed, "a client pipelining %d MB without reading was never closed" % (sent >> 20)
assert after - before < 64, "ibrain grew %.0f MB for one client (%.0f -> %.0f)" % (after - before, before, after)
print("pipelining without reading: closed after %.1f MB sent, ibrain grew %.1f MB" % (sent / 1048576, after - before))
PY
ib_expect_eq "in flight after the half-closes" "$(ib_metric "http://127.0.0.1:$port/metrics" 'ibrain_replica_in_flight{replica="e1"}')" 0
# 3. A hung replica: probes every 300 ms, unresponsive after 3 failures. Round-robin

# A client that stops reading: a long stream it never reads fills the socket buffers; with
# no byte accepted for --send-timeout-ms (1 s) it is closed, the exchange abandoned.
ib_engine fast --itl-ms 0 --prefill-us-per-token 0 --overhead-ms 0
ib_ibrain st --workers 1 --model mock --send-timeout-ms 1000 --replica fast=127.0.0.1:$(ib_port fast)
/usr/bin/python3 - "$(ib_port st)" <<'PY' || ib_fail "a client that never reads"
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", int(sys.argv[1])))
body = b'{"model":"mock","stream":true,"max_tokens":100000,"messages":[{"role":"user","content":"never read"}]}'
s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
time.sleep(4)  # not reading: ibrain's sends stall, and 1 s later it closes
s.settimeout(10)
n = 0
try:
    while True:
        d = s.recv(1 << 20)
        if not d:
            break
        n += len(d)
except (ConnectionResetError, socket.timeout) as e:
    if isinstance(e, socket.timeout):
        raise SystemExit("the connection is still open after %d bytes" % n)
print("a client that never read: closed by ibrain after %d bytes reached it" % n)
PY
ib_expect_eq "send timeouts counted" "$(ib_metric "http://127.0.0.1:$(ib_port st)/metrics" ibrain_client_send_timeouts_total)" 1
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$(ib_port st)/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"mock","max_tokens":2,"messages":[{"role":"user","content":"next"}]}')" = 200 ] || ib_fail "ibrain after a send timeout"
ib_stop st

# A client that reads slowly: a fast stream it reads in bursts, with pauses, gets ahead
# of it by more than the high-water mark (1 MiB) again and again. The upstream receive is
# cancelled each time (ibrain's buffers stay bounded through a pause of a second) and
# armed again when the client has caught up; the stream arrives whole, in order, and the
# kept-alive connections (the client's, the upstream's) serve the next request.
# Both ways of receiving from the replica: multishot (this kernel's auto) and single-shot
# (kernels before 6.8).
for mode in auto single; do
ib_ibrain slow --workers 1 --model mock --upstream-recv $mode --replica fast=127.0.0.1:$(ib_port fast)
/usr/bin/python3 - "$(ib_port slow)" "$mode" <<'PY' || ib_fail "a client that reads slowly ($mode)"
import json, socket, sys, time
port = int(sys.argv[1])
def metric(name):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = b""
    while (b := c.recv(65536)):
        out += b
    return int(float([l for l in out.decode().splitlines() if l.startswith(name + " ")][0].split()[1]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect(("127.0.0.1", port))
s.settimeout(20)
def ask(n):
    body = json.dumps({"model": "mock", "stream": True, "max_tokens": n, "ignore_eos": True,
                       "messages": [{"role": "user", "content": "slow reader"}]}).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
def stream(pause):
    """Reads a 60,000-token stream, calling pause(reads) after every recv; returns its
    tokens (the SSE events with content, in order) and its length."""
    ask(60000)
    got, reads = b"", 0
    while not got.endswith(b"0\r\n\r\n"):
        d = s.recv(65536)
        assert d, "closed after %d bytes" % len(got)
        got += d
        reads += 1
        pause(reads)
    head, _, rest = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    # chunked transfer encoding undone, then the SSE events counted in order
    body, p = b"", 0
    while True:
        eol = rest.index(b"\r\n", p)
        size = int(rest[p:eol], 16)
        if size == 0:
            break
        body += rest[eol + 2:eol + 2 + size]
        p = eol + 2 + size + 2
    events = [e for e in body.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]", events[-1]
    tokens = sum(len(json.loads(e[6:])["choices"][0]["delta"].get("content") or "") > 0 for e in events[:-1])
    assert tokens == 60000, "%d tokens of 60000" % tokens
    return len(got), reads
peak = 0
def long_pauses(reads):
    global peak
    if reads % 16 == 0:  # a pause: the stream runs ahead of this reader
        time.sleep(1.0 if reads == 64 else 0.05)
        peak = max(peak, metric("ibrain_buffer_bytes"))
total, reads = stream(long_pauses)
# more than the kernel's socket buffers (up to 4 MiB each way) and the high-water mark hold
assert total > 10 << 20, total
# paused past 1 MiB unsent (single-shot receives from 64 KiB behind on, so 16 KiB past it
# at most): buffers of up to 2 MiB and a little; with multishot receives to the end, 3 MiB
# (up to 32 x 16 KiB per wake-up past the mark); without the pause, > 6 MiB
assert (1 << 19) < peak < 3 << 20, "ibrain held %d bytes for one slow reader" % peak
pauses = metric("ibrain_upstream_pauses_total")
# then pauses of a millisecond: the client catches up while a cancel is still on its way
stream(lambda reads: reads % 4 == 0 and time.sleep(0.001))
assert metric("ibrain_upstream_pauses_total") > pauses
ask(3)  # the same connection, and a pooled upstream connection
got = b""
while not got.endswith(b"0\r\n\r\n"):
    d = s.recv(65536)
    assert d, got
    got += d
assert got.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in got, got[:300]
print("slow reader (%s receives): 60000 tokens in %d MB through %d reads, ibrain held at most %d KiB; %d pauses; "
      "the next request served" % (sys.argv[2], total >> 20, reads, peak >> 10, metric("ibrain_upstream_pauses_total")))
PY
ib_expect_eq "the slow reader's upstream kept alive ($mode)" "$(ib_metric "http://127.0.0.1:$(ib_port slow)/metrics" ibrain_upstream_connections_opened_total)" 1
pauses=$(ib_metric "http://127.0.0.1:$(ib_port slow)/metrics" ibrain_upstream_pauses_total)
[ "${pauses:-0}" -gt 0 ] || ib_fail "the slow reader's relay never paused ($mode): ${pauses:-none}"
ib_stop slow
done
ib_stop fast

#    sends half of 8 requests to it; it takes 3 s to answer, and is stopped 0.3 s in.
ib_engine hang --itl-ms 1 --prefill-us-per-token 0 --overhead-ms 3000
ib_ibrain hp --workers 1 --model mock --probe-ms 300 --eject-after 3 --policy round-robin \
  --replica e1=127.0.0.1:$(ib_port e1) --replica hang=127.0.0.1:$(ib_port hang)
hpport=$(ib_port hp)
/usr/bin/python3 - "$hpport" "${IB_PID[hang]}" <<'PY' || { kill -CONT "${IB_PID[hang]}"; ib_fail "hung replica"; }
import http.client, json, os, signal, sys, threading, time
port, hang = int(sys.argv[1]), int(sys.argv[2])
results = []
def ask(i):
    t0 = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    body = json.dumps({"model": "mock", "messages": [{"role": "user", "content": "q%d" % i}], "max_tokens": 2})
    c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    results.append((r.status, r.getheader("X-IB-Replica"), time.monotonic() - t0))
    r.read()
threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
for t in threads: t.start()
time.sleep(0.3)
os.kill(hang, signal.SIGSTOP)
for t in threads: t.join()
assert len(results) == 8, results
assert all(st == 200 and rep == "e1" for st, rep, _ in results), results
slowest = max(t for _, _, t in results)
assert slowest < 5, "the hung replica held a request %.1f s" % slowest
print("hung replica: 8 of 8 answered by e1, the slowest in %.2f s" % slowest)
PY
hpm="http://127.0.0.1:$hpport/metrics"
ib_expect_eq "hang unresponsive" "$(ib_metric "$hpm" 'ibrain_replica_unresponsive{replica="hang"}')" 1
ib_expect_eq "requests taken from the hung replica" \
  "$(ib_metric "$hpm" 'ibrain_upstream_errors_total{replica="hang",kind="unresponsive"}')" 4
kill -CONT "${IB_PID[hang]}"
for ((i = 0; i < 50; i++)); do
  [ "$(ib_metric "$hpm" 'ibrain_replica_unresponsive{replica="hang"}')" = 0 ] && break
  sleep 0.1
done
ib_expect_eq "hang responsive again" "$(ib_metric "$hpm" 'ibrain_replica_unresponsive{replica="hang"}')" 0
ib_expect_eq "in flight to the hung replica" "$(ib_metric "$hpm" 'ibrain_replica_in_flight{replica="hang"}')" 0
grep -q "replica hang hangs (3 probes unanswered)" "$IB_TMP/hp.log" || ib_fail "the hang was not logged"

# A draining replica refuses new connections (its probes fail at once) but finishes its
# streams: no new request goes to it, and its streams are not cut.
ib_engine dr --itl-ms 100 --prefill-us-per-token 0 --overhead-ms 0
ib_ibrain dp --workers 1 --model mock --probe-ms 300 --eject-after 3 --replica dr=127.0.0.1:$(ib_port dr)
curl -s -N --max-time 20 "http://127.0.0.1:$(ib_port dp)/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"mock","stream":true,"messages":[{"role":"user","content":"hi"}],"max_tokens":30}' >"$IB_TMP/dr.sse" &
client=$!
sleep 0.5
kill -TERM "${IB_PID[dr]}"
wait $client || ib_fail "the stream from the draining replica failed (curl exit $?)"
tail -n 2 "$IB_TMP/dr.sse" | grep -q '^data: \[DONE\]' || ib_fail "the draining replica's stream was cut: $(tail -c 300 "$IB_TMP/dr.sse")"
ib_expect_eq "tokens of the drained stream" "$(grep -c '"content"' "$IB_TMP/dr.sse")" 30
grep -q "replica dr failed 3 health probes in a row (refused)" "$IB_TMP/dp.log" || ib_fail "the refusals were not seen"

# 4. The connection cap: 8 per worker.
ib_spawn cap "$IB_IBRAIN_BIN" --listen 127.0.0.1:0 --port-file @PORTFILE --workers 1 --max-conns-per-worker 8 \
  --admin-listen 127.0.0.1:0 --admin-port-file "$IB_TMP/cap-admin.port" --model mock --replica e1=127.0.0.1:$(ib_port e1)
ib_wait_port cap
/usr/bin/python3 - "$(ib_port cap)" "$(cat "$IB_TMP/cap-admin.port")" <<'PY' || ib_fail "connection cap"
import json, socket, sys, time
port, admin = int(sys.argv[1]), int(sys.argv[2])
def get(p, path, s=None):
    own = s is None
    s = s or socket.create_connection(("127.0.0.1", p), timeout=5)
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    n = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
    while len(body) < n:
        body += s.recv(65536)
    if own:
        s.close()
    return head.split(b" ")[1], body
# 8 idle keep-alive clients fill the cap, the first one the longest idle.
idle = []
for i in range(8):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert get(port, "/health", s)[0] == b"200"
    idle.append(s)
    time.sleep(0.02)
# A ninth is served: the longest-idle one was closed to make room.
assert get(port, "/health")[0] == b"200"
idle[0].settimeout(2)
assert idle[0].recv(1) == b"", "the longest-idle connection was not the one closed"
assert get(port, "/health", idle[7])[0] == b"200", "a newer idle connection was closed"
# (The ninth, closed by us, must be gone from ibrain's count before the cap is full again.)
def metric(name):
    body = get(admin, "/metrics")[1].decode()
    return int([l for l in body.splitlines() if l.startswith(name + " ")][0].split()[1])
deadline = time.monotonic() + 5
while metric("ibrain_connections_open") != 7 + 1:  # 7 idle clients + this scrape's own connection
    assert time.monotonic() < deadline, metric("ibrain_connections_open")
    time.sleep(0.05)
# Every connection busy (a request head half sent): a new one is refused...
busy = []
for s in idle[1:]:
    s.sendall(b"GET /health HTTP/1.1\r\n")
    busy.append(s)
busy.append(socket.create_connection(("127.0.0.1", port), timeout=5))
busy[-1].sendall(b"GET /health HTTP/1.1\r\n")
time.sleep(0.2)
s = socket.create_connection(("127.0.0.1", port), timeout=5)
got = b""
try:
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    while True:
        b = s.recv(4096)
        if not b:
            break
        got += b
except ConnectionResetError:
    pass
head, _, body = got.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 503 "), "a connection over the cap got %r" % got
assert b"\r\nRetry-After: 1\r\n" in head + b"\r\n" and b"\r\nConnection: close\r\n" in head + b"\r\n", head
assert json.loads(body)["error"]["code"] == "connection_limit", body
# ...and the admin listener still answers, with the refusal counted.
code, body = get(admin, "/metrics")
assert code == b"200", code
line = [l for l in body.decode().splitlines() if l.startswith("ibrain_connections_refused_total ")][0]
assert int(line.split()[1]) >= 1, line
evicted = [l for l in body.decode().splitlines() if l.startswith("ibrain_connections_evicted_total ")][0]
assert int(evicted.split()[1]) == 1, evicted
assert get(admin, "/v1/chat/completions")[0] == b"404"
print("connection cap: oldest idle evicted, a refused one told 503 with Retry-After, %s, admin listener answers" % line)
PY
ib_stop cap || ib_fail "cap: stop"
# A burst of new connections at the cap (5 streams, cap 2): the two first are served, the
# other three are read and told 503 connection_limit. (New connections whose requests had
# not come yet counted as idle, so each one accepted evicted the one before it: three
# requests ended in EOF with nothing.)
ib_ibrain burst --workers 1 --model mock --max-conns-per-worker 2 --replica e1=127.0.0.1:$(ib_port e1)
"$IB_LOAD_BIN" --target 127.0.0.1:$(ib_port burst) --shared-prefix 1,5 --system-tokens 10 --question-tokens 5 \
  --output-tokens 50 --concurrency 5 --json "$IB_TMP/burst.json" --quiet >/dev/null 2>&1 || true
ib_expect_eq "burst at the cap: ok, and the rest told why" \
  "$(ib_json "$IB_TMP/burst.json" 'd["ok"], d["error_kinds"]')" "(2, {'503 connection_limit': 3})"
ib_stop burst || ib_fail "burst: stop"

# 5. Out of file descriptors: an ibrain allowed 64 descriptors, 100 idle clients.
ib_spawn fd prlimit --nofile=64:64 "$IB_IBRAIN_BIN" --listen 127.0.0.1:0 --port-file @PORTFILE --workers 1 \
  --model mock --replica e1=127.0.0.1:$(ib_port e1)
ib_wait_port fd
fdport=$(ib_port fd)
fdpid=${IB_PID[fd]}
/usr/bin/python3 - "$fdport" "$fdpid" <<'PY' || ib_fail "fd exhaustion"
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
hz = os.sysconf("SC_CLK_TCK")
def ticks():
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
first = socket.create_connection(("127.0.0.1", port))
first.settimeout(5)
clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]  # the backlog takes what accept cannot
time.sleep(0.5)
t0 = ticks(); time.sleep(2.0); used = (ticks() - t0) / hz / 2.0
assert used < 0.5, "ibrain spins while out of descriptors: %.0f%% of a core" % (used * 100)
# A connection accepted before the limit is still served.
first.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
assert first.recv(4096).startswith(b"HTTP/1.1 200")
for c in clients:
    c.close()
# Once they are gone, ibrain accepts again (within its back-off).
deadline = time.monotonic() + 5
while True:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.settimeout(2)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        page = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            page += chunk
        if page.startswith(b"HTTP/1.1 200"):
            break
    except OSError:
        pass
    assert time.monotonic() < deadline, "no answer after the clients left"
    time.sleep(0.1)
errors = [l for l in page.decode().splitlines() if l.startswith("ibrain_accept_errors_total ")]
assert errors and int(errors[0].split()[1]) > 0, "accept errors not counted"
print("fd exhaustion: %.0f%% of a core while out of descriptors; %s" % (used * 100, errors[0]))
PY
grep -c "cannot accept" "$IB_TMP/fd.log" | grep -qx 1 || ib_fail "the condition was not logged once: $(grep -c "cannot accept" "$IB_TMP/fd.log")"
ib_stop fd || ib_fail "ibrain out of descriptors did not stop on SIGTERM"

# 6. The buffer budget: 1 MiB for the one worker, an engine that streams as fast as it can
# (the kernel's socket buffers fill at once, then ibrain's).
ib_engine fast --itl-ms 0 --itl-us-per-seq 0 --prefill-us-per-token 0 --overhead-ms 0
ib_ibrain mem --workers 1 --model mock --max-buffer-mb 1 --replica fast=127.0.0.1:$(ib_port fast)
/usr/bin/python3 - "$(ib_port mem)" <<'PY' || ib_fail "buffer budget"
import json, socket, sys, time
port = int(sys.argv[1])
def request(body, s=None):
    s = s or socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return s
def get(path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = b""
    while True:
        b = s.recv(65536)
        if not b:
            return out
        out += b
def metric(name):
    return int(float([l for l in get("/metrics").decode().splitlines() if l.startswith(name + " ")][0].split()[1]))
long = json.dumps({"model": "mock", "stream": True, "max_tokens": 100000, "ignore_eos": True,
                   "messages": [{"role": "user", "content": "pin"}]}).encode()
short = json.dumps({"model": "mock", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).encode()
assert get("/metrics").startswith(b"HTTP/1.1 200")
assert metric("ibrain_buffer_budget_bytes") == 1 << 20
# Two clients that read nothing: their answers pile up in ibrain past the budget.
pinned = []
for i in range(2):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    pinned.append(request(long, s))
deadline = time.monotonic() + 10
while metric("ibrain_buffer_bytes") <= 1 << 20:
    assert time.monotonic() < deadline, "the pinned streams never filled the budget"
    time.sleep(0.1)
s = request(short)
got = b""
while b"\r\n\r\n" not in got or not got.rstrip().endswith(b"}"):
    b = s.recv(65536)
    if not b:
        break
    got += b
head, _, body = got.partition(b"\r\n\r\n")
assert head.startswith(b"HTTP/1.1 503 "), got
assert b"\r\nRetry-After: 1\r\n" in head + b"\r\n", head
assert json.loads(body)["error"]["code"] == "memory_limit", body
assert get("/health").startswith(b"HTTP/1.1 200")
assert metric("ibrain_requests_shed_total") == 1
held = metric("ibrain_buffer_bytes")
assert held < 3 << 20, "two pinned relays hold %d bytes" % held  # 1 MiB high water each without the budget
for p in pinned:
    p.close()
deadline = time.monotonic() + 10
while metric("ibrain_buffer_bytes") > 256 << 10:
    assert time.monotonic() < deadline, "buffers not given back: %d" % metric("ibrain_buffer_bytes")
    time.sleep(0.1)
s = request(short)
assert s.recv(65536).startswith(b"HTTP/1.1 200")
print("buffer budget: a chat over it told 503 with Retry-After; two pinned relays held %d KiB; "
      "given back when they left, then served" % (held >> 10))
PY
ib_stop mem || ib_fail "ibrain with a buffer budget exited with $?"
echo "proxy_edges: ok"
