# codecplatform: `make quickstart` and `make test` are the whole set-up (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MLFLOW_URI := sqlite:///mlflow.db

.PHONY: install quickstart test lint bench ui clean

# The venv is rebuilt whenever pyproject.toml changes. torch/torchaudio 2.11 come from PyPI
# (the CUDA build; it runs on CPU too, and torchaudio's wheel imports only with it).
#
# The parity tests compare against the reference packages encodec and descript-audio-codec.
# descript-audiotools pins protobuf<3.20, and with that protobuf `import mlflow` fails, while dac
# itself runs with current protobuf: so dac and audiotools come with --no-deps, and the modules
# they really import come from the `parity` extra.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,parity]"
	$(BIN)/python -m pip install --quiet --no-deps descript-audio-codec==1.0.0 descript-audiotools==0.7.2
	$(BIN)/python -c "import dac, encodec, mlflow, pesq, pystoi, visqol"
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
bench: install
	$(BIN)/python benchmarks/codec_speed.py
	$(BIN)/python benchmarks/data_throughput.py -- --data.init_args.batch_size=8
	$(BIN)/python benchmarks/bitstream_size.py

ui: install
	$(BIN)/mlflow ui --backend-store-uri $(MLFLOW_URI) --host 127.0.0.1 --port 5000

clean:
	rm -rf mlruns mlflow.db data/demo outputs
