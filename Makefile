# Two commands for a fresh machine: `make run` and `make test`.
# Both create .venv when missing and install the project into it first.

VENV       ?= .venv
PYTHON     ?= python3
# torch comes first and pinned: on this project's machines these wheels are served
# from local disk. Elsewhere override, e.g. TORCH_SPEC="torch torchvision".
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
PY         := $(VENV)/bin/python
STAMP      := $(VENV)/.clipgan-installed
# The browser test drives Debian's chromium (Playwright downloads no browser here).
# Elsewhere point CHROMIUM at any Chromium/Chrome binary.
CHROMIUM   ?= /usr/bin/chromium

.PHONY: install run test lint screenshots bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(CHROMIUM):
	@echo "installing Debian's chromium for the browser test (apt, as root)"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium

run: $(STAMP)
	$(VENV)/bin/clipgan serve

test: lint $(CHROMIUM)
	CHROMIUM=$(CHROMIUM) $(PY) -m pytest

# the README's pictures of the page, taken by the browser test
screenshots: $(STAMP) $(CHROMIUM)
	CLIPGAN_SCREENSHOTS=1 CHROMIUM=$(CHROMIUM) $(PY) -m pytest -q tests/web_backend/api/test_page.py

# style, the layers (pyproject: [tool.importlinter]) and types
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint deploy/node-image/Dockerfile

bench: $(STAMP)
	$(PY) bench/generator.py
	$(PY) bench/search.py
	$(PY) bench/serve.py
	$(PY) bench/web.py
	$(PY) bench/logout.py
	$(PY) bench/e2e.py
	$(PY) bench/hostile_clients.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
