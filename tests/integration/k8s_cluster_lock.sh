# One Kubernetes per machine (tools/k8s/cluster.sh): a second `cluster.sh up` beside the
# running cluster waits for the machine's lock and, when its wait runs out, is refused
# with a message naming the cluster that holds it; the `down` of the refused directory
# leaves the running cluster's bridge, node and pods alone (it used to delete the bridge
# of whichever cluster ran, and a second up failed at once on "bridge exists").
source "$IB_SRC/tests/lib/proc.sh"
source "$IB_SRC/tests/lib/k8s.sh"
# shellcheck disable=SC1090
source "$IB_K8S_ENV"

second=$IB_TMP/second
st=0
IB_K8S_LOCK_WAIT=2 bash "$IB_SRC/tools/k8s/cluster.sh" up "$second" >"$IB_TMP/second-up.txt" 2>&1 || st=$?
[ "$st" -ne 0 ] || ib_fail "a second cluster came up beside the running one: $(cat "$IB_TMP/second-up.txt")"
grep -q "another cluster runs on this machine ($IB_K8S_DIR); waiting up to 2s" "$IB_TMP/second-up.txt" ||
  ib_fail "the wait does not name the running cluster: $(cat "$IB_TMP/second-up.txt")"
grep -q "another cluster held this machine for 2s (IB_K8S_LOCK_WAIT); not started" "$IB_TMP/second-up.txt" ||
  ib_fail "the refusal does not say why: $(cat "$IB_TMP/second-up.txt")"
[ ! -e "$second/pids/containerd" ] || ib_fail "the refused up started containerd"
echo "a second cluster.sh up: waited 2 s for the machine's lock, then refused (exit $st), naming $IB_K8S_DIR"

bash "$IB_SRC/tools/k8s/cluster.sh" down "$second" >/dev/null 2>&1 || ib_fail "down of the refused directory"
ip link show ibk8s0 >/dev/null 2>&1 || ib_fail "the refused directory's down deleted the running cluster's bridge"
k wait --for=condition=Ready node/"$IB_K8S_NODE" --timeout=5s >/dev/null || ib_fail "node not Ready after the refused down"
# a pod started now gets its address on the bridge and answers through it
k -n "$ns" run probe --image=ibrain.local/pause:local --restart=Never >/dev/null
wait_until 60 "a new pod running with an address on the bridge" \
  '[[ $(k -n "$ns" get pod probe -o jsonpath="{.status.phase} {.status.podIP}") == "Running $IB_K8S_POD_PREFIX."* ]]'
echo "its down left the running cluster alone: bridge up, node Ready, a new pod Running on the bridge"
