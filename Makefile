# Two commands on a fresh machine with Python 3.11+ and pip:
#   make run    install into .venv, then serve http://127.0.0.1:8080 (embedded PostgreSQL)
#   make test   install into .venv, then run the whole test suite
#   make test-fast   the unit tier only: seconds (no torch, no PostgreSQL, no workers, no browser)
#   make test-model  the engine tier (tests/model: the network, weights, training; torch)
#   make coco-model  add the official YOLOv4-tiny COCO model (80 classes) as model "coco"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-fast test-model coco-model install clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

run: $(STAMP)
	$(BIN)/python main.py

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest tests/unit

test-model: $(STAMP)
	$(BIN)/python -m pytest tests/model

coco-model: $(STAMP)
	$(BIN)/python -m model.coco

clean:
	rm -rf $(VENV) .pytest_cache
