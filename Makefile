# Set-up and entry points. `make demo` and `make test` work on a fresh clone with Python >= 3.11.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Tests and the demo never download: a missing file fails at once instead of retrying a hub.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

.PHONY: install demo test nightly benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The main job on the embedded demo data: a small grid that ends with printed reports.
demo: install
	$(OFFLINE) $(BIN)/bench data demo --out data/demo
	$(OFFLINE) $(BIN)/bench pretrain --preset demo --arch efficientnet_lite0 --name fractals --single-thread
	$(OFFLINE) $(BIN)/bench run --method padim --method patchcore --weights fractals --weights imagenet --weights random \
		--backbone efficientnet_lite0 --dataset mvtec --root data/demo --category all --image-size 128
	$(OFFLINE) $(BIN)/bench report --table auroc
	$(OFFLINE) $(BIN)/bench report --table pixel_auroc
	$(OFFLINE) $(BIN)/bench report --table aupro

# Both test targets start a throwaway PostgreSQL server on 127.0.0.1 (installing the Debian
# package when needed) for the tests marked as needing one, and stop it afterwards, also on failure.
WITH_POSTGRES := scripts/with-postgres.sh

test: install
	$(WITH_POSTGRES) env $(OFFLINE) $(BIN)/python -m pytest

# Heavy runs (full categories, paper-scale settings), for a nightly machine.
nightly: install
	$(WITH_POSTGRES) env $(OFFLINE) $(BIN)/python -m pytest -m slow

# methods.py needs MVTec AD bottle (../shared/data/MVTecAD or --root) and took about 45 minutes on
# 2 CPU cores, most of it in anomalib's original PatchCore.
benchmarks: install
	$(OFFLINE) $(BIN)/python benchmarks/render.py
	$(OFFLINE) $(BIN)/python benchmarks/methods.py

clean:
	rm -rf $(VENV) data/demo runs bench.db bench.db-wal bench.db-shm
