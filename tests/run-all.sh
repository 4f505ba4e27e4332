#!/usr/bin/env bash
# The whole test suite, as `make test` and CI run it (after tools/setup.sh):
#   1. release build (RelWithDebInfo, jemalloc): unit + integration tests under ctest
#   2. ASan+UBSan build: the same tests, with leak checking (label release-only runs in the
#      release build alone, asan-only in this one alone)
#   3. TSan build: the tests of the proxy's shared lock-free state (label tsan)
#   4. clang libFuzzer build: every fuzz target replays its corpus and fuzzes a bounded
#      number of runs
# Ends with one line "N passed, N failed" over all runs; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
passed=0
failed=0
status=0

# run_phase NAME BUILD_DIR CMAKE_ARGS... -- CTEST_ARGS...
run_phase() {
  local name=$1 dir=$2
  shift 2
  local cargs=() targs=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do cargs+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  targs=("$@")
  echo "=== $name: configure and build ($dir)"
  mkdir -p "$dir"
  if ! cmake -S . -B "$dir" "${cargs[@]}" >"$dir/configure.log" 2>&1; then
    cat "$dir/configure.log"
    echo "=== $name: configure FAILED"
    failed=$((failed + 1)); status=1; return
  fi
  if ! cmake --build "$dir" -j "$jobs" >"$dir/build.log" 2>&1; then
    grep -E "error|Error" -A5 "$dir/build.log" | head -60
    echo "=== $name: build FAILED"
    failed=$((failed + 1)); status=1; return
  fi
  echo "=== $name: ctest"
  (cd "$dir" && ctest --output-on-failure "${targs[@]}") | tee "$dir/ctest.log"
  local rc=${PIPESTATUS[0]}
  local line
  line=$(grep -E "tests passed, [0-9]+ tests failed out of [0-9]+" "$dir/ctest.log" | tail -n 1)
  if [ -n "$line" ]; then
    local f t
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/')
    t=$(echo "$line" | sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/')
    passed=$((passed + t - f)); failed=$((failed + f))
  else
    failed=$((failed + 1))
  fi
  [ "$rc" -eq 0 ] || status=1
}

# One real Kubernetes for every test that needs one (tests/integration/k8s_*.sh read
# IB_K8S_ENV), up for the whole run and taken down at the end, however the run ends.
k8s_dir=$(mktemp -d "${TMPDIR:-/tmp}/ib-k8s.XXXXXX")
# Down, and its state (images, containers, etcd: about 400 MB) removed; the logs stay.
k8s_down() {
  bash tools/k8s/cluster.sh down "$k8s_dir" >/dev/null 2>&1 || true
  rm -rf "${k8s_dir:?}"/{containerd,kubelet,etcd} 2>/dev/null || true
}
trap k8s_down EXIT
echo "=== kubernetes: bringing up a single-node cluster ($k8s_dir)"
k8s_t0=$(date +%s%N)
if bash tools/k8s/cluster.sh up "$k8s_dir" >"$k8s_dir/up.log" 2>&1; then
  export IB_K8S_ENV=$k8s_dir/env
  echo "=== kubernetes: up in $((($(date +%s%N) - k8s_t0) / 1000000)) ms"
else
  cat "$k8s_dir/up.log"
  echo "=== kubernetes: cluster.sh up FAILED; the Kubernetes tests will try on their own"
fi

run_phase "release" build -DCMAKE_BUILD_TYPE=RelWithDebInfo -- -L "unit|integration" -LE asan-only
run_phase "asan+ubsan" build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIB_SANITIZE_ADDRESS=ON -- -L "unit|integration" -LE release-only
run_phase "tsan" build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIB_SANITIZE_THREAD=ON -- -L tsan
if command -v clang >/dev/null; then
  CC=clang CXX=clang++ run_phase "fuzz" build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIB_FUZZ=ON -- -L fuzz
else
  echo "=== fuzz: clang not found (tools/setup.sh installs it)"; failed=$((failed + 1)); status=1
fi

echo
echo "ibrain test suite: $passed passed, $failed failed"
exit $status
