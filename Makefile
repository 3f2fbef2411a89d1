# Two commands matter: `make demo` and `make test`. Both set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean mutation redis redis-server

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,bench,redis]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/ionn-demo

# The suite and the mutation check share one calibration of this machine (made by the first
# test that needs it, in a directory of this run's own).
test: $(STAMP) lint typecheck redis-server
	@costs=$$(mktemp -d) && trap 'rm -rf "$$costs"' EXIT && \
	IONN_TEST_COST_MODEL_DIR="$$costs" $(BIN)/python -m pytest -q -p no:cacheprovider && \
	$(BIN)/python tests/mutation/run.py --cost-model-dir "$$costs"

# Each deliberate bug of tests/mutation/table.py must make its tests fail (RELIABILITY.md).
mutation: $(STAMP)
	$(BIN)/python tests/mutation/run.py

# The Redis store's tests start redis-server processes of their own (Debian's package);
# as root on a machine with apt-get it is installed here, elsewhere those tests skip.
redis-server:
	@command -v redis-server >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 \
		|| (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
		|| echo "redis-server unavailable: the Redis store tests will skip"

# A Redis for local use of `ionn-server --store redis://127.0.0.1:$(REDIS_PORT)/0`: runs in the
# foreground with its data (append-only file) under $(REDIS_DIR); Ctrl-C stops it.
REDIS_PORT ?= 6379
REDIS_DIR ?= .redis
redis: redis-server
	mkdir -p $(REDIS_DIR)
	redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --dir $(abspath $(REDIS_DIR)) \
		--save "" --appendonly yes --appendfsync everysec --maxmemory-policy noeviction

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy src

bench: $(STAMP)
	$(BIN)/python bench/codec.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
