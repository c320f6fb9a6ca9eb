# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: chaos test-ray install lock audit serve demo test lint eval-smoke bench-upload bench-tus bench-status bench-libraries gpu-check clean ray-up ray-down

install: $(STAMP)

# torch goes first, pinned, so that the project's `torch>=2.10` adds nothing (a CPU build from disk);
# then exactly the versions of requirements.lock, then the project itself without resolving anything.
# `pip check` fails when pyproject.toml names a dependency the lock lacks: run `make lock`.
$(STAMP): pyproject.toml requirements.lock
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -r requirements.lock
	$(BIN)/pip install --no-deps -e '.[dev]'
	$(BIN)/pip check
	touch $(STAMP)

# Re-resolve pyproject.toml (with the dev extras) into requirements.lock; rerun after changing a dependency.
lock:
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/lock_deps.py

# Known vulnerabilities in the locked dependencies (pip-audit); fails on one that has a fixed release.
audit: install
	$(BIN)/python scripts/audit_deps.py

serve: install
	$(BIN)/python -m api

demo: install
	$(BIN)/python examples/run_demo.py

# Debian's chromium for the dashboard's browser tests (Playwright drives it; no browser download).
# Without root it only warns: the browser tests then skip, or fail when CI is set.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if ! command -v apt-get >/dev/null 2>&1; then \
	    echo "make browser: no apt-get here; install Chromium so that 'chromium' is on PATH" >&2; \
	  elif [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else \
	    echo "make browser: chromium is missing and installing it needs root (apt-get install chromium)" >&2; \
	  fi; }

# Two workers, each test file whole on one (its module fixtures built once): 12 min on 2 cores, 17 serially.
TEST_WORKERS ?= 2
test: install browser
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Sessions on a local Ray cluster (a cluster start per module, kills and retries): minutes.
test-ray: install
	$(BIN)/python -m pytest -q -m ray tests/api/test_ray_executor.py

# 10 sessions SIGKILLed at seeded moments on PostgreSQL (TEST_DATABASE_URL), each resumed to the end.
chaos: install
	$(BIN)/python -m pytest -q -m chaos -s tests/hardening/test_chaos.py

lint: install
	$(BIN)/ruff check .

eval-smoke: install
	$(BIN)/python -m evals run --suite smoke --out eval-out

bench-upload: install
	$(BIN)/python bench/upload_memory.py

bench-tus: install
	$(BIN)/python bench/tus_upload.py

bench-status: install
	$(BIN)/python bench/status_polling.py

bench-libraries: install
	$(BIN)/python bench/vs_libraries.py

gpu-check: install
	$(BIN)/python scripts/gpu_check.py

# A local Ray head for EXECUTOR=ray (then RAY_ADDRESS=127.0.0.1:$(RAY_PORT) make serve); ray-down stops
# this machine's Ray processes.
RAY_PORT ?= 6380  # not Ray's default 6379: Redis (EVENT_BUS=redis) listens there
ray-up: install
	$(BIN)/ray start --head --port=$(RAY_PORT) --include-dashboard=false --disable-usage-stats

ray-down:
	$(BIN)/ray stop

clean:
	rm -rf $(VENV) .pytest_cache eval-out test-output
