# Two commands for a fresh machine:  `make studio`  and  `make test`.
# Both are idempotent: a second run finds the stamps and skips finished work.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
HOST        ?= 127.0.0.1
PORT        ?= 7860
PYTEST_ARGS ?=

# System packages: packages.txt is also what a Hugging Face Space installs.
APT_RUNTIME := $(shell grep -v '^\s*\#' packages.txt)
# Corpus voices and a real noise recording (alsa-utils' Noise.wav) for the corpus tests.
APT_CORPUS  := flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts alsa-utils
APT_TEST    := $(APT_CORPUS) chromium  # chromium: the browser tests (Playwright drives it, no download)

PIP_INSTALL := $(PY) -m pip install --quiet --constraint constraints.txt

.PHONY: studio test corpus setup setup-test system-packages system-packages-test system-packages-corpus clean

studio: setup
	$(PY) -m studio serve --host $(HOST) --port $(PORT)

test: setup-test
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The default training corpus (v3: the engine voices, about 25 h in 14 min, and 9.65 h of Kokoro voices, about
# 3.5 h more on 2 cores; `--engines kokoro` builds that part alone) and its task sets, under data/.
corpus: system-packages-corpus $(VENV)/.corpus-installed
	$(PY) -m studio corpus build --out data/corpus --profile default
	$(PY) -m studio corpus tasks --corpus data/corpus --out data/tasks

setup: system-packages $(VENV)/.runtime-installed
setup-test: system-packages-test $(VENV)/.test-installed

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.runtime-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) --editable .
	touch $@

$(VENV)/.corpus-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) --editable '.[corpus]'
	touch $@ $(VENV)/.runtime-installed

$(VENV)/.test-installed: pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) --editable '.[test]'
	touch $@ $(VENV)/.runtime-installed

# Installs missing Debian packages when root; otherwise prints the exact line to run.
define ensure_apt
	@missing=""; \
	for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "Installing system packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "Missing system packages. Install them with:"; \
	  echo "  sudo apt-get install -y$$missing"; \
	  echo "(continuing: without espeak-ng the text front-end falls back to characters)"; \
	fi
endef

system-packages:
	$(call ensure_apt,$(APT_RUNTIME))

system-packages-test:
	$(call ensure_apt,$(APT_RUNTIME) $(APT_TEST))

system-packages-corpus:
	$(call ensure_apt,$(APT_RUNTIME) $(APT_CORPUS))

clean:
	rm -rf $(VENV) .pytest_cache
