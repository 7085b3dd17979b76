# Two entry points, both safe on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The CPU build of torch is installed first so pip does not pull the CUDA build as a
# dependency; on a GPU box use: make serve TORCH_SPEC="torch==2.13.0"
# (from the CUDA index of your choice).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install serve test clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

serve: install
	$(BIN)/modelium serve --config modelium.yaml

test: install
	$(BIN)/python -m pytest

clean-venv:
	rm -rf $(VENV)
