# Riskdesk: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run demo stop status test test-fast bench lint screenshots clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

## run: start embedded Redis (unless REDIS_URL is set), seed it if empty, start the daemons and the dashboard
## (simulated feed on a compressed demo clock: one one-minute bar every 2 s, shown as such on the dashboard)
run: $(STAMP)
	$(PY) launcher.py start --compressed-clock 2

## demo: replay real weekly closes (plotly's bundled 2018-2019 stocks) through the whole system, no network
demo: $(STAMP)
	$(PY) launcher.py demo

## stop: stop everything `make run` started, by PID
stop:
	@if [ -x $(PY) ]; then $(PY) launcher.py stop; $(PY) launcher.py stop --config configs/demo.toml; \
	else echo "nothing to stop (no .venv)"; fi

status: $(STAMP)
	$(PY) launcher.py status

## test: the whole suite against real servers it starts itself
test: $(STAMP)
	$(PY) -m pytest -q

## test-fast: everything except the browser tests
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not browser"

## bench: performance table, each figure beside a baseline measured in the same run
bench: $(STAMP)
	$(PY) scripts/bench.py

## screenshots: regenerate docs/screenshots/*.png (private stack on a temporary store, headless Chromium)
screenshots: $(STAMP)
	RISKDESK_SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest -q -m browser tests/test_browser.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy engine logic notifications dashboard

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache *.egg-info
