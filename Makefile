# One command each: `make setup`, `make demo`, `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test bench-cpu

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'

demo:
	$(BIN)/python -m reidcam.app.virtual_cameras --preset demo --out demo
	$(BIN)/reidcam run --sources demo/cams.yaml --out demo/out

test:
	$(BIN)/python -m pytest -q -n 2
