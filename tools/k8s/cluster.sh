#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, for the tests and for trying ibrain's
# kubernetes driver and Helm chart: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy (iptables) and CoreDNS (built by tools/k8s/build.sh),
# containerd + runc + the CNI bridge plugin (Debian), and a kubelet that runs the pods for
# real. Images come from tools/k8s/image/build.sh (no registry is needed).
#
#   cluster.sh up DIR     start everything with its state, certificates and logs in DIR;
#                         writes DIR/env (KUBECONFIG, ports, pod network) and waits until the
#                         node is Ready and the images are imported. Loopback ports are chosen
#                         at run time; pods get addresses on a bridge this script makes.
#   cluster.sh down DIR   stop it by the PIDs in DIR, remove its pods' containers, mounts,
#                         network and cgroups, and leave DIR for the logs.
#   cluster.sh stop DIR NAME / start DIR NAME
#                         stop one component (kube-apiserver, etcd, kubelet, ...) by its PID,
#                         or start it again with the command line it had: for fault tests.
#   cluster.sh import DIR TAR...
#                         OCI image archives (tools/k8s/image/build.sh) into the node's containerd.
#
# One cluster at a time on a machine: the bridge, kube-proxy's iptables chains, the pods'
# network namespaces and the kubelet's cgroups (kubepods) are machine-wide. `up` takes a
# lock first (tools/k8s/lock.py, an abstract unix socket held by a process of the cluster's
# own, so a killed run never leaves it held) and waits up to IB_K8S_LOCK_WAIT seconds (1800)
# while another cluster holds it; what a run killed before `down` left behind is removed
# by the next `up`. `down` touches the machine-wide state only for the cluster that holds
# the lock. The pod network is ${IB_K8S_POD_CIDR:-10.233.0.0/24} on bridge
# ibk8s0; its first address is the node's IP, where the API server listens (pods reach it
# there, through the kubernetes Service). Nothing leaves this machine: the bridge has no
# uplink, Service IPs (10.96.0.0/16) exist only in this machine's iptables, and kube-proxy
# masquerades Service traffic to the node's bridge address only.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
CACHE=${IBRAIN_K8S_CACHE:-$HOME/.cache/ibrain/k8s}
KBIN=$CACHE/bin/kubernetes-$K8S_VERSION
EBIN=$CACHE/bin/etcd-$ETCD_VERSION
NODE=ibrain-node
BRIDGE=ibk8s0
LOCK=ibrain-k8s-cluster
POD_PREFIX=${IB_K8S_POD_PREFIX:-10.233.0}
NODE_IP=$POD_PREFIX.1

die() { echo "cluster.sh: $*" >&2; exit 1; }
free_port() { /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }

# start NAME CMD...: in the background, in its own process group, logging to DIR/logs/NAME.log
# (appended: a component started again keeps its history); the command line is kept in
# DIR/cmds/NAME for `cluster.sh start DIR NAME`
start() {
  local name=$1; shift
  mkdir -p "$D/cmds"
  printf '%q ' "$@" > "$D/cmds/$name"
  setsid "$@" >>"$D/logs/$name.log" 2>&1 < /dev/null &
  echo $! > "$D/pids/$name"
}

# wait_for WHAT SECONDS CMD...: until CMD succeeds, or fail naming WHAT and the logs
wait_for() {
  local what=$1 secs=$2 end; shift 2
  end=$(($(date +%s) + secs))
  while (($(date +%s) < end)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "cluster.sh: $what not ready after ${secs}s; last lines of the logs:" >&2
  tail -n 15 "$D"/logs/*.log >&2 || true
  return 1
}

KUBECTL=$KBIN/kubectl
[[ -x $KUBECTL ]] || KUBECTL=kubectl
kctl() { "$KUBECTL" --kubeconfig "$D/pki/admin.kubeconfig" "$@"; }

up() {
  [[ -x $KBIN/kubelet && -x $EBIN/etcd ]] || die "no Kubernetes $K8S_VERSION binaries in $CACHE (run tools/k8s/build.sh)"
  for b in containerd runc ctr iptables /usr/lib/cni/bridge "$KUBECTL" "$KBIN/kube-proxy"; do
    command -v "$b" >/dev/null || die "$b missing (run tools/setup.sh)"
  done
  [[ $(id -u) -eq 0 ]] || die "needs root (containers, bridge, cgroups)"
  local t0; t0=$(now_ms)
  [[ ! -d $D/etcd ]] || die "$D held a cluster before (its etcd and pods would come back): give a new DIR"
  mkdir -p "$D"/{logs,pids,etcd,kubelet,pod-logs,cni/net.d,cni/ipam,containerd}
  D=$(cd "$D" && pwd)
  take_lock
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    local left; left=$(cat "/sys/class/net/$BRIDGE/ifalias" 2>/dev/null || true)
    # a cluster whose API server still runs is no leftover (one started without the lock)
    if [[ $left == /* && -s $left/pids/kube-apiserver ]] && alive "$(cat "$left/pids/kube-apiserver")"; then
      stop lock
      die "bridge $BRIDGE belongs to a running cluster ($left) that holds no lock: cluster.sh down $left"
    fi
    echo "cluster.sh: bridge $BRIDGE is left by a cluster whose run ended before its down (${left:-?}); removing what it left" >&2
    if [[ $left == /* ]]; then unmount_under "$left"; fi
    machine_cleanup
  fi
  # however up ends from here on short of its end (a failed command, a die), what started
  # is taken down, the lock last
  trap 'rc=$?; trap - EXIT; if ((rc != 0)); then echo "cluster.sh: up failed; taking down what started" >&2; down >/dev/null 2>&1; fi; exit $rc' EXIT

  local etcd_port etcd_peer api_port kubelet_port healthz_port kcm_port sched_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port)
  kubelet_port=$(free_port); healthz_port=$(free_port); kcm_port=$(free_port); sched_port=$(free_port)
  local url=https://$NODE_IP:$api_port proxy_healthz proxy_metrics
  proxy_healthz=$(free_port); proxy_metrics=$(free_port)
  rm -f "$D"/pki/*.kubeconfig   # they name the API server's port, new each run
  bash "$HERE/certs.sh" "$D/pki" "$NODE" "$NODE_IP" 10.96.0.1 "$url" 2>/dev/null
  local P=$D/pki

  # --- the pod network: a bridge of our own, the node's address on it ----------------
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" alias "$D" # whose it is, for the up after a run killed before its down
  ip link set "$BRIDGE" up
  cat > "$D/cni/net.d/10-ibrain.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "ibrain-pods",
 "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$D/cni/ipam",
            "ranges": [[{"subnet": "$POD_PREFIX.0/24", "rangeStart": "$POD_PREFIX.10", "gateway": "$NODE_IP"}]],
            "routes": [{"dst": "10.96.0.0/16"}]}},
  {"type": "loopback"}
 ]}
EOF

  # --- containerd (its own root, state and socket) ------------------------------------
  cat > "$D/containerd/config.toml" <<EOF
version = 2
root = "$D/containerd/root"
state = "$D/containerd/state"
[grpc]
  address = "$D/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "ibrain.local/pause:local"
  enable_unprivileged_ports = true
  # this machine withholds CAP_SYS_RESOURCE: nothing here may lower an oom_score_adj below
  # its own, and runc fails a sandbox that asks for -998 ("can't get final child's PID")
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$D/cni/net.d"
EOF
  start containerd containerd --config "$D/containerd/config.toml"
  wait_for containerd 20 ctr --address "$D/containerd/containerd.sock" version

  # --- the pause and CoreDNS images: built here, imported into the CRI's namespace ------------
  local images=${IB_K8S_IMAGES:-$CACHE/images}
  bash "$HERE/image/build.sh" --infra "$images"
  import_images "$images/pause.tar" "$images/coredns-local.tar"

  # --- etcd and the control plane ------------------------------------------------------
  start etcd "$EBIN/etcd" --name=ibrain --data-dir="$D/etcd" --unsafe-no-fsync \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="ibrain=http://127.0.0.1:$etcd_peer" --listen-metrics-urls="" \
    --quota-backend-bytes=1073741824 --log-level=warn
  # on the bridge's address: the tools here and the pods (through the kubernetes Service,
  # whose endpoint the API server keeps) reach it there
  start kube-apiserver "$KBIN/kube-apiserver" \
    --bind-address="$NODE_IP" --secure-port="$api_port" --advertise-address="$NODE_IP" \
    --etcd-servers="http://127.0.0.1:$etcd_port" \
    --service-cluster-ip-range=10.96.0.0/16 \
    --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" --client-ca-file="$P/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
    --api-audiences=https://kubernetes.default.svc.cluster.local \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-client-certificate="$P/apiserver-kubelet-client.crt" --kubelet-client-key="$P/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$P/ca.crt" --kubelet-preferred-address-types=InternalIP,Hostname \
    --anonymous-auth=false --profiling=false
  wait_for kube-apiserver 60 kctl get --raw /readyz
  start kube-controller-manager "$KBIN/kube-controller-manager" \
    --kubeconfig="$P/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$P/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$P/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
    --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
    --controllers=deployment-controller,replicaset-controller,statefulset-controller,disruption-controller,endpointslice-controller,garbage-collector-controller,serviceaccount-token-controller,serviceaccount-controller,namespace-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,clusterrole-aggregation-controller,node-lifecycle-controller
  cat > "$D/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $P/kube-scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
  start kube-scheduler "$KBIN/kube-scheduler" --config="$D/scheduler.yaml" \
    --authentication-kubeconfig="$P/kube-scheduler.kubeconfig" --authorization-kubeconfig="$P/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$sched_port"

  # --- kube-proxy: Service IPs in this machine's iptables ---------------------------------
  cat > "$D/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $P/kube-proxy.kubeconfig}
hostnameOverride: $NODE
mode: iptables
clusterCIDR: $POD_PREFIX.0/24
# pod -> Service -> pod on the same bridge: the reply must come back through this host to
# be un-NATed, so Service traffic is masqueraded to the node's bridge address
iptables: {masqueradeAll: true}
nodePortAddresses: ["$NODE_IP/32"]
healthzBindAddress: 127.0.0.1:$proxy_healthz
metricsBindAddress: 127.0.0.1:$proxy_metrics
# leave the machine's conntrack settings alone
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start kube-proxy "$KBIN/kube-proxy" --config="$D/kube-proxy.yaml"

  # --- the kubelet -----------------------------------------------------------------------
  cat > "$D/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$D/containerd/containerd.sock
failSwapOn: false
address: 127.0.0.1
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $P/kubelet-serving.crt
tlsPrivateKeyFile: $P/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: ["10.96.0.10"]
resolvConf: /etc/resolv.conf
cgroupsPerQOS: true
enforceNodeAllocatable: ["pods"]
registerNode: true
maxPods: 40
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
syncFrequency: 10s
podLogsDir: $D/pod-logs
nodeStatusUpdateFrequency: 5s
EOF
  start kubelet "$KBIN/kubelet" --config="$D/kubelet.yaml" --kubeconfig="$P/kubelet.kubeconfig" \
    --hostname-override="$NODE" --node-ip="$NODE_IP" --root-dir="$D/kubelet" --cert-dir="$D/kubelet/pki"
  wait_for "node $NODE" 90 kctl wait --for=condition=Ready "node/$NODE" --timeout=1s
  wait_for "the default service account" 30 kctl get serviceaccount default

  # --- CoreDNS: Service names for the pods (the Helm chart's components find each other so)
  sed "s|@IMAGE@|ibrain.local/coredns:local|" "$HERE/coredns.yaml" | kctl apply -f - >/dev/null
  wait_for CoreDNS 60 kctl -n kube-system wait --for=condition=Available deployment/coredns --timeout=1s

  cat > "$D/env" <<EOF
KUBECONFIG=$P/admin.kubeconfig
IB_K8S_API=$url
IB_K8S_CA=$P/ca.crt
IB_K8S_NODE=$NODE
IB_K8S_NODE_IP=$NODE_IP
IB_K8S_POD_PREFIX=$POD_PREFIX
IB_K8S_CONTAINERD=$D/containerd/containerd.sock
IB_K8S_ETCD=http://127.0.0.1:$etcd_port
IB_K8S_DIR=$D
IB_KUBECTL=$KUBECTL
EOF
  trap - EXIT
  echo "cluster.sh: up in $(( $(now_ms) - t0 )) ms; source $D/env" >&2
}

# take_lock: this machine's cluster lock (tools/k8s/lock.py), held by a process of this
# cluster's own (pids/lock) until down; waits while another cluster holds it
take_lock() {
  local wait=${IB_K8S_LOCK_WAIT:-1800} fifo=$D/lock.fifo line='' lf
  rm -f "$fifo" && mkfifo "$fifo"
  setsid /usr/bin/python3 "$HERE/lock.py" "$LOCK" "$wait" "$D" >"$fifo" 2>>"$D/logs/lock.log" </dev/null &
  echo $! > "$D/pids/lock"
  exec {lf}<"$fifo"
  while read -r -u "$lf" line; do
    case $line in
      waiting*) echo "cluster.sh: another cluster runs on this machine (${line#waiting }); waiting up to ${wait}s for its down" >&2 ;;
      *) break ;;
    esac
  done
  exec {lf}<&-
  rm -f "$fifo"
  if [[ $line != held ]]; then
    rm -f "$D/pids/lock"
    die "another cluster held this machine for ${wait}s (IB_K8S_LOCK_WAIT); not started"
  fi
}

# unmount_under DIR: the mounts a cluster made under its DIR, deepest first
unmount_under() {
  { grep -o " $1/[^ ]*" /proc/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# owns_lock: this DIR's cluster holds the machine's lock
# (its holder is alive and answers the lock's socket with this DIR: a pid file left by a
# killed run whose pid now names another process does not count)
owns_lock() {
  [[ -s $D/pids/lock ]] && alive "$(cat "$D/pids/lock")" || return 1
  [[ $(/usr/bin/python3 "$HERE/lock.py" --owner "$LOCK" 2>/dev/null) == "$D" ]]
}

# machine_cleanup: the machine-wide state of a cluster (only under the lock): kube-proxy's
# iptables chains, the pods' network namespaces, the bridge, the pods' (empty) cgroups
machine_cleanup() ( # a subshell: best effort, a step that finds nothing to remove must not end it
  set +e +o pipefail
  [[ -x $KBIN/kube-proxy ]] && "$KBIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  # and the kubelet's own chains (KUBE-FIREWALL in INPUT and OUTPUT, the canaries), which
  # kube-proxy leaves: every packet on this machine, loopback too, went through them
  local t rule chain
  for t in filter nat mangle; do
    iptables -t "$t" -S 2>/dev/null | grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j KUBE-' |
      while read -r rule; do eval "iptables -t $t ${rule/-A /-D }" 2>/dev/null || true; done
    for chain in $(iptables -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      iptables -t "$t" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$t" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ {print $2}'); do
      iptables -t "$t" -X "$chain" 2>/dev/null || true
    done
  done
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$ns" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  for ctl in /sys/fs/cgroup/*/kubepods; do
    [[ -d $ctl ]] && find "$ctl" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
)

# import TAR...: OCI archives into containerd's k8s.io namespace, where the kubelet finds them
import_images() {
  local tar
  for tar in "$@"; do
    ctr --address "$D/containerd/containerd.sock" -n k8s.io images import "$tar" >/dev/null \
      || die "ctr images import $tar failed"
  done
}

# alive PID: the process exists and is not a zombie
alive() { [[ -r /proc/$1/stat ]] && [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) != Z ]]; }

# stop NAME [SIGNAL]: the process group started by start(), waited for up to 10 s
stop() {
  local name=$1 sig=${2:-TERM} pid i
  [[ -s $D/pids/$name ]] || return 0
  pid=$(cat "$D/pids/$name")
  kill -"$sig" -- -"$pid" 2>/dev/null || true
  # gone, or a zombie: it is no child of ours (up's shell has exited) and PID 1 here reaps late
  for ((i = 0; i < 100; i++)); do alive "$pid" || break; sleep 0.1; done
  kill -KILL -- -"$pid" 2>/dev/null || true
  rm -f "$D/pids/$name"
}

down() {
  [[ -d $D ]] || die "$D: no such directory"
  D=$(cd "$D" && pwd)
  stop kubelet
  local sock=$D/containerd/containerd.sock
  if [[ -S $sock ]] && [[ -s $D/pids/containerd ]]; then
    # the pods' containers: stop them while containerd still knows them
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for t in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
    done
  fi
  stop kube-proxy
  # the control plane's state is thrown away with DIR: no graceful shutdown to wait for
  # (the scheduler and the API server take 5-6 s each to stop on SIGTERM)
  stop kube-scheduler KILL; stop kube-controller-manager KILL; stop kube-apiserver KILL; stop etcd KILL
  stop containerd
  # shims are daemons of their own (containerd-shim-runc-v2 -address OUR SOCKET)
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
  # mounts left under DIR (pod sandboxes, kubelet volumes, rootfs)
  unmount_under "$D"
  # the machine-wide part, only when it is this cluster's: a DIR whose up never got the
  # lock must not take down the network of the cluster that has it
  if owns_lock; then
    machine_cleanup
    stop lock
  else
    rm -f "$D/pids/lock" # not ours (never got, or a stale pid file): nothing of the machine's to touch
  fi
  echo "cluster.sh: down; logs in $D/logs" >&2
}

cmd=${1:-}; D=${2:-}
usage="usage: cluster.sh up|down DIR, cluster.sh stop|start DIR COMPONENT, or cluster.sh import DIR TAR..."
[[ -n $D ]] || die "$usage"
case $cmd in
  up) up ;;
  down) down ;;
  stop) stop "${3:?$usage}" ;;
  import) shift 2; import_images "$@" ;;
  start)
    [[ -s $D/cmds/${3:?$usage} ]] || die "no command line kept for $3 in $D/cmds"
    [[ ! -s $D/pids/$3 ]] || ! alive "$(cat "$D/pids/$3")" || die "$3 runs already"
    eval "start $3 $(cat "$D/cmds/$3")" ;;
  *) die "$usage" ;;
esac
