#!/usr/bin/env bash
# Control-plane timings on the embedded stack (redis-server, ib-clusterd with the local
# driver, ib-orchestrator, ibrain; mock-engine replicas):
#   1. deploy: POST /v1/workloads -> the first request through ibrain answered by one of
#      the new replicas, RUNS times (default 20; median, p90, min, max), with the
#      orchestrator's own view (GET says every replica ready) beside it;
#   2. rolling update of a 4-replica workload (PATCH a new version) under 50 req/s through
#      ibrain: time until every new replica serves, time until the old generation is gone,
#      and the load's failed requests.
# Settings are the defaults an operator gets (--sync-ms 200, --drain-grace-ms 1500) unless
# SYNC_MS / GRACE_MS say otherwise.
# usage: perf/bench-controlplane.sh [BUILD_DIR]   (env: RUNS, SYNC_MS, GRACE_MS)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
runs=${RUNS:-20}
sync_ms=${SYNC_MS:-200}
grace_ms=${GRACE_MS:-1500}
source "$top/perf/lib.sh"

start_redis
"$build/controlplane/ib-clusterd" --listen 127.0.0.1:0 --port-file "$tmp/cd.port" --state-dir "$tmp/state" \
  --drain-grace-ms "$grace_ms" >"$tmp/cd.log" 2>&1 &
pids+=($!)
ib_wait_port_file "$tmp/cd.port" "${pids[-1]}" >/dev/null
"$build/controlplane/ib-orchestrator" --listen 127.0.0.1:0 --port-file "$tmp/or.port" --no-auth \
  --cluster "127.0.0.1:$(cat "$tmp/cd.port")" --redis "127.0.0.1:$rport" --sync-ms "$sync_ms" >"$tmp/or.log" 2>&1 &
pids+=($!)
"$build/dataplane/ibrain" --listen 127.0.0.1:0 --port-file "$tmp/ib.port" --redis "127.0.0.1:$rport" \
  >"$tmp/ib.log" 2>&1 &
pids+=($!)
oport=$(ib_wait_port_file "$tmp/or.port" "${pids[-2]}")
front=$(ib_wait_port_file "$tmp/ib.port" "${pids[-1]}")
echo weights >"$tmp/weights.bin"
echo "bench-controlplane: $(date -u '+%F %H:%M UTC'), $(nproc) cores, sync ${sync_ms} ms, drain grace ${grace_ms} ms, $runs runs"

# ---- 1. deploy -> first routed request ----
/usr/bin/python3 - "$oport" "$front" "$tmp/weights.bin" "$runs" <<'PY'
import http.client, json, statistics, sys, time
oport, front, weights, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def call(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request(method, path, json.dumps(body) if body is not None else None,
              {"Content-Type": "application/json"} if body is not None else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data, r.getheader("x-engine-id")

routed, ready = [], []
for i in range(runs):
    wid = "bench-%d" % i
    ib = http.client.HTTPConnection("127.0.0.1", front, timeout=30)
    t0 = time.monotonic()
    st, data, _ = call(oport, "POST", "/v1/workloads", {"id": wid, "model": wid, "replicas": 2, "weights": weights})
    assert st == 201, data
    t_ready = None
    while True:
        ib.request("POST", "/v1/chat/completions",
                   json.dumps({"model": wid, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}),
                   {"Content-Type": "application/json"})
        r = ib.getresponse()
        r.read()
        now = time.monotonic()
        if r.status == 200 and (r.getheader("x-engine-id") or "").startswith(wid + "-g"):
            routed.append(now - t0)
            break
        if now - t0 > 30:
            raise SystemExit("%s: not routed after 30 s (last status %d)" % (wid, r.status))
        time.sleep(0.002)
    while t_ready is None:  # the orchestrator's view, for comparison
        st, data, _ = call(oport, "GET", "/v1/workloads/" + wid)
        if json.loads(data)["status"]["phase"] == "ready":
            t_ready = time.monotonic() - t0
    ready.append(t_ready)
    call(oport, "DELETE", "/v1/workloads/" + wid)
    time.sleep(0.3)

def ms(x): return "%.0f" % (x * 1000)
def summary(xs):
    xs = sorted(xs)
    return "median %s ms, p90 %s ms, min %s ms, max %s ms" % (
        ms(statistics.median(xs)), ms(xs[int(0.9 * (len(xs) - 1))]), ms(xs[0]), ms(xs[-1]))
print("deploy (POST, 2 mock replicas) -> first request routed to them through ibrain, %d runs: %s" % (runs, summary(routed)))
print("  (GET first showing phase ready, checked after the routed request: %s)" % summary(ready))
PY

# ---- 2. rolling update of 4 replicas under load ----
curl -sf -X POST "http://127.0.0.1:$oport/v1/workloads" -H 'Content-Type: application/json' \
  -d "{\"id\":\"roll\",\"model\":\"roll\",\"replicas\":4,\"weights\":\"$tmp/weights.bin\",\"version\":\"v1\"}" >/dev/null
for _ in $(seq 600); do
  [ "$(curl -s "http://127.0.0.1:$oport/v1/workloads/roll" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["status"]["phase"])')" = ready ] && break
  sleep 0.05
done
sleep 1
"$build/perf/ib-load" --target "127.0.0.1:$front" --model roll --shared-prefix 4,200 --system-tokens 100 \
  --question-tokens 10 --output-tokens 8 --rate 50 --json "$tmp/load.json" --quiet >"$tmp/load.txt" 2>&1 &
loader=$!
sleep 2
/usr/bin/python3 - "$oport" <<'PY'
import http.client, json, sys, time
oport = int(sys.argv[1])
def call(method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", oport, timeout=30)
    c.request(method, path, json.dumps(body) if body is not None else None, {"Content-Type": "application/json"})
    r = c.getresponse(); d = r.read(); c.close()
    return r.status, json.loads(d)
t0 = time.monotonic()
st, w = call("PATCH", "/v1/workloads/roll", {"version": "v2"})
assert st == 200, w
gen = w["generation"]
t_new = t_done = None
while t_done is None:
    st, w = call("GET", "/v1/workloads/roll")
    reps = w["status"]["replicas"]
    now = time.monotonic() - t0
    if t_new is None and sum(r["ready"] and r["generation"] == gen for r in reps) == 4:
        t_new = now
    if w["status"]["phase"] == "ready":
        t_done = now
    time.sleep(0.01)
print("rolling update of 4 replicas (PATCH version): every new replica ready %.0f ms, old generation drained and gone %.0f ms"
      % (t_new * 1000, t_done * 1000))
PY
wait "$loader"
/usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print("  load through ibrain during the update (50 req/s, 800 requests): %d ok, %d failed" % (d["ok"], d["errors"]))' "$tmp/load.json"
