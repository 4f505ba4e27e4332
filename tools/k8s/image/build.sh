#!/usr/bin/env bash
# ibrain's container images, built on this machine without a registry: each is FROM scratch
# with its binaries (stripped), the shared libraries they link (as ldd finds them) and the
# loader, a /tmp, and a non-root user (65532). Written as OCI archives for
# `ctr images import` (tools/k8s/cluster.sh imports them); tools/k8s/Dockerfile builds the
# same images for users with a registry.
#
#   image/build.sh BUILD_DIR [TAG [OUT_DIR]]   (TAG default local; OUT_DIR default
#                                               ~/.cache/ibrain/k8s/images)
# The tag tells builds apart (the suite's sanitizer build makes :asan images).
#   image/build.sh --infra [OUT_DIR]             the test cluster's own: pause and CoreDNS
#                                               (tools/k8s/cluster.sh)
#
# Images (pause is always :local):
#   ibrain.local/pause           the pod sandbox (image/pause.c, static)
#   ibrain.local/ib-manager      ib-manager + ib-mock-engine: one workload replica
#   ibrain.local/ibrain          the router
#   ibrain.local/ib-orchestrator the REST control plane (+ ibctl)
#   ibrain.local/ib-clusterd     the cluster server
#   ibrain.local/ib-redis        Debian's redis-server and redis-cli, and busybox (the Helm
#                                chart's start scripts): Redis and Sentinel for the chart
# and with --infra, tag :local:
#   ibrain.local/coredns         CoreDNS (tools/k8s/build.sh builds it), static
# Rebuilt only when a binary changed (a stamp of their hashes beside each archive).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ${1:-} == --infra ]]; then
  B=""; OUT=${2:-${IBRAIN_K8S_CACHE:-$HOME/.cache/ibrain/k8s}/images}
else
  B=$(cd "${1:?usage: build.sh BUILD_DIR [TAG [OUT_DIR]]}" && pwd)
  TAG=${2:-local}
  OUT=${3:-${IBRAIN_K8S_CACHE:-$HOME/.cache/ibrain/k8s}/images}
fi
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image NAME ENTRYPOINT BINARY...: one image of the binaries (the first is the entrypoint)
image() {
  local name=$1 entry=$2 links=${LINKS:-}; shift 2
  local file=$name-$TAG stamp="$OUT/$name-$TAG.stamp" want
  want=$(sha256sum "$@" "$HERE/build.sh" "$HERE/oci_archive.py" | sha256sum | cut -c1-64)
  if [[ -s $OUT/$file.tar && -s $stamp && $(cat "$stamp") == "$want" ]]; then
    return 0
  fi
  local root=$work/$name
  rm -rf "$root"
  mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/bin"
  chmod 1777 "$root/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
  local bin lib
  for bin in "$@"; do
    local dest=$root/usr/local/bin/$(basename "$bin")
    [[ $(basename "$bin") == busybox ]] && dest=$root/bin/busybox
    install -m 0755 "$bin" "$dest"
    strip --strip-unneeded "$dest"
    # the libraries it links and the loader, at the paths the loader looks in
    for lib in $(ldd "$bin" 2>/dev/null | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      [[ -e $root$lib ]] && continue
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
      strip --strip-unneeded "$root$lib" 2>/dev/null || true
    done
  done
  # busybox applets the scripts call, as links to it
  for l in $links; do ln -s busybox "$root/bin/$l"; done
  python3 "$HERE/oci_archive.py" --name "ibrain.local/$name:$TAG" --rootfs "$root" --out "$OUT/$file.tar" \
    --entrypoint "[\"$entry\"]" >/dev/null
  echo "$want" > "$stamp"
  echo "image ibrain.local/$name:$TAG: $(du -k "$OUT/$file.tar" | cut -f1) KiB compressed, $(du -sk "$root" | cut -f1) KiB unpacked" >&2
}

# the pause image: one static binary
pause_root=$work/pause-bin
mkdir -p "$pause_root"
cc -O2 -static -Wall -Wextra -Werror -o "$pause_root/pause" "$HERE/pause.c"
strip "$pause_root/pause"
if [[ ! -s $OUT/pause.tar ]] || ! cmp -s "$OUT/pause.stamp" <(sha256sum "$HERE/pause.c" "$HERE/oci_archive.py" | sha256sum); then
  mkdir -p "$work/pause/"
  cp "$pause_root/pause" "$work/pause/pause"
  python3 "$HERE/oci_archive.py" --name ibrain.local/pause:local --rootfs "$work/pause" --out "$OUT/pause.tar" \
    --entrypoint '["/pause"]' >/dev/null
  sha256sum "$HERE/pause.c" "$HERE/oci_archive.py" | sha256sum > "$OUT/pause.stamp"
  echo "image ibrain.local/pause:local: $(du -k "$OUT/pause.tar" | cut -f1) KiB compressed" >&2
fi

if [[ -z $B ]]; then # --infra: CoreDNS too
  CACHE=${IBRAIN_K8S_CACHE:-$HOME/.cache/ibrain/k8s}
  coredns=$(ls -d "$CACHE"/bin/coredns-*/coredns 2>/dev/null | sort -V | tail -n 1)
  [[ -x $coredns ]] || { echo "image/build.sh: no CoreDNS in $CACHE/bin (run tools/k8s/build.sh)" >&2; exit 1; }
  TAG=local
  image coredns /usr/local/bin/coredns "$coredns"
  exit 0
fi
image ib-manager /usr/local/bin/ib-manager "$B/controlplane/ib-manager" "$B/tools/ib-mock-engine"
image ibrain /usr/local/bin/ibrain "$B/dataplane/ibrain"
image ib-orchestrator /usr/local/bin/ib-orchestrator "$B/controlplane/ib-orchestrator" "$B/controlplane/ibctl"
image ib-clusterd /usr/local/bin/ib-clusterd "$B/controlplane/ib-clusterd"
LINKS="sh hostname seq head" image ib-redis /usr/local/bin/redis-server /usr/bin/redis-server /usr/bin/redis-cli \
  /bin/busybox
