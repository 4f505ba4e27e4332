# The Kubernetes tests' harness (sourced after tests/lib/proc.sh):
#   - the cluster: the suite's (IB_K8S_ENV, from tests/run-all.sh) or, run alone, one this
#     test brings up in $IB_TMP/k8s and takes down at exit (tools/k8s/cluster.sh);
#   - a namespace of the test's own ($ns), deleted at exit;
#   - k ARGS...                    kubectl v1.37 (the one tools/k8s/build.sh built) on it;
#   - k8s_images TAG NAME...       this build's images (tools/k8s/image/build.sh) under TAG,
#                                  the named ones imported into the node's containerd;
#   - wait_until SECS WHAT 'COND'  (tests/lib/proc.sh)

if [ -z "${IB_K8S_ENV:-}" ]; then
  bash "$IB_SRC/tools/k8s/cluster.sh" up "$IB_TMP/k8s" >"$IB_TMP/cluster-up.log" 2>&1 || {
    cat "$IB_TMP/cluster-up.log"
    bash "$IB_SRC/tools/k8s/cluster.sh" down "$IB_TMP/k8s" >/dev/null 2>&1
    ib_fail "cluster.sh up"
  }
  IB_K8S_ENV=$IB_TMP/k8s/env
  ib_k8s_own_cluster=1
fi
# shellcheck disable=SC1090
source "$IB_K8S_ENV"
export KUBECONFIG
k() { "$IB_KUBECTL" "$@"; }
ns="ibt-$$-$RANDOM"
ib_k8s_cleanup() {
  local rc=$?
  set +e # a failing step here must not skip stopping the test's processes
  [ -n "${ib_k8s_before_exit:-}" ] && eval "$ib_k8s_before_exit"
  k delete namespace "$ns" --wait=false >/dev/null 2>&1 || true
  [ -n "${ib_k8s_own_cluster:-}" ] && bash "$IB_SRC/tools/k8s/cluster.sh" down "$IB_TMP/k8s" >/dev/null 2>&1
  (exit "$rc") # ib__cleanup reads the test's status from $? (errexit is off: this does not exit)
  ib__cleanup
}
trap ib_k8s_cleanup EXIT
k create namespace "$ns" >/dev/null

k8s_images() {
  local tag=$1 name
  shift
  bash "$IB_SRC/tools/k8s/image/build.sh" "$IB_BUILD" "$tag" "$IB_TMP/images" 2>>"$IB_TMP/images.log" ||
    ib_fail "image build: $(cat "$IB_TMP/images.log")"
  for name in "$@"; do
    bash "$IB_SRC/tools/k8s/cluster.sh" import "$IB_K8S_DIR" "$IB_TMP/images/$name-$tag.tar"
  done
}
