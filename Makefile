# The operator's front door. `make deploy` then `make test` on a fresh Debian 12 host (root).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
PIP   := $(VENV)/bin/pip
INVENTORY ?= inventory/local.py

.PHONY: deploy test test-tools test-hosts venv lock lint clean-venv loadtest bench

# `make loadtest`: the gated load test (docs/loadtest.md); results in loadtest-results/.
LOADTEST_ARGS ?= --users 150 --spawn-rate 25 --duration 5m
# `make bench`: every bench/ script, each printing its ranges over interleaved rounds; the
# output is kept in bench/results/NAME.txt (docs/benchmarks.md). Pick some with
# `make bench BENCHES="dal import"`.
BENCHES ?= dal import backup_compression backup restore vs_pgbench capacity

# Creates the venv only when the lock file changed since the last install. Every
# package comes from requirements/dev.lock, pinned and hashed; then this checkout.
$(VENV)/.installed: pyproject.toml requirements/dev.lock
	@command -v python3 >/dev/null || { apt-get update -qq && apt-get install -y -qq python3; }
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv; }
	python3 -m venv $(VENV)
	$(PIP) install -q --require-hashes -r requirements/dev.lock
	$(PIP) install -q --no-deps -e .
	touch $@

venv: $(VENV)/.installed

# After changing a pin in pyproject.toml: re-resolve and hash everything. dev.lock is
# the checkout's venv; host.lock is what the deploy installs on a database host,
# app.lock on an application host (the DAL alone), app-loadtest.lock on one that also
# drives the load test.
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --generate-hashes \
		--python-version 3.11 --no-header --quiet -o requirements/dev.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra ops --generate-hashes \
		--python-version 3.11 --no-header --quiet -o requirements/host.lock
	$(VENV)/bin/uv pip compile pyproject.toml --generate-hashes \
		--python-version 3.11 --no-header --quiet -o requirements/app.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra loadtest --generate-hashes \
		--python-version 3.11 --no-header --quiet -o requirements/app-loadtest.lock

deploy: venv
	$(VENV)/bin/pyinfra -y $(INVENTORY) deploy.py

# The suite checks the checkout itself with git (no secret in the repository), sniffs
# loopback traffic with tcpdump (nothing readable on the wire), decrypts age backups
# with the stock tool, injects disk faults with strace and loads the dashboard in
# headless Chromium (the headless shell alone: without recommends it starts no service):
# test-tools installs what is missing. CI's run of the deploy's own checks on a machine
# without systemd needs none of it (TEST_TOOLS= skips it there).
TEST_TOOLS ?= test-tools
test: deploy $(TEST_TOOLS)
	$(VENV)/bin/ruff check .
	@# DONNADB_MINOR_UPDATE=1: tests/ops/test_update.py may change this host's PostgreSQL
	@# packages (a partial pytest run without it skips that module).
	DONNADB_MINOR_UPDATE=1 $(VENV)/bin/pytest --durations=25 $(PYTEST_ARGS)

test-tools:
	@# One apt-get update for whatever is missing (Chromium without its recommends, which
	@# would start services).
	@need=; for tool in git tcpdump age strace; do command -v $$tool >/dev/null || need="$$need $$tool"; done; \
		command -v chromium >/dev/null || command -v chromium-headless-shell >/dev/null || \
		need="$$need chromium-headless-shell"; \
		[ -z "$$need" ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq --no-install-recommends $$need; }
	@# tests/cluster boots its own etcd and Patroni nodes: the packages' services must not
	@# start (etcd-server's would hold 127.0.0.1:2379/2380), so a policy-rc.d denies them
	@# for the install (an existing one is kept as it is).
	@command -v patroni >/dev/null && command -v etcd >/dev/null || { \
		own=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
		chmod 755 /usr/sbin/policy-rc.d; own=1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq patroni etcd-server; \
		rc=$$?; [ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; exit $$rc; }
	@# The DAL cache's tests start their own redis-server (tests/dal/redisserver.py): the
	@# package's service, passwordless on loopback, must not start, now or at boot.
	@command -v redis-server >/dev/null || { \
		own=; [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; \
		chmod 755 /usr/sbin/policy-rc.d; own=1; }; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends redis-server; \
		rc=$$?; [ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; \
		! command -v systemctl >/dev/null || systemctl mask -q redis-server.service; \
		exit $$rc; }

# The fleet suite: fresh Debian 12 hosts with systemd booted here (debootstrap +
# systemd-nspawn, tests/hosts), a database host and an application host on their own
# loopback addresses, deployed over SSH (tests/fleet). Needs root; ~10 minutes.
test-hosts: venv
	@command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }
	@command -v systemd-nspawn >/dev/null || { apt-get update -qq && apt-get install -y -qq systemd-container; }
	@command -v tcpdump >/dev/null || { apt-get update -qq && apt-get install -y -qq tcpdump; }
	DONNADB_FLEET=1 $(VENV)/bin/pytest tests/fleet

# Seeds DB_NAME once (the default scale; `seed` skips a scale already loaded).
loadtest: deploy
	$(VENV)/bin/donnactl loadtest seed
	$(VENV)/bin/donnactl loadtest run $(LOADTEST_ARGS)

# vs_pgbench and capacity read the seeded chats of DB_NAME.
bench: deploy
	$(VENV)/bin/donnactl loadtest seed
	mkdir -p bench/results
	set -o pipefail; for b in $(BENCHES); do \
		echo "== bench/$$b.py"; $(PY) bench/$$b.py | tee bench/results/$$b.txt || exit 1; \
	done

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/squawk --config=schema/.squawk.toml schema/migrations/*.sql

clean-venv:
	rm -rf $(VENV)
