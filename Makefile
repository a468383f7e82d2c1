# Two commands: `make demo` and `make test`. Each creates .venv if missing and installs what it
# needs; the install step is skipped while pyproject.toml is unchanged.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck format bench clean install

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The demo keeps its own Prefect home, so it never touches ~/.prefect or a configured server.
# Prefect gives its ephemeral server 20 s to start; a busy 2-core machine can need more.
demo: $(STAMP)
	env -u PREFECT_API_URL PREFECT_HOME=$(CURDIR)/.prefect-demo \
	  PREFECT_SERVER_ANALYTICS_ENABLED=false \
	  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90 $(BIN)/prefect-dintero demo

# The suite runs in three processes (a file stays in one), then the secret scan runs on its own
# over everything both left behind (their evidence is handed over in .pytest-evidence/).
test: $(STAMP)
	rm -rf $(CURDIR)/.pytest-evidence
	DINTERO_EVIDENCE_DIR=$(CURDIR)/.pytest-evidence $(BIN)/python -m pytest -q -n 3 \
	  --dist loadfile --durations=40 --ignore=tests/test_secret_scan.py -m "not soak"
	DINTERO_EVIDENCE_DIR=$(CURDIR)/.pytest-evidence $(BIN)/python -m pytest -q \
	  tests/test_secret_scan.py

lint: $(STAMP) typecheck
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy checks the package as it is installed: blocks/, tasks/, flows/ and cli/ are
# prefect_dintero.blocks (and so on) there, so a folder of links puts them in place first.
typecheck: $(STAMP)
	@tree=$$(mktemp -d) && mkdir $$tree/prefect_dintero \
	  && cp -rs $(CURDIR)/src/prefect_dintero/. $$tree/prefect_dintero/ \
	  && for d in blocks tasks flows cli; do ln -s $(CURDIR)/$$d $$tree/prefect_dintero/$$d; done \
	  && cd $$tree && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml \
	    --cache-dir $(CURDIR)/.mypy_cache -p prefect_dintero; \
	  status=$$?; rm -rf $$tree; exit $$status

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .pytest-evidence .mypy_cache

# One table: token grants per lifetime, sync throughput vs a bare loop, peak RSS, no-change run.
# Then the soaks: minutes of waiting that make test leaves out (a killed run's lease running out,
# on an ephemeral server and on a restarted prefect server start).
bench: $(STAMP)
	$(BIN)/python benchmarks/report.py
	$(BIN)/python -m pytest -q -p no:cacheprovider -m soak tests/
