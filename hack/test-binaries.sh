#!/usr/bin/env bash
# Build the real control-plane binaries the tests run (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, KubeRay's ray-operator, helm) with the ordinary `go` command from the
# Go module proxy, cache them by version outside the repo and reuse them.
#
# Output: progress on stderr; the last line on stdout is the directory holding all binaries.
#
# Env:
#   MOE_TEST_BIN_CACHE   cache root (default ~/.cache/moe-operator/bin)
#   MOE_TEST_BINARIES    a directory that already holds all the binaries: used as is, nothing is built
#   KUBEBUILDER_ASSETS   envtest convention (etcd, kube-apiserver, kubectl): those found there are not built
#   MOE_GO_PARALLEL      go build -p (default 2, so a 2-core machine stays usable)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$HERE/versions.env"

CACHE="${MOE_TEST_BIN_CACHE:-$HOME/.cache/moe-operator/bin}"
PAR="${MOE_GO_PARALLEL:-2}"
BUILD="$CACHE/.build"
ALL=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok ray-operator helm)
K8S_MINOR="${K8S_VERSION#v}"; K8S_MINOR="${K8S_MINOR#*.}"; K8S_MINOR="${K8S_MINOR%%.*}"

log() { printf '[test-binaries %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

have_all() {  # have_all DIR BIN...: true when DIR holds every named executable
  local d="$1"; shift
  [[ -n "$d" && -d "$d" ]] || return 1
  local b; for b in "$@"; do [[ -x "$d/$b" ]] || return 1; done
}

if [[ -n "${MOE_TEST_BINARIES:-}" ]]; then
  if have_all "$MOE_TEST_BINARIES" "${ALL[@]}"; then
    log "using MOE_TEST_BINARIES=$MOE_TEST_BINARIES as is"
    echo "$MOE_TEST_BINARIES"; exit 0
  fi
  log "MOE_TEST_BINARIES=$MOE_TEST_BINARIES lacks some of: ${ALL[*]}; building what is missing"
fi

command -v go >/dev/null || { echo "error: go not found on PATH (need Go >= 1.26 for Kubernetes $K8S_VERSION)" >&2; exit 2; }
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -p=$PAR" GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
mkdir -p "$CACHE" "$BUILD"

timed() {  # timed NAME CMD...: run CMD, log how long it took
  local name="$1"; shift; local t0=$SECONDS
  log "$name: building ..."
  "$@"
  log "$name: done in $((SECONDS - t0)) s"
}

# A binary may come from MOE_TEST_BINARIES or KUBEBUILDER_ASSETS instead of being built.
external() {  # external BIN: print a directory outside the cache holding BIN, if any
  local d; for d in "${MOE_TEST_BINARIES:-}" "${KUBEBUILDER_ASSETS:-}"; do
    if [[ -n "$d" && -x "$d/$1" ]]; then echo "$d"; return 0; fi
  done
  return 1
}

moddir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }

build_k8s() {
  local out="$CACHE/k8s-$K8S_VERSION" w="$BUILD/k8s-$K8S_VERSION" y="${K8S_VERSION#v1.}"
  local need=() b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    [[ -x "$out/$b" ]] || external "$b" >/dev/null || need+=("$b")
  done
  ((${#need[@]})) || { log "kubernetes $K8S_VERSION: cached"; return 0; }
  mkdir -p "$w" "$out.tmp"
  local gomod; gomod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  # k8s.io/kubernetes points its staging modules at ./staging; point them at their published v0.Y.Z instead.
  {
    echo "module moe-operator.local/k8s-binaries"
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo "require k8s.io/kubernetes $K8S_VERSION"
    sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 v0.'"$y"'#p' "$gomod"
  } > "$w/go.mod"
  log "kubernetes: $(grep -c '^replace' "$w/go.mod") staging modules replaced by v0.$y"
  local ld="-s -w" p
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
  done
  (cd "$w"
   for b in "${need[@]}"; do
     local pkg="k8s.io/kubernetes/cmd/$b"
     go get -tool "$pkg@$K8S_VERSION" >&2
     timed "$b $K8S_VERSION" go build -mod=mod -trimpath -tags=selinux,notest,grpcnotrace -ldflags "$ld" -o "$out.tmp/$b" "$pkg"
   done)
  mkdir -p "$out"; mv "$out.tmp"/* "$out/"; rmdir "$out.tmp"
}

build_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION" w="$BUILD/etcd-$ETCD_VERSION"
  [[ -x "$out/etcd" ]] || external etcd >/dev/null && { log "etcd: cached or provided"; return 0; }
  mkdir -p "$w" "$out"
  (cd "$w"
   [[ -f go.mod ]] || go mod init moe-operator.local/etcd-binary >&2
   go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
   timed "etcd $ETCD_VERSION" go build -mod=mod -trimpath \
     -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$ETCD_VERSION" -o "$out/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$out/etcd.tmp" "$out/etcd"
}

build_install() {  # build_install NAME VERSION PKG@VER [LDFLAGS]: go install into a versioned dir
  local name="$1" ver="$2" pkg="$3" ld="${4:-}" out="$CACHE/$1-$2"
  [[ -x "$out/$name" ]] && { log "$name $ver: cached"; return 0; }
  mkdir -p "$out.tmp"
  timed "$name $ver" env GOBIN="$out.tmp" go install -trimpath -ldflags "-s -w $ld" "$pkg"
  mkdir -p "$out"; mv "$out.tmp"/* "$out/"; rmdir "$out.tmp"
}

T0=$SECONDS
log "cache: $CACHE (go build -p=$PAR)"
build_etcd
build_install kwok "$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
KR="$CACHE/ray-operator-$KUBERAY_VERSION"
if [[ ! -x "$KR/ray-operator" ]]; then
  mkdir -p "$KR.tmp"
  timed "ray-operator $KUBERAY_VERSION" env GOBIN="$KR.tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION"
  mkdir -p "$KR"; mv "$KR.tmp/ray-operator" "$KR/ray-operator"; rm -rf "$KR.tmp"
else log "ray-operator $KUBERAY_VERSION: cached"; fi
build_k8s
build_install helm "$HELM_VERSION" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$K8S_MINOR"

# One directory of symlinks named by every version, so a version bump never reuses a stale set.
SET="$CACHE/stack-k8s$K8S_VERSION-etcd$ETCD_VERSION-kwok$KWOK_VERSION-kuberay$KUBERAY_VERSION-helm$HELM_VERSION"
mkdir -p "$SET"
src_of() {
  case "$1" in
    etcd) echo "$CACHE/etcd-$ETCD_VERSION" ;;
    kube-*|kubectl) echo "$CACHE/k8s-$K8S_VERSION" ;;
    kwok) echo "$CACHE/kwok-$KWOK_VERSION" ;;
    ray-operator) echo "$CACHE/ray-operator-$KUBERAY_VERSION" ;;
    helm) echo "$CACHE/helm-$HELM_VERSION" ;;
  esac
}
for b in "${ALL[@]}"; do
  d="$(external "$b" || src_of "$b")"
  ln -sfn "$d/$b" "$SET/$b"
  [[ -x "$SET/$b" ]] || { echo "error: $b missing after build (looked in $d)" >&2; exit 1; }
done
log "all binaries ready in $((SECONDS - T0)) s"
echo "$SET"
