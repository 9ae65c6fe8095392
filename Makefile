# Two commands for a fresh machine (Python 3.11+, pip and venv are all they need):
#   make run    install into .venv and start the hub: WebSocket on 9000, page on 8080
#   make test   install the test tools into .venv and run lint, types and the whole suite
# and, for the hub that make run started:
#   make restart   restart it in place (SIGUSR2): new code and schemas, no connection refused
#   make reload    read the schema folder and the token file again (SIGHUP)
#   make test-latest   the same against the newest releases (make lock then takes them)
# and, to see something at once:
#   make demo   the hub plus a simulated network of connectors; open http://localhost:8080/
#   make demo-cluster   two hubs as one on a local redis-server; open http://localhost:8082/

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 9000
HTTP_PORT ?= 8080
NODES  ?= 6
TOPOLOGY ?= linear
RATE   ?= 10

.PHONY: run restart reload demo demo-cluster test lint typecheck pytest clean test-latest lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The package is installed in editable mode, so source edits take effect on the next start;
# the test suite separately builds the real wheel and runs it from a fresh virtualenv.
# Every dependency comes in the exact version the suite passed with (constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@ $(VENV)/.installed

# twistd keeps the hub's PID in $(PIDFILE), for restart and reload
PIDFILE := $(VENV)/hub.pid
run: $(VENV)/.installed
	$(BIN)/twistd -n --pidfile=$(PIDFILE) telemetry --port $(PORT) --http-port $(HTTP_PORT)

restart:
	@test -f $(PIDFILE) || { echo "no hub started by 'make run' ($(PIDFILE) is missing)"; exit 1; }
	kill -USR2 $$(cat $(PIDFILE))

reload:
	@test -f $(PIDFILE) || { echo "no hub started by 'make run' ($(PIDFILE) is missing)"; exit 1; }
	kill -HUP $$(cat $(PIDFILE))

# The hub and telemetry-sim together; Ctrl-C stops both.
demo: $(VENV)/.installed
	@echo "live network page: http://localhost:$(HTTP_PORT)/"
	@$(BIN)/twistd -n --pidfile= telemetry --port $(PORT) --http-port $(HTTP_PORT) \
	    --log-level warn & hub=$$!; \
	trap 'kill $$hub 2>/dev/null; wait $$hub' EXIT INT TERM; \
	sleep 1.5; \
	$(BIN)/telemetry-sim --url ws://127.0.0.1:$(PORT)/ --nodes $(NODES) \
	    --topology $(TOPOLOGY) --rate $(RATE)

# Two hubs as one on a local redis-server (Debian's; in a temporary folder, port 6390):
# telemetry-sim feeds hub 1 (WebSocket 9001), the page is served by hub 2 (8082), and it
# shows everything. Ctrl-C stops all four.
REDIS_PORT ?= 6390
demo-cluster: $(VENV)/.installed
	@command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 1; }
	@echo "live network page, from hub 2: http://localhost:8082/"
	@dir=$$(mktemp -d); \
	redis-server --port $(REDIS_PORT) --bind 127.0.0.1 --dir $$dir --save '' \
	    --logfile $$dir/redis.log & redis=$$!; \
	trap 'kill $$hub1 $$hub2 $$redis 2>/dev/null; wait; rm -rf $$dir' EXIT INT TERM; \
	sleep 0.5; \
	for n in 1 2; do \
	    $(BIN)/twistd -n --pidfile= telemetry --port 900$$n --http-port 808$$n \
	        --redis redis://127.0.0.1:$(REDIS_PORT)/0 --log-level warn & \
	    eval hub$$n=$$!; \
	done; \
	sleep 2; \
	$(BIN)/telemetry-sim --url ws://127.0.0.1:9001/ --nodes $(NODES) \
	    --topology $(TOPOLOGY) --rate $(RATE)

test: lint typecheck pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

pytest: $(VENV)/.installed-test
	$(BIN)/pytest

# Try an upgrade before taking it: the whole suite against the newest releases of every
# dependency, in a virtualenv of its own. If it passes, 'make lock' takes those versions.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install --quiet --upgrade pip
	$(LATEST)/bin/python -m pip install --quiet --upgrade -e ".[test]"
	$(LATEST)/bin/python -m pip freeze --exclude-editable | grep -v '^telemetry-hub' \
	    | sort -f | diff constraints.txt - | grep '^[<>]' || true
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/mypy
	$(LATEST)/bin/pytest

lock:
	test -x $(LATEST)/bin/python || { echo "run 'make test-latest' first"; exit 1; }
	{ sed -n '1,2p' constraints.txt; $(LATEST)/bin/python -m pip freeze --exclude-editable \
	    | grep -v '^telemetry-hub' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) $(LATEST) build dist .pytest_cache .mypy_cache .ruff_cache
