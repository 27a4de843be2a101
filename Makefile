# Detour — developer entry points. `make run` and `make test` set up .venv themselves.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test check unit integration operator chart bench soak crds lint clean venv cluster cluster-build cluster-down cluster-test

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python -m detour_proxy.devrun

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The fast tier (< 60 s): unit tests and the attempt engine over a scripted fake transport.
check: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/unit tests/engine

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest -q tests/integration

operator: $(STAMP)
	$(BIN)/python -m pytest -q tests/operator

chart: $(STAMP)
	$(BIN)/python -m pytest -q tests/chart

# ruff (pyflakes, pycodestyle errors, bugbear) on all Python; mypy on the proxy, strict on policy/,
# adapters/ and engine/ (pyproject [tool.mypy]). CI runs it before the tests.
lint: $(STAMP)
	$(BIN)/ruff check proxy operator tests bench
	$(BIN)/mypy -p detour_proxy

crds: $(STAMP)
	$(BIN)/python -m detour_operator.crdgen --write

bench: $(STAMP)
	$(BIN)/python bench/run.py

# Long versions of every resilience scenario (30 s outages/storms, 100k-request soak); ~5 min on 2 cores.
soak: $(STAMP)
	DETOUR_SOAK=1 $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/resilience

# A real control plane on 127.0.0.1 (etcd, kube-apiserver, kube-controller-manager; kubectl and helm),
# built from the Go modules pinned in hack/cluster/go.mod and cached in ~/.cache/detour (first build
# ~7 min on 2 cores, then ~30 s when the pins change). `make cluster` is idempotent; `make cluster-down` stops it and deletes .cluster/.
cluster-build:
	hack/cluster/build.sh

cluster:
	hack/cluster/up.sh

cluster-down:
	hack/cluster/down.sh

cluster-test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/cluster

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
