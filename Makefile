# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs into
# .venv. torch is installed first, pinned (the tested version); on a CPU-only Linux machine add
# TORCH_INDEX=https://download.pytorch.org/whl/cpu to take PyTorch's CPU build instead of PyPI's CUDA one.
# `make docs` builds the documentation site into site/ (strict: a broken link or reference fails it).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
TORCH_INDEX ?=
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all docs clean

$(BIN)/cascade-kd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	@touch $@

install: $(BIN)/cascade-kd

demo: install
	$(BIN)/cascade-kd demo

# one worker process per usable core (at most 4: tests/conftest.py), each test file on one worker, so
# that its module fixtures are built once
test: install
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15

# the doc tools (pinned in the `docs` extra) go into the same venv; the build reads the source
# statically and never imports torch
$(BIN)/mkdocs: $(BIN)/cascade-kd pyproject.toml
	$(BIN)/pip install -q --disable-pip-version-check -e ".[docs]"
	@touch $@

docs: $(BIN)/mkdocs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site
