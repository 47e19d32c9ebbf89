# codecplatform: `make quickstart` and `make test` are the whole set-up (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MLFLOW_URI := sqlite:///mlflow.db

.PHONY: install lock quickstart test lint bench ui clean

LOCK := requirements.lock
UV   := $(BIN)/uv

# The environment is exactly requirements.lock (`make lock` writes it; never edit it by hand).
# uv installs it (its version is the lock's `uv==` line, bootstrapped with the venv's pip); `uv pip sync`
# installs every listed version and nothing else, and resolves nothing, so no install ever picks up a new
# upstream release. Build dependencies of the few source-only packages are pinned to the lock's
# versions too (--build-constraints). The venv is re-synced whenever the lock or pyproject.toml changes.
#
# torch/torchaudio 2.11.0 are PyPI's CUDA build (it runs on CPU too, and torchaudio's wheel imports only
# with it). The parity tests compare against the reference packages encodec and descript-audio-codec;
# descript-audiotools pins protobuf<3.20, with which `import mlflow` fails, while dac itself runs with
# current protobuf: so the lock lists dac and audiotools without their dependencies (see `lock`), the
# modules they really import come from the `parity` extra, and `pip check` reports exactly that pin.
$(STAMP): $(LOCK) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "$$(grep '^uv==' $(LOCK))"
	$(UV) pip sync --quiet --compile-bytecode --python $(BIN)/python --build-constraints $(LOCK) $(LOCK)
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import dac, encodec, mlflow, pesq, pystoi, visqol, torchaudio"
	touch $(STAMP)

install: $(STAMP)

# Builds a small synthesized dataset, trains a tiny EnCodec on CPU, tests it against the same
# model untrained, logs everything to MLflow and prints where to look.
quickstart: install
	$(BIN)/python -m codecplatform.quickstart

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/python -m ruff check codecplatform datamodules callbacks tests benchmarks

# data_throughput: batch 8, as a training step of the 24 kHz EnCodec with its batch of 64 ran out of
# 23 GB of RAM on CPU (batch 8: 6 GB).
# short_run_quality: each family's small config for its own training length (EnCodec: the quickstart,
# 440 batches; small DAC and MUFFIN: 300; small SpectroStream: 1500) on the music of ../shared/data (its
# three tracks split train/val/test by recording; the whole folder's split puts all three in training
# and tests on sound effects), trained and untrained tested: roughly 1.5-2 hours on 2 CPU cores, over an hour
# of it SpectroStream's; skips with a message without the folder.
bench: install
	$(BIN)/python benchmarks/codec_speed.py
	$(BIN)/python benchmarks/data_throughput.py -- --data.init_args.batch_size=8
	$(BIN)/python benchmarks/bitstream_size.py
	$(BIN)/python benchmarks/inference_rtf.py
	$(BIN)/python benchmarks/cli_start.py
	$(BIN)/python benchmarks/train_throughput.py
	$(BIN)/python benchmarks/short_run_quality.py --data_dir ../shared/data/music

ui: install
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

# Regenerates requirements.lock from pyproject.toml (all extras) for CPython 3.11 on x86_64 Linux.
# To upgrade one package: `make lock UPGRADE="--upgrade-package mlflow"`; everything else keeps its pin.
# The reference packages come last, compiled with --no-deps (see above).
# (uv itself: the lock's version, or the newest when there is no lock yet.)
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

clean:
	rm -rf mlruns mlflow.db data/demo outputs
