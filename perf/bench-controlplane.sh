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
# DRIVER=kubernetes: the same on a real Kubernetes (tools/k8s/cluster.sh; the one IB_K8S_ENV
# names, or one of its own), ib-clusterd --driver kubernetes with this build's ib-manager
# image (--pod-drain-s POD_DRAIN_S, default 3), plus:
#   3. the cluster server's requests to the API server per minute at rest (a 4-replica
#      workload deployed, nothing changing), from ib_cluster_kube_requests_total.
# usage: perf/bench-controlplane.sh [BUILD_DIR]   (env: RUNS, SYNC_MS, GRACE_MS, DRIVER, POD_DRAIN_S)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$top/build}" && pwd)
runs=${RUNS:-20}
sync_ms=${SYNC_MS:-200}
grace_ms=${GRACE_MS:-1500}
driver=${DRIVER:-local}
source "$top/perf/lib.sh"

start_redis
if [ "$driver" = kubernetes ]; then
  if [ -z "${IB_K8S_ENV:-}" ]; then
    bash "$top/tools/k8s/cluster.sh" up "$tmp/k8s" >"$tmp/k8s-up.log" 2>&1 || { cat "$tmp/k8s-up.log"; exit 1; }
    IB_K8S_ENV=$tmp/k8s/env
    trap 'cleanup_k8s' EXIT
  fi
  cleanup_k8s() { bash "$top/tools/k8s/cluster.sh" down "$tmp/k8s" >/dev/null 2>&1; cleanup; }
  source "$IB_K8S_ENV"
  export KUBECONFIG
  ns="bench-$$"
  "$IB_KUBECTL" create namespace "$ns" >/dev/null
  bash "$top/tools/k8s/image/build.sh" "$build" bench "$tmp/images" 2>/dev/null
  bash "$top/tools/k8s/cluster.sh" import "$IB_K8S_DIR" "$tmp/images/ib-manager-bench.tar"
  chmod 755 "$tmp"
  "$build/controlplane/ib-clusterd" --driver kubernetes --kubeconfig "$KUBECONFIG" --namespace "$ns" \
    --image ibrain.local/ib-manager:bench --pull-policy Never --pod-drain-s "${POD_DRAIN_S:-3}" \
    --listen 127.0.0.1:0 --port-file "$tmp/cd.port" --state-dir "$tmp/state" \
    --http-listen 127.0.0.1:0 --http-port-file "$tmp/cd.http" >"$tmp/cd.log" 2>&1 &
  prefix_of() { echo "ib-$1-"; } # replica ids are the pods' names
else
  "$build/controlplane/ib-clusterd" --listen 127.0.0.1:0 --port-file "$tmp/cd.port" --state-dir "$tmp/state" \
    --drain-grace-ms "$grace_ms" >"$tmp/cd.log" 2>&1 &
  prefix_of() { echo "$1-g"; }
fi
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
echo "bench-controlplane: $(date -u '+%F %H:%M UTC'), $(nproc) cores, $driver driver, sync ${sync_ms} ms, drain grace ${grace_ms} ms, $runs runs"

# ---- 1. deploy -> first routed request ----
/usr/bin/python3 - "$oport" "$front" "$tmp/weights.bin" "$runs" "$(prefix_of WID)" <<'PY'
import http.client, json, statistics, sys, time
oport, front, weights, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
prefix = sys.argv[5]  # the replica ids of workload WID start with it

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
        if r.status == 200 and (r.getheader("x-engine-id") or "").startswith(prefix.replace("WID", wid)):
            routed.append(now - t0)
            break
        if now - t0 > 60:
            raise SystemExit("%s: not routed after 60 s (last status %d)" % (wid, r.status))
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

# ---- 3. (kubernetes) requests to the API server at rest ----
if [ "$driver" = kubernetes ]; then
  metric() { curl -s "http://127.0.0.1:$(cat "$tmp/cd.http")/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
  sleep 5
  r0=$(metric ib_cluster_kube_requests_total); e0=$(metric 'ib_cluster_kube_watch_events_total{kind="pods"}')
  sleep "${REST_S:-60}"
  r1=$(metric ib_cluster_kube_requests_total); e1=$(metric 'ib_cluster_kube_watch_events_total{kind="pods"}')
  echo "at rest (a 4-replica workload, nothing changing, ${REST_S:-60} s): $((r1 - r0)) requests to the API server ($(( (r1 - r0) * 60 / ${REST_S:-60} )) per minute), $((e1 - e0)) pod events; the orchestrator polled the cluster server every ${sync_ms} ms meanwhile"
  "$IB_KUBECTL" delete namespace "$ns" --wait=false >/dev/null
fi
