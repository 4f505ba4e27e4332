# ib-clusterd with the local driver, driven by python3-grpcio: the health service; bad
# specs refused with the field named and nothing created; a workload of 2 mock-engine
# replicas (one ib-manager each) becomes ready and answers; a compile failure is reported;
# a killed manager is restarted; delete stops its replicas; a crashed (SIGKILL) cluster
# server restarted on the same state directory adopts the running managers; SIGTERM stops
# everything.
source "$IB_SRC/tests/lib/proc.sh"
/usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null || ib_fail "python3-grpcio/python3-grpc-tools missing: run tools/setup.sh"
echo "weights" >"$IB_TMP/weights.bin"
mkdir -p "$IB_TMP/state" "$IB_TMP/py"
ib_spawn cd "$IB_BUILD/controlplane/ib-clusterd" --listen 127.0.0.1:0 --port-file @PORTFILE --state-dir "$IB_TMP/state" \
  --http-listen 127.0.0.1:0 --http-port-file "$IB_TMP/cd.http" --engine "$IB_BUILD/tools/ib-mock-engine --listen 127.0.0.1:{port} --model {model} --id {replica} --itl-ms 1"
port=$(ib_wait_port cd)
/usr/bin/python3 "$IB_SRC/tests/interop/cluster_client.py" "$port" "$IB_SRC/controlplane/proto" "$IB_TMP/py" \
  "$IB_TMP/weights.bin" "$IB_TMP/state" >"$IB_TMP/client.txt" 2>&1 || ib_fail "cluster client: $(cat "$IB_TMP/client.txt")"
cat "$IB_TMP/client.txt"
curl -fsS "http://127.0.0.1:$(cat "$IB_TMP/cd.http")/metrics" >"$IB_TMP/cd.metrics" || ib_fail "cluster /metrics"
promtool check metrics <"$IB_TMP/cd.metrics" || ib_fail "promtool on the cluster server's /metrics"
grep -q '^ib_cluster_rolling_updates_total 1$' "$IB_TMP/cd.metrics" || ib_fail "rolling update not counted: $(cat "$IB_TMP/cd.metrics")"
grep -q 'ib_cluster_rpc_total{method="CreateWorkload",code="3"}' "$IB_TMP/cd.metrics" || ib_fail "refused creates not counted"
echo "cluster /metrics: promtool ok"

# A cluster server that crashes loses no workload: its managers keep running (their own
# process groups), and the restarted server adopts them from the state directory.
grpc_py() { # PORT PYTHON: runs a snippet with the generated stubs as `stub`, `pb`
  /usr/bin/python3 - "$1" "$IB_TMP/py" <<PY
import sys, time
sys.path.insert(0, sys.argv[2])
import grpc, cluster_pb2 as pb, cluster_pb2_grpc as rpc
ch = grpc.insecure_channel("127.0.0.1:" + sys.argv[1]); grpc.channel_ready_future(ch).result(timeout=10)
stub = rpc.ClusterStub(ch)
$2
PY
}
grpc_py "$port" "
stub.CreateWorkload(pb.WorkloadSpec(id='keep', model='keep', replicas=2, weights='$IB_TMP/weights.bin'), timeout=10)
deadline = time.time() + 30
while time.time() < deadline and sum(e.ready for e in stub.ListEndpoints(pb.ListEndpointsRequest(workload='keep')).endpoints) < 2:
    time.sleep(0.2)
print(' '.join(sorted(e.address for e in stub.ListEndpoints(pb.ListEndpointsRequest(workload='keep')).endpoints if e.ready)))
" >"$IB_TMP/before.txt" || ib_fail "create keep"
[ "$(wc -w <"$IB_TMP/before.txt")" = 2 ] || ib_fail "keep not ready: $(cat "$IB_TMP/before.txt")"
managers=$(pgrep -f -- "ib-manager .*--workload keep .*--state-dir $IB_TMP/state" | sort | tr '\n' ' ')
ib_stop cd KILL || true
sleep 0.5
[ "$(pgrep -f -- "ib-manager .*--workload keep .*--state-dir $IB_TMP/state" | sort | tr '\n' ' ')" = "$managers" ] ||
  ib_fail "the managers did not survive the cluster server's crash"
ib_spawn cd2 "$IB_BUILD/controlplane/ib-clusterd" --listen 127.0.0.1:0 --port-file @PORTFILE --state-dir "$IB_TMP/state"
port2=$(ib_wait_port cd2)
grpc_py "$port2" "
st = stub.GetWorkload(pb.WorkloadRef(id='keep'), timeout=10)
assert all(r.phase == pb.REPLICA_PHASE_READY and r.restarts == 0 for r in st.replicas), st
print(' '.join(sorted(r.address for r in st.replicas)))
" >"$IB_TMP/after.txt" || ib_fail "keep after the restart: $(cat "$IB_TMP/after.txt")"
ib_expect_eq "replicas after the restart (same engines, not restarted)" "$(cat "$IB_TMP/after.txt")" "$(cat "$IB_TMP/before.txt")"
grep -q "2 of 2 replicas adopted" "$IB_TMP/cd2.log" || ib_fail "no adoption logged: $(cat "$IB_TMP/cd2.log")"
echo "keep: cluster server crashed and restarted; both replicas adopted, still on $(cat "$IB_TMP/after.txt")"
grpc_py "$port2" "stub.DeleteWorkload(pb.WorkloadRef(id='keep'), timeout=10)" || ib_fail "delete keep"
for ((i = 0; i < 100; i++)); do
  pgrep -f -- "ib-manager .*--workload keep .*--state-dir $IB_TMP/state" >/dev/null || break
  sleep 0.1
done
pgrep -f -- "ib-manager .*--workload keep .*--state-dir $IB_TMP/state" >/dev/null && ib_fail "adopted managers still running after delete"
ib_stop cd2 || ib_fail "ib-clusterd exited with $?"
sleep 0.5
pgrep -f "state-dir $IB_TMP/state" >/dev/null && ib_fail "managers left running: $(pgrep -af "state-dir $IB_TMP/state")"
# Only this build's engines: a stack started from another checkout on the same machine
# runs engines with the same ids.
engines="^$IB_BUILD/.*ib-mock-engine .*--id (demo|keep)-g[0-9]+-r"
pgrep -f -- "$engines" >/dev/null && ib_fail "engines left running: $(pgrep -af -- "$engines")"
echo "cluster_grpc: ok"
