# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo

test: $(STAMP)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gateway simulators tests bench
	$(BIN)/mypy gateway

bench: $(STAMP)
	$(BIN)/python bench/scheduler_scaling.py
	$(BIN)/python bench/ocpp_load.py --spawn --stations 1000 --rate 200 --duration 60

clean:
	rm -rf $(VENV) build *.egg-info
