#!/usr/bin/env bash
# Install everything a fresh Debian machine needs to run the test suite; idempotent and quick when warm.
#   1. Debian packages (prometheus, make, git, ca-certificates)   -- only what is missing; needs root or sudo
#   2. a Go toolchain >= 1.26 (the Go module proxy's golang.org/toolchain module when the local go is older)
#   3. the Python venv .venv with `pip install -e '.[all]'` (skipped when pyproject.toml is unchanged)
#   4. the Go-built control-plane binaries (hack/test-binaries.sh; cached by version outside the repo)
# Env: MOE_PYTHON (interpreter for the venv, default python3.11 or python3), MOE_SKIP_APT=1, MOE_SKIP_BINARIES=1.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
GO_MIN=1.26
GO_TOOLCHAIN_VERSION=1.26.8
step() { printf '[ci-setup %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
T0=$SECONDS

# --- 1. Debian packages
APT_PKGS=(prometheus make git ca-certificates)
if [[ "${MOE_SKIP_APT:-}" != 1 ]]; then
  missing=()
  for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
    step "apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    step "Debian packages present: ${APT_PKGS[*]}"
  fi
fi

# --- 2. Go toolchain
go_ok() { command -v go >/dev/null && [[ "$(printf '%s\n' "$GO_MIN" "$(go env GOVERSION | sed 's/^go//')" | sort -V | head -1)" == "$GO_MIN" ]]; }
if ! go_ok; then
  if ! command -v go >/dev/null; then
    [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"
  fi
  if ! go_ok; then
    if ! command -v go >/dev/null; then
      step "no go: installing Debian's golang-go to bootstrap"
      SUDO=""; [[ $(id -u) == 0 ]] || SUDO="sudo"
      DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends golang-go >&2
    fi
    arch="$(dpkg --print-architecture)"
    step "go $(go env GOVERSION) < $GO_MIN: fetching golang.org/toolchain go$GO_TOOLCHAIN_VERSION from the Go module proxy"
    dir="$(cd / && go mod download -json "golang.org/toolchain@v0.0.1-go$GO_TOOLCHAIN_VERSION.linux-$arch" \
           | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    chmod +x "$dir"/bin/* "$dir"/pkg/tool/*/* 2>/dev/null || true
    export PATH="$dir/bin:$PATH" GOROOT="$dir"
    go_ok || { echo "error: could not get Go >= $GO_MIN" >&2; exit 1; }
  fi
fi
step "go: $(go env GOVERSION)"

# --- 3. Python venv
PY="${MOE_PYTHON:-$(command -v python3.11 || command -v python3)}"
[[ -x .venv/bin/python ]] || { step "creating .venv with $PY"; "$PY" -m venv .venv; }
stamp=".venv/.moe-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  step "pip install -e '.[all]' (several minutes cold: torch, ray)"
  t=$SECONDS
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[all]' >&2
  rm -f .venv/.moe-installed-*; touch "$stamp"
  step "pip done in $((SECONDS - t)) s"
else
  step "venv up to date ($stamp)"
fi

# --- 4. control-plane binaries
if [[ "${MOE_SKIP_BINARIES:-}" != 1 ]]; then
  t=$SECONDS
  bindir="$(hack/test-binaries.sh)"
  step "binaries in $bindir ($((SECONDS - t)) s)"
fi
step "setup done in $((SECONDS - T0)) s"
