# Set-up and the two everyday commands: `make quickstart` and `make test`.
# Each installs what it needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST package,
# a virtual environment with the CPU build of PyTorch, and softdistill itself (editable).

VENV ?= .venv
PYTHON ?= python3
TORCH ?= torch==2.13.0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: quickstart test data install

quickstart: install data
	$(VENV)/bin/softdistill quickstart

test: install data
	$(VENV)/bin/python -m pytest -q

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q $(TORCH)
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	touch $@

data: $(FMNIST)

$(FMNIST):
	$(SUDO) apt-get install -y dataset-fashion-mnist || \
	  ($(SUDO) apt-get update && $(SUDO) apt-get install -y dataset-fashion-mnist)
