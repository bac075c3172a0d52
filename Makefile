# gradgraph: `make demo` and `make test` set everything up on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradgraph-installed

.PHONY: setup demo check-gallery test bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing the graphviz 'dot' binary (apt-get install graphviz)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq graphviz >/dev/null; }
	@{ command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; } || { \
	  echo "installing headless chromium for the HTML viewer test (apt-get install chromium chromium-driver)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,dev,bench]'
	touch $(STAMP)

demo: setup
	$(BIN)/python -m gradgraph demo --out out

# open out/index.html in headless chromium: every image must load; screenshot
check-gallery: demo
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing chromium (apt-get install chromium)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/python tools/browser_check.py out/index.html --screenshot out/gallery.png

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) out .pytest_cache
