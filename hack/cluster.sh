#!/usr/bin/env bash
# Start/stop a real Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kwok fake accelerator nodes, KubeRay CRDs and ray-operator).
#   hack/cluster.sh up      # progress on stderr; stdout is exactly one line: export KUBECONFIG=<path>
#   hack/cluster.sh down    # stops exactly the PIDs `up` recorded in the state dir
#   hack/cluster.sh status
# Env: MOE_CLUSTER_DIR (state dir, default ~/.cache/moe-operator/cluster), MOE_TEST_BINARIES, KUBEBUILDER_ASSETS,
#      MOE_TEST_BIN_CACHE (see hack/test-binaries.sh). Usage: eval "$(hack/cluster.sh up)"
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${MOE_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$HERE/../.venv/bin/python" ]]; then PY="$HERE/../.venv/bin/python"; else PY="python3"; fi
fi
exec "$PY" "$HERE/k8s_stack.py" "$@"
