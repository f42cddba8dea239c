#!/usr/bin/env bash
# Run the tests marked `timing_sensitive` N times while CPU hogs keep every core busy, and say how often each
# passed. A test that only passes on a quiet machine fails CI on a busy one; this is where we find out first.
#   hack/stress.sh                 # 10 runs of -m timing_sensitive, one hog per core
#   hack/stress.sh -n 3 -k admin   # extra arguments go to pytest (after the marker selection)
# Env: STRESS_HOGS (hog processes, default nproc), STRESS_RUNS (default 10), STRESS_RUN_TIMEOUT (s per run, 1800), MOE_TEST_KUBECONFIG (reuse a cluster;
# otherwise one control plane is started here for all runs when the binaries exist, and stopped at the end).
# Output: one line per run, then per test "passed/runs", then `N passed, M failed` (test runs) on its own line.
# Exit status: 0 only when every selected test passed in every run.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS="${STRESS_RUNS:-10}"
if [[ "${1:-}" == "-n" ]]; then
  [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "error: -n needs a number of runs >= 1" >&2; exit 2; }
  RUNS="$2"; shift 2
fi
RUN_TIMEOUT="${STRESS_RUN_TIMEOUT:-1800}"   # seconds one run may take: a hung test fails its run, not the script
HOGS="${STRESS_HOGS:-$(nproc)}"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "error: no .venv: run hack/ci-setup.sh first" >&2; exit 2; }
[[ -x /usr/local/go/bin/go ]] && export PATH="$PATH:/usr/local/go/bin"
OUT="$(mktemp -d /tmp/moe-stress.XXXXXX)"
hogs=()
cluster_dir=""

cleanup() {
  for p in "${hogs[@]}"; do kill "$p" 2>/dev/null; done
  if [[ -n "$cluster_dir" ]]; then MOE_CLUSTER_DIR="$cluster_dir" bash hack/cluster.sh down >/dev/null 2>&1; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Which tests are selected (and do they need the control plane)?
"$PY" -m pytest -q --collect-only -m timing_sensitive "$@" -p no:cacheprovider >"$OUT/collect.txt" 2>&1
if ! grep -q "::" "$OUT/collect.txt"; then
  echo "error: no test marked timing_sensitive matches: $*" >&2
  tail -5 "$OUT/collect.txt" >&2
  exit 2
fi
echo "[stress] $(grep -c '::' "$OUT/collect.txt") tests x $RUNS runs, $HOGS CPU hogs; reports in $OUT" >&2

# (into a file, not a pipe: grep -q would end the pipe early and pipefail would read that as "no cluster test")
"$PY" -m pytest -q --collect-only -m "timing_sensitive and cluster" "$@" -p no:cacheprovider >"$OUT/collect-cluster.txt" 2>&1
if [[ -z "${MOE_TEST_KUBECONFIG:-}" ]] && grep -q "::" "$OUT/collect-cluster.txt"; then
  cluster_dir="$OUT/cluster"
  if kc="$(MOE_CLUSTER_DIR="$cluster_dir" bash hack/cluster.sh up 2>"$OUT/cluster-up.log")"; then
    eval "$kc"
    export MOE_TEST_KUBECONFIG="$KUBECONFIG"
    echo "[stress] one control plane for all runs: $MOE_TEST_KUBECONFIG" >&2
  else
    echo "[stress] could not start a control plane (see $OUT/cluster-up.log); each run starts its own" >&2
    cluster_dir=""
  fi
fi

for ((i = 0; i < HOGS; i++)); do
  "$PY" -c 'while True: pass' &
  hogs+=($!)
done

for ((r = 1; r <= RUNS; r++)); do
  t=$SECONDS
  CI=true timeout "$RUN_TIMEOUT" "$PY" -m pytest -q -m timing_sensitive -p no:cacheprovider --junitxml="$OUT/run-$r.xml" "$@" \
    >"$OUT/run-$r.log" 2>&1
  echo "[stress] run $r/$RUNS: exit $?, $((SECONDS - t)) s, $(tail -1 "$OUT/run-$r.log")" >&2
done

"$PY" - "$OUT" "$RUNS" <<'EOF'
import sys, glob, collections
import xml.etree.ElementTree as ET
out, runs = sys.argv[1], int(sys.argv[2])
passed, seen = collections.Counter(), collections.Counter()
for f in sorted(glob.glob(f"{out}/run-*.xml")):
    for case in ET.parse(f).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        seen[name] += 1
        if not any(c.tag in ("failure", "error", "skipped") for c in case):
            passed[name] += 1
ok = bad = 0
for name in sorted(seen):
    print(f"{passed[name]:>3}/{runs}  {name}")
    ok += passed[name]
    bad += runs - passed[name]
print(f"{ok} passed, {bad} failed")
sys.exit(0 if bad == 0 and seen else 1)
EOF
