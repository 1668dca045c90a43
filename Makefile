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
	# sae-bench's result dataclasses and reader check our SAEBench files in the tests; its declared
	# dependencies would replace torch, numpy and datasets (README, Evaluation suite), so without them
	$(PY) -m pip install -q --no-deps sae-bench==0.6.0
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/saescope run

# The browser tests drive a real Chromium found on PATH under one of these names (tests/browse/conftest.py);
# without one they skip and the rest of the suite runs. Installing it needs root or passwordless sudo.
BROWSERS := chromium chromium-browser google-chrome
APT_CHROMIUM := apt-get update -qq && apt-get install -y -qq chromium
NO_BROWSER := make test: no Chromium on PATH, so the browser tests will skip; to run them, install one as root: sudo apt-get install chromium

browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null && exit 0; done; \
	if [ "$$(id -u)" = 0 ]; then sh -c '$(APT_CHROMIUM)' || echo '$(NO_BROWSER)'; \
	elif sudo -n true 2>/dev/null; then sudo -n sh -c '$(APT_CHROMIUM)' || echo '$(NO_BROWSER)'; \
	else echo '$(NO_BROWSER)'; fi

test: install browser
	$(VENV)/bin/ruff format --check --quiet . && $(VENV)/bin/ruff check --quiet .  # style: pyproject's [tool.ruff]; ruff is pinned, its formatting changes between versions
	$(PY) -m pytest -q -p no:cacheprovider

bench: install
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) benchmarks/harvest.py
	$(PY) benchmarks/train_step.py

.PHONY: install run browser test bench
