# `make run` and `make test` are all a newcomer needs: each builds the virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU wheel of this version is what these machines serve; on a GPU box override it, e.g. TORCH=torch
TORCH ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/saescope run

test: install
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)  # browser tests
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/harvest.py
	$(PY) benchmarks/train_step.py

.PHONY: install run test bench
