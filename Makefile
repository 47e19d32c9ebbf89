# codecplatform: `make quickstart` and `make test` are the whole set-up (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MLFLOW_URI := sqlite:///mlflow.db

.PHONY: install lock quickstart test lint bench gpu-suite ui notebook clean

LOCK := requirements.lock
UV   := $(BIN)/uv

# The environment is exactly requirements.lock, installed by uv (the lock's `uv==` version) without resolving.
# Why, the protobuf/dac exception and install times: docs/dependencies.md.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep '^uv==' $(LOCK))"
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python --build-constraints $(LOCK) $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import av, dac, encodec, mlflow, pesq, pystoi, visqol, torchaudio"
	touch $(STAMP)

install: $(STAMP)

# Demo data -> a small EnCodec trained on CPU -> tested against itself untrained, logged to MLflow.
quickstart: install
	$(BIN)/python -m codecplatform.quickstart

# Two pytest workers (pytest-xdist): tests run on one torch thread each, so the second core would idle;
# a test file stays on one worker, and tests/conftest.py keeps the shared DDP and MLflow-server fixtures on one.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

lint: install
	$(BIN)/python -m ruff check codecplatform datamodules callbacks tests benchmarks

# What each script measures and how long it takes: docs/benchmarks.md (data_throughput at batch 8: a
# 24 kHz EnCodec step at batch 64 ran out of 23 GB of RAM on CPU, benchmarks/RESULTS.md).
bench: install
	$(BIN)/python benchmarks/codec_speed.py
	$(BIN)/python benchmarks/data_throughput.py -- --data.init_args.batch_size=8
	$(BIN)/python benchmarks/bitstream_size.py
	$(BIN)/python benchmarks/inference_rtf.py
	$(BIN)/python benchmarks/cli_start.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/short_run_quality.py --data_dir ../shared/data/music

# A GPU machine's measurements in one table, under 8 minutes (benchmarks/gpu_suite.py; docs/benchmarks.md
# lists the wheels a machine without network needs). No install step: the .venv's python or python3.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
gpu-suite:
	$(GPU_PYTHON) benchmarks/gpu_suite.py $(GPU_SUITE_ARGS)

# Prints the address that opens the experiment's runs ("codec quality" view) in model-training mode;
# the server's start page sets that mode and view as the browser's defaults (codecplatform/ui_app.py).
ui: install
	@$(BIN)/python -c 'from codecplatform.compare import ui_url; print("MLflow UI, experiment codecplatform:", ui_url("$(MLFLOW_URI)"))'
	$(BIN)/mlflow ui --app-name codecplatform --workers 1 --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

# Regenerates requirements.lock from pyproject.toml for CPython 3.11 on x86_64 Linux; one package:
# `make lock UPGRADE="--upgrade-package mlflow"` (docs/dependencies.md).
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(UV) || $(BIN)/python -m pip install --quiet "$$(grep -s '^uv==' $(LOCK) || echo uv)"
	# the current lock is the starting point (uv keeps the versions of an existing output file)
	cp -f $(LOCK) $(LOCK).main 2>/dev/null || true
	$(UV) pip compile --quiet --custom-compile-command 'make lock' pyproject.toml --extra dev --extra parity --constraint lock-constraints.txt $(UPGRADE) \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --output-file $(LOCK).main
	printf 'descript-audio-codec==1.0.0\ndescript-audiotools==0.7.2\n' > $(LOCK).nodeps.in
	$(UV) pip compile --quiet --no-deps --no-header --no-annotate $(LOCK).nodeps.in \
	    --python-version 3.11 --python-platform x86_64-manylinux_2_28 --output-file $(LOCK).nodeps
	{ cat $(LOCK).main; echo '# Reference packages for the parity tests, installed without their dependencies:'; \
	  echo '#    uv pip compile --no-deps (descript-audio-codec==1.0.0 descript-audiotools==0.7.2)'; \
	  cat $(LOCK).nodeps; } > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	rm -f $(LOCK).main $(LOCK).nodeps $(LOCK).nodeps.in

# Runs notebooks/$(NOTEBOOK).ipynb headless and writes $(NOTEBOOK_OUT)/$(NOTEBOOK).html (figures embedded)
# and the executed .ipynb; its inputs come from the environment, e.g.
# `make notebook CODEC_RUN_ID=<run id> CODEC_AUDIO=my_wavs` (all of them: docs/notebooks.md).
NOTEBOOK ?= codebook_usage
NOTEBOOK_OUT ?= outputs/notebooks
notebook: install
	$(BIN)/python -m codecplatform.notebook notebooks/$(NOTEBOOK).ipynb --html $(NOTEBOOK_OUT)/$(NOTEBOOK).html

clean:
	rm -rf mlruns mlflow.db data/demo outputs
