# Two commands on a fresh machine: `make demo` and `make test`. Each installs what it needs into
# .venv. torch is installed first and pinned, so that no CUDA wheels are pulled on a CPU machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all clean

$(BIN)/cascade-kd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test]"
	@touch $@

install: $(BIN)/cascade-kd

demo: install
	$(BIN)/cascade-kd demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs
