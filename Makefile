# Two commands for a fresh machine:  `make demo`  and  `make test`.
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
NPROC ?= 2

.PHONY: setup demo test clean gpu-check scale-rehearsal

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: scripts/setup_env.sh requirements/cpu.txt requirements/cuda.txt requirements/common.txt pyproject.toml
	bash scripts/setup_env.sh $(VENV)
	touch $@

# Prepare the shipped Criteo sample, train MLET k=64 -> d=16 on 2 ranks for one epoch, collapse.
# Every demo trains afresh: the previous demo run is removed (and --no-resume), so changed code
# gives new numbers instead of a resumed, finished run reprinting old ones. DEMO_ARGS: extra
# train.py flags (the tests shorten the run with them).
demo: setup
	$(BIN)/mlet-prep criteo-kaggle data_prep/samples/criteo_sample.tsv $(DEMO_DIR)/data --overwrite
	rm -rf $(DEMO_DIR)/run
	PATH=$(abspath $(BIN)):$$PATH OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc-per-node $(NPROC) \
		mlet_dist/train.py --data $(DEMO_DIR)/data --run-dir $(DEMO_DIR)/run --no-resume \
		--model mlet --inner-dim 64 --embedding-dim 16 --epochs 1 --batch-size 128 --sharding table_wise \
		$(DEMO_ARGS)

test: setup
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q

# On one CUDA GPU: versions + device, the `cuda` tests, GPU benchmarks -> reports/gpu/<device>.{json,md}
# (<= 8 min). No setup dependency: a GPU image may bring its own torch/fbgemm-gpu/torchrec on
# PYTHONPATH instead of .venv (docs/gpu.md); GPU_PYTHON picks the interpreter, GPU_CHECK_ARGS adds flags.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-check:
	PATH=$(abspath $(BIN)):$$PATH $(GPU_PYTHON) scripts/gpu_check.py $(GPU_CHECK_ARGS)

# Criteo-Kaggle scale, stage by stage (prep, plan, train, checkpoint, collapse, export) ->
# reports/scale/kaggle.json + README.md. Full size needs ~35 GB of disk under /tmp/scale and ~13 GB of
# memory; SCALE_ARGS="--fraction 0.1" runs a tenth of the rows and table sizes.
scale-rehearsal: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/scale_rehearsal.py $(SCALE_ARGS)

# Only what `make demo` made; your own runs under runs/ are kept.
clean:
	rm -rf $(DEMO_DIR)
