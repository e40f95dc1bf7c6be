# m6rec: the two commands a new user needs are `make run` and `make test` (each sets up everything first).
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: setup data run test test-fast lock metrics clean-outputs

setup:  ## create .venv from requirements.lock (idempotent)
	./scripts/setup_env.sh

data: setup  ## fetch raw data (official sources, else the local mirror) and track it with DVC
	$(BIN)/python -m m6rec.stages.download
	$(BIN)/dvc commit --force --quiet data.dvc  # records the raw data's hash (no-op when unchanged)

run: data  ## the main job: the whole pipeline on the embedded default data
	$(BIN)/dvc repro
	@echo
	@cat reports/summary.md
	@echo
	@echo "Results: reports/summary.md (above), metrics/ (dvc metrics show --md), plots/ (dvc plots show), reports/ (validation Data Docs, promotion),"
	@echo "models/ (checkpoints, serving bundles), MLflow runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: setup  ## the test suite (what CI runs)
	$(BIN)/python -m pytest -q

test-fast: setup  ## unit and data tests only (a few minutes): the quick check while editing
	$(BIN)/python -m pytest -q tests/unit tests/data

lock:  ## re-resolve requirements.in into requirements.lock
	$(BIN)/uv pip compile requirements.in --python-version 3.11 --find-links "$${M6REC_WHEELS:-/opt/wheels}" -o requirements.lock
