# The README's two commands: `make demo` (set up, index the demo archive, query it) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test train-data train clean-demo

setup: $(VENV)/.installed

# distillmos is installed without dependencies: only its weight file is used (loaded into our own
# module), and its torchaudio dependency has no build matching torch 2.13.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,eval,train]'
	$(BIN)/pip install -q --no-deps distillmos==0.9.1
	touch $@

demo: setup
	$(BIN)/degsearch demo

test: setup
	$(BIN)/python -m pytest -q
