# gradgraph: `make demo` and `make test` set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradgraph-installed

.PHONY: setup demo check-gallery test bench lint clean backpack-venv

setup: $(STAMP)

# apt-get as root, or through sudo otherwise; used only for what is missing
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
  $$SUDO apt-get update -qq && \
  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq

$(STAMP): pyproject.toml Makefile
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing the graphviz 'dot' binary (apt-get install graphviz)"; \
	  $(APT_INSTALL) graphviz >/dev/null; }
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { \
	  echo "installing headless chromium for the browser tests (chromium chromium-driver)"; \
	  $(APT_INSTALL) chromium chromium-driver >/dev/null; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,dev,bench]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m gradgraph demo --out out

# open out/index.html in headless chromium: every image must load; screenshot
check-gallery: demo
	$(BIN)/python tools/browser_check.py out/index.html --screenshot out/gallery.png

# lint first: a style error fails `make test` (and CI) before any test runs
test: lint
	$(BIN)/python -m pytest -q

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# BackPACK (the peer of benchmarks/bench_diagonal.py) needs torchvision, which has
# no release beside torch 2.13: it gets its own venv with torch 2.14.1.
backpack-venv:
	test -x .venv-backpack/bin/python || $(PY) -m venv .venv-backpack
	.venv-backpack/bin/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 backpack-for-pytorch
	.venv-backpack/bin/pip install -q --disable-pip-version-check -e .

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) out .pytest_cache
