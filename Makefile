# golive: `make run` starts the server on its embedded defaults; `make test` checks everything.
# Both set up what they need first (a virtual environment in .venv, and for tests the system
# packages the real-client tests use).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Tests that speak WebRTC run in a loopback-only network namespace: nothing leaves 127.0.0.0/8.
NETNS := scripts/loopback-netns

.PHONY: run test lint typecheck unit bench setup system-packages clean

run: $(STAMP)
	$(BIN)/golive

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || \
	  (rm -rf $(VENV) && scripts/install-system-packages python3-venv && $(PYTHON) -m venv $(VENV))
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

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

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
