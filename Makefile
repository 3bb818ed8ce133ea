# controlplane: `make demo` (a local 4-machine cluster and the seed scenario), `make test` (the suite).
# Both install what is missing first, idempotently: Debian packages, dockerd, a venv in .venv.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := etcd-server etcd-client docker.io nginx openssh-server busybox-static iproute2 iptables curl mmdebstrap chromium
STAMP := $(VENV)/.installed
# what cp-apiserver serves at /dist/ (its default --wheelhouse): wheels and the proxy image tarball
WHEELHOUSE := build/wheelhouse
PROXY_IMAGE := local/nginx:latest

.PHONY: deps system venv dockerd images wheelhouse test lint unit faults demo demo-down bench spec clean

deps: system venv dockerd

system:
	@missing=""; \
	for pair in etcd:etcd-server etcdctl:etcd-client dockerd:docker.io nginx:nginx sshd:openssh-server busybox:busybox-static ip:iproute2 iptables:iptables curl:curl mmdebstrap:mmdebstrap chromium:chromium; do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  if ! command -v $$cmd >/dev/null 2>&1 && [ ! -x /usr/sbin/$$cmd ] && [ ! -x /usr/bin/$$cmd ] && [ ! -x /bin/$$cmd ]; then missing="$$missing $$pkg"; fi; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo ">> installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing controlplane with its test extras"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/pip install -q --upgrade pip >/dev/null
	@$(BIN)/pip install -q -e '.[test]'
	@touch $(STAMP)

dockerd:
	@if ! docker info >/dev/null 2>&1; then \
	  echo ">> starting dockerd"; \
	  (nohup dockerd >/var/log/dockerd.log 2>&1 &); \
	  for i in $$(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done; \
	  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /var/log/dockerd.log"; exit 1; }; \
	fi

images: deps
	@deploy/images/build-local

# pip wheel . (runtime dependencies only) and docker save of the proxy image; tools/wheelhouse.py
# rebuilds only when pyproject.toml, the package or the image changed
wheelhouse: venv images
	@$(BIN)/python tools/wheelhouse.py $(WHEELHOUSE) --image $(PROXY_IMAGE)

lint: venv
	$(BIN)/ruff check controlplane agent tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python tools/check_shape.py controlplane agent
	@dups=$$(find tests -name 'test_*.py' -printf '%f\n' | sort | uniq -d); \
	  if [ -n "$$dups" ]; then echo "test modules with the same basename (pytest cannot import both): $$dups"; exit 1; fi

test: deps images wheelhouse lint
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest -q tests/unit

# real etcd and cp-apiserver processes cut apart with iptables on loopback (root; skipped otherwise).
# `make test` runs them too (tests/ holds tests/faults); this runs them alone.
faults: deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/faults $(PYTEST_ARGS)

spec: venv
	$(BIN)/python -m controlplane.api.openapi > api-spec/openapi.yaml

demo: deps images wheelhouse
	$(BIN)/python -m controlplane.demo

demo-down: venv
	$(BIN)/cpctl dev down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache
