# Two commands for a fresh machine (Python 3.11+, pip and venv are all they need):
#   make run    install into .venv and start the hub: WebSocket on 9000, page on 8080
#   make test   install the test tools into .venv and run lint, types and the whole suite
# and, to see something at once:
#   make demo   the hub plus a simulated network of connectors; open http://localhost:8080/

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 9000
HTTP_PORT ?= 8080
NODES  ?= 6
TOPOLOGY ?= linear
RATE   ?= 10

.PHONY: run demo test lint typecheck pytest clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The package is installed in editable mode, so source edits take effect on the next start;
# the test suite separately builds the real wheel and runs it from a fresh virtualenv.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/twistd -n --pidfile= telemetry --port $(PORT) --http-port $(HTTP_PORT)

# The hub and telemetry-sim together; Ctrl-C stops both.
demo: $(VENV)/.installed
	@echo "live network page: http://localhost:$(HTTP_PORT)/"
	@$(BIN)/twistd -n --pidfile= telemetry --port $(PORT) --http-port $(HTTP_PORT) \
	    --log-level warn & hub=$$!; \
	trap 'kill $$hub 2>/dev/null; wait $$hub' EXIT INT TERM; \
	sleep 1.5; \
	$(BIN)/telemetry-sim --url ws://127.0.0.1:$(PORT)/ --nodes $(NODES) \
	    --topology $(TOPOLOGY) --rate $(RATE)

test: lint typecheck pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
