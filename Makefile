# The README's two commands: `make demo` (set up, index the demo archive, query it) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian tools the demo archive, the training data and the codec tests use (TTS voices, ffmpeg, sox).
SYSTEM_PACKAGES := espeak-ng ffmpeg sox flite

.PHONY: setup system-deps train-deps demo test train

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# distillmos is installed without dependencies: only its weight file is used (loaded into our own
# module), and its torchaudio dependency has no build matching torch 2.13.
$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,eval,train,ray]'
	$(BIN)/pip install -q --no-deps distillmos==0.9.1
	touch $@

# Training needs more voices than the demo: the list lives beside the corpus code.
train-deps:
	@$(MAKE) --no-print-directory system-deps SYSTEM_PACKAGES="$$(tr '\n' ' ' < indexer/training/SYSTEM_PACKAGES.txt)"

# Reproduces the shipped models' recipes (see MODEL_CARD.md): corpus + shards, then the default
# `balanced-5`, which is `balanced-4` with a type head fitted on the training clips (~4 min more).
# `balanced-4`: `fast` and `telephone`, joined as `balanced`, `distilled` taught by it, `distilled`
# and `telephone` joined as `balanced-2`, two seeds of `telephone-distilled` taught by that, then
# `distilled` and both seeds joined as `balanced-3`, `telephone-3-long` (seed 2) taught by that, and
# `distilled`, the first `telephone-distilled` and `telephone-3-long` joined; each written as
# data/models/balanced-5.NAME.pt (~540 min on 2 cores; --resume keeps what is finished and continues
# an interrupted run). The single-network `telephone-3` is its own preset, taught by the installed
# `balanced-3` (~100 min):
# `degsearch train --preset telephone-3 --data data/train/shards --out data/models/telephone-3.pt`.
train: setup train-deps
	$(BIN)/degsearch prepare-data data/train --shards 18000 --val-shards 500
	$(BIN)/degsearch train --preset default --resume --data data/train/shards --out data/models/balanced-5.pt

demo: setup
	$(BIN)/degsearch demo

test: setup
	$(BIN)/python -m pytest -q
