#!/usr/bin/env bash
# Generates tools/k8s/wrapper/go.mod + tools.go for a pinned k8s.io/kubernetes version: a
# replace for every k8s.io staging module its go.mod requires at v0.0.0, at the matching
# published v0.N.M; then `go mod tidy` in the wrapper writes go.sum.
# Network only (go mod download / go mod tidy); compiles nothing.
# Usage: gen-wrapper.sh [K8S_VERSION] [OUTDIR]
set -euo pipefail
K8S_VERSION=${1:-v1.37.2}
OUT=${2:-$(dirname "$(readlink -f "$0")")/wrapper}
export GOMODCACHE=${GOMODCACHE:-/root/.cache/ibrain/go/mod}
export GOCACHE=${GOCACHE:-/root/.cache/ibrain/go/build}
export GOFLAGS=-mod=mod GOTOOLCHAIN=local
STAGING_VERSION="v0.${K8S_VERSION#v1.}"          # v1.37.2 -> v0.37.2
GOMOD_FILE=$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
GO_DIRECTIVE=$(awk '$1=="go"{print $2; exit}' "$GOMOD_FILE")
mkdir -p "$OUT"
# every k8s.io/* module that kubernetes' go.mod requires at v0.0.0 (= a staging module)
mapfile -t STAGING < <(awk '$1 ~ /^k8s\.io\// && $2=="v0.0.0"{print $1} $1=="require" && $2 ~ /^k8s\.io\// && $3=="v0.0.0"{print $2}' "$GOMOD_FILE" | sort -u)
{
  echo "module ibrain.local/k8s-wrapper"
  echo
  echo "go ${GO_DIRECTIVE}"
  echo
  echo "godebug default=go${GO_DIRECTIVE%.*}"
  echo
  echo "require k8s.io/kubernetes ${K8S_VERSION}"
  echo
  echo "replace ("
  for m in "${STAGING[@]}"; do echo "	$m => $m ${STAGING_VERSION}"; done
  echo ")"
} > "$OUT/go.mod"
cat > "$OUT/tools.go" <<'GO'
//go:build tools

// Package tools pins the Kubernetes commands built by build-k8s.sh.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kubectl" // optional (BUILD_KUBECTL=1): the kubectl on PATH here is v1.32.4
)
GO
echo "staging modules replaced: ${#STAGING[@]} -> ${STAGING_VERSION}; go ${GO_DIRECTIVE}" >&2
