# ib-clusterd with the local driver, driven by python3-grpcio: the health service; bad
# specs refused with the field named and nothing created; a workload of 2 mock-engine
# replicas (one ib-manager each) becomes ready and answers; a compile failure is reported;
# a killed manager is restarted; delete stops its replicas; SIGTERM stops everything.
source "$IB_SRC/tests/lib/proc.sh"
/usr/bin/python3 -c 'import grpc, grpc_tools' 2>/dev/null || ib_fail "python3-grpcio/python3-grpc-tools missing: run tools/setup.sh"
echo "weights" >"$IB_TMP/weights.bin"
mkdir -p "$IB_TMP/state" "$IB_TMP/py"
ib_spawn cd "$IB_BUILD/controlplane/ib-clusterd" --listen 127.0.0.1:0 --port-file @PORTFILE --state-dir "$IB_TMP/state" \
  --engine "$IB_BUILD/tools/ib-mock-engine --listen 127.0.0.1:{port} --model {model} --id {replica} --itl-ms 1"
port=$(ib_wait_port cd)
/usr/bin/python3 "$IB_SRC/tests/interop/cluster_client.py" "$port" "$IB_SRC/controlplane/proto" "$IB_TMP/py" \
  "$IB_TMP/weights.bin" >"$IB_TMP/client.txt" 2>&1 || ib_fail "cluster client: $(cat "$IB_TMP/client.txt")"
cat "$IB_TMP/client.txt"
ib_stop cd || ib_fail "ib-clusterd exited with $?"
sleep 0.5
pgrep -f "state-dir $IB_TMP/state" >/dev/null && ib_fail "managers left running: $(pgrep -af "state-dir $IB_TMP/state")"
echo "cluster_grpc: ok"
