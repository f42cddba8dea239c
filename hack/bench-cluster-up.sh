#!/usr/bin/env bash
# Measure `hack/cluster.sh up` wall time from warm binaries (median of N runs, default 3) and check that
# `hack/cluster.sh down` leaves no process of ours behind (recorded PIDs gone, and no process left whose
# working directory is the bench's state dir; other people's clusters on the same machine are not counted).
#   hack/bench-cluster-up.sh [N]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
N="${1:-3}"
export MOE_CLUSTER_DIR
MOE_CLUSTER_DIR="$(mktemp -d /tmp/moe-bench-cluster.XXXXXX)/state"
trap '"$HERE/cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$(dirname "$MOE_CLUSTER_DIR")"' EXIT

ours() {  # processes started for this bench: every component runs with the state dir as its working dir
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/cwd" 2>/dev/null)" == "$MOE_CLUSTER_DIR"* ]] && echo "${p#/proc/} $(tr '\0' ' ' < "$p/cmdline" | cut -c1-120)"
  done
  return 0
}
before="$(ours | wc -l)"
times=()
for i in $(seq "$N"); do
  t0=$(date +%s.%N)
  line="$("$HERE/cluster.sh" up 2>"/tmp/moe-bench-up-$i.log")"
  t1=$(date +%s.%N)
  [[ "$line" == "export KUBECONFIG="* && "$(printf '%s\n' "$line" | wc -l)" == 1 ]] \
    || { echo "error: up printed: $line" >&2; exit 1; }
  secs=$(python3 -c "print(round($t1 - $t0, 2))")
  pids="$(python3 -c "import json,sys; print(' '.join(str(r['pid']) for r in json.load(open(sys.argv[1]))['pids'].values()))" "$MOE_CLUSTER_DIR/state.json")"
  "$HERE/cluster.sh" down 2>/dev/null
  left=0; for p in $pids; do [[ -d /proc/$p ]] && [[ "$(awk '{print $3}' /proc/$p/stat)" != Z ]] && left=$((left + 1)); done
  stray="$(( $(ours | wc -l) - before ))"
  echo "run $i: up ${secs} s; recorded processes left after down: $left; processes left in the state dir: $stray"
  ((left == 0 && stray <= 0)) || { echo "error: down left processes behind" >&2; ours >&2; exit 1; }
  times+=("$secs")
done
median=$(printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
echo "cluster.sh up: median ${median} s of $N runs (${times[*]}); down left nothing behind"
