# golive: `make run` starts the server on its embedded defaults; `make test` checks everything.
# Both set up what they need first (a virtual environment in .venv, and for tests the system
# packages the real-client tests use).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCKED := $(VENV)/.locked
LOCK := requirements.lock
STALE := { echo "$(LOCK) does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
# Tests that speak WebRTC run in a loopback-only network namespace: nothing leaves 127.0.0.0/8.
NETNS := scripts/loopback-netns

.PHONY: run test lint typecheck unit bench soak setup lock system-packages clean

run: $(STAMP)
	$(BIN)/golive

setup: $(STAMP)

# The venv holds exactly what requirements.lock lists (golive's dependencies, the dev and build
# groups, pip and setuptools themselves), each version checked against its hashes: it is made
# anew whenever the lock changes, so nothing the lock dropped stays behind.
$(LOCKED): $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV) || \
	  (rm -rf $(VENV) && scripts/install-system-packages python3-venv && $(PYTHON) -m venv $(VENV))
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	touch $(LOCKED)

# minio's keyword-only API (requirements-minio-kwonly.lock), in a directory of its own beside
# the venv's packages: tests/test_minio_api.py runs the upload tests against it too.
MINIO_KWONLY := $(VENV)/minio-kwonly
$(MINIO_KWONLY)/.installed: requirements-minio-kwonly.lock $(LOCKED)
	rm -rf $(MINIO_KWONLY)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps --target $(MINIO_KWONLY) \
	  -r requirements-minio-kwonly.lock
	touch $@

# golive itself, its C extension compiled (with the machine's compiler and Python's headers,
# installed when missing) without build isolation by the setuptools the lock pins; built again
# when a C source changes. The two checks fail when pyproject.toml asks for something the lock
# does not hold: run `make lock`.
$(STAMP): $(LOCKED) $(MINIO_KWONLY)/.installed pyproject.toml $(wildcard setup.py golive/*/*.c golive/*/*.h)
	scripts/install-build-tools $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	broken=$$($(BIN)/python -m pip check) || { echo "$$broken"; $(STALE); }
	$(BIN)/python -m pip install --quiet --dry-run --no-index --group dev --group build || $(STALE)
	touch $(STAMP)

# Regenerates requirements.lock from pyproject.toml with uv (the version the lock pins): run it
# after changing a dependency or a group in pyproject.toml. Pins already in the lock are kept
# unless pyproject.toml excludes them; `make lock LOCK_ARGS=--upgrade` moves everything to the
# newest allowed, `make lock LOCK_ARGS='--upgrade-package aiohttp'` one package. The resolution
# is universal (any OS and Python >= 3.11), so the lock installs beyond this machine too, and
# prefers one version of each package for every Python (--fork-strategy fewest) to one per
# Python. The lock is replaced only when its text changes (a new one makes the venv anew).
lock:
	test -x $(BIN)/uv || $(MAKE) $(LOCKED)
	cp $(LOCK) $(LOCK).new
	UV_CUSTOM_COMPILE_COMMAND='make lock' $(BIN)/uv pip compile --quiet pyproject.toml \
	  --group dev --group build --universal --fork-strategy fewest --python-version 3.11 \
	  --generate-hashes $(LOCK_ARGS) -o $(LOCK).new || { rm -f $(LOCK).new; exit 1; }
	if cmp -s $(LOCK).new $(LOCK); then rm $(LOCK).new; else mv $(LOCK).new $(LOCK); fi

system-packages:
	scripts/install-system-packages

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) system-packages
	$(NETNS) $(BIN)/pytest

test: lint typecheck unit

bench: $(STAMP) system-packages
	$(BIN)/python -m bench.actors
	$(BIN)/python -m bench.recording
	$(BIN)/python -m bench.tracing
	$(NETNS) $(BIN)/python -m bench.hostile
	$(NETNS) $(BIN)/python -m bench.forwarding
	$(NETNS) $(BIN)/python -m bench.joins
	$(NETNS) $(BIN)/python -m bench.instant
	$(NETNS) $(BIN)/python -m bench.cluster

# 10 minutes of churn against a server in its own process (publishers and viewers coming and
# going, some vanishing, garbage requests), then its RSS, file descriptors, threads, actors and
# sessions must come back to their idle baseline; not part of `make test`. SOAK_SECONDS=60 for
# a short run; the other knobs: `.venv/bin/python -m bench.soak --help`. Writes soak-results/.
soak: $(STAMP) system-packages
	$(NETNS) $(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
