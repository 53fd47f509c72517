PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: venv demo test lint clean

# The venv is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/python examples/quickstart/run.py

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check rundock tests examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) examples/quickstart/.rundock examples/quickstart/model.pkl
