#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, etcd and etcdctl
# from source fetched through the Go module proxy, into a cache keyed by version.
# Idempotent: a binary already built for that version is not rebuilt.
#
# Cold, on the project's 2-core VM: 13 min for the four server commands, etcd and etcdctl
# (2026-11-30, run at nice 19 beside the test suite) plus a few minutes for kubectl, about
# 1 GB of module cache; warm: a check of seven files. tools/setup.sh runs it.
#
# Needs: Go >= 1.26.0 (go directive of k8s.io/kubernetes v1.37.2 and etcd v3.7.3), network to
# the Go module proxy on a cold module cache, ~1 GB module cache, a few GB of build cache.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_WRAPPER=${K8S_WRAPPER:-$HERE/wrapper}        # go.mod + go.sum + tools.go
ETCD_WRAPPER=${ETCD_WRAPPER:-$HERE/etcd-wrapper}  # go.mod + go.sum + tools.go
CACHE=${IBRAIN_K8S_CACHE:-/root/.cache/ibrain/k8s}
K8S_OUT=$CACHE/bin/kubernetes-$K8S_VERSION
ETCD_OUT=$CACHE/bin/etcd-$ETCD_VERSION

export GOMODCACHE=${GOMODCACHE:-/root/.cache/ibrain/go/mod}
export GOCACHE=${GOCACHE:-/root/.cache/ibrain/go/build}
export GOTOOLCHAIN=local            # never download another toolchain
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0                # upstream builds apiserver/kcm/scheduler static; kubelet too here

die() { echo "build-k8s.sh: $*" >&2; exit 1; }
command -v go >/dev/null || die "go not found on PATH"

# --- toolchain check -------------------------------------------------------------------
need_go=1.26.0
have_go=$(go env GOVERSION); have_go=${have_go#go}
[[ $(printf '%s\n%s\n' "$need_go" "$have_go" | sort -V | head -1) == "$need_go" ]] \
  || die "go $have_go is older than the go $need_go directive of k8s.io/kubernetes $K8S_VERSION"

# --- wrapper sanity: the committed go.mod must pin the requested versions --------------
grep -q "^require k8s.io/kubernetes $K8S_VERSION\$" "$K8S_WRAPPER/go.mod" \
  || die "$K8S_WRAPPER/go.mod does not require k8s.io/kubernetes $K8S_VERSION (regenerate it with gen-wrapper.sh + go mod tidy)"
grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION\$" "$ETCD_WRAPPER/go.mod" \
  || die "$ETCD_WRAPPER/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION"

# --- kubernetes -------------------------------------------------------------------------
# kubectl too: Debian's is v1.32, five minors behind (the supported skew is one)
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
missing=()
for c in "${K8S_CMDS[@]}"; do [[ -x $K8S_OUT/$c ]] || missing+=("k8s.io/kubernetes/cmd/$c"); done
if ((${#missing[@]})); then
  mkdir -p "$K8S_OUT"
  tmp=$(mktemp -d "$K8S_OUT/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  ver=${K8S_VERSION#v}; major=${ver%%.*}; minor=${ver#*.}; minor=${minor%%.*}
  # build date = the release's publication time on the proxy (reproducible across machines)
  date=$(cd "$K8S_WRAPPER" && go list -m -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' k8s.io/kubernetes)
  x=""
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    x+=" -X '$pkg.gitVersion=$K8S_VERSION' -X '$pkg.gitMajor=$major' -X '$pkg.gitMinor=$minor'"
    x+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=${date:-1970-01-01T00:00:00Z}'"
  done
  echo "building ${missing[*]} ($K8S_VERSION) -> $K8S_OUT" >&2
  # one go build for all four: shared packages compile once; -o DIR/ names each binary
  # after its package (kube-apiserver, ...). Tags as in upstream hack/lib/golang.sh.
  (cd "$K8S_WRAPPER" && go build -trimpath \
      -tags "selinux,notest,grpcnotrace" \
      -ldflags "-s -w$x" \
      -o "$tmp/" "${missing[@]}")
  for p in "${missing[@]}"; do c=${p##*/}; mv -f "$tmp/$c" "$K8S_OUT/$c"; done
  rm -rf "$tmp"; trap - EXIT
fi

# --- etcd -----------------------------------------------------------------------------------
# The etcd server's main package is the root of module go.etcd.io/etcd/server/v3 (main.go ->
# etcdmain.Main); go.etcd.io/etcd/v3 (root module) holds only dummy.go. Binary names must be
# given explicitly: -o DIR/ would name them "server" and "etcdctl".
build_etcd() { # build_etcd NAME PACKAGE
  [[ -x $ETCD_OUT/$1 ]] && return 0
  mkdir -p "$ETCD_OUT"
  echo "building $2 ($ETCD_VERSION) -> $ETCD_OUT/$1" >&2
  (cd "$ETCD_WRAPPER" && go build -trimpath \
      -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" \
      -o "$ETCD_OUT/.$1.tmp" "$2")
  mv -f "$ETCD_OUT/.$1.tmp" "$ETCD_OUT/$1"
}
build_etcd etcd    go.etcd.io/etcd/server/v3
build_etcd etcdctl go.etcd.io/etcd/etcdctl/v3

# --- helm and CoreDNS: modules without replace directives, so go install MODULE@VERSION ----
HELM_VERSION=${HELM_VERSION:-v4.3.1}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
HELM_OUT=$CACHE/bin/helm-$HELM_VERSION
COREDNS_OUT=$CACHE/bin/coredns-$COREDNS_VERSION
go_install() { # go_install OUT_DIR NAME PACKAGE@VERSION
  [[ -x $1/$2 ]] && return 0
  mkdir -p "$1"
  echo "building $3 -> $1/$2" >&2
  GOFLAGS=-buildvcs=false GOBIN="$1/.tmp" go install -trimpath -ldflags "-s -w" "$3"
  mv -f "$1/.tmp/$2" "$1/$2"
  rmdir "$1/.tmp"
}
go_install "$HELM_OUT" helm "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
go_install "$COREDNS_OUT" coredns "github.com/coredns/coredns@$COREDNS_VERSION"

# --- report ---------------------------------------------------------------------------------
"$K8S_OUT/kube-apiserver" --version
"$K8S_OUT/kubelet" --version
"$ETCD_OUT/etcd" --version | sed -n 1p  # sed reads all: head would SIGPIPE etcd under pipefail
echo "K8S_BIN=$K8S_OUT"
echo "ETCD_BIN=$ETCD_OUT"
"$HELM_OUT/helm" version --short
"$COREDNS_OUT/coredns" -version | sed -n 1p
echo "HELM_BIN=$HELM_OUT"
echo "COREDNS_BIN=$COREDNS_OUT"
