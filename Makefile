# Two commands do all the set-up on a fresh machine:
#   make up    - install what the runtime needs, then serve examples/tiny-moe.yaml locally through Ray Serve
#   make test  - install everything the tests need (venv, Debian's prometheus, Go-built control plane), lint, run the suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SPEC   ?= examples/tiny-moe.yaml
PYTEST_ARGS ?=

.PHONY: up test lint test-stress venv test-deps generate check-generated cluster-up cluster-down bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	@touch $(STAMP)

venv: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/moectl up -f $(SPEC)

# System pieces the tests use: Debian's prometheus/promtool and the control plane built from Go modules.
# hack/ci-setup.sh also creates/refreshes .venv, so this target does not need $(STAMP).
test-deps:
	bash hack/ci-setup.sh

# ruff with the rules in pyproject.toml ([tool.ruff]); `make test` runs it before pytest, so a lint error fails CI.
lint:
	@test -x $(VENV)/bin/ruff || $(MAKE) venv
	$(VENV)/bin/ruff check .

test: test-deps lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

# The timing-sensitive tests, STRESS_RUNS times (default 10) with every core busy (docs/development.md).
test-stress: test-deps
	bash hack/stress.sh $(PYTEST_ARGS)

generate: $(STAMP)
	$(PY) -m moe_operator.api.generate

check-generated: $(STAMP)
	$(PY) -m moe_operator.api.generate --check

cluster-up: test-deps
	@bash hack/cluster.sh up

cluster-down:
	@bash hack/cluster.sh down

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
