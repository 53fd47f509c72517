PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: venv dev demo test lint bench clean

# `make venv` (and `make demo`): rundock and what running it needs, nothing else. Rebuilt when
# pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	@echo "==> Creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	@echo "==> Installing rundock and what it needs to run (pip install -e .)"
	$(PIP) install -e .
	touch $@

# `make dev` (and `make test`, `make lint`): the same venv plus the test tools (pytest, ruff, mypy...).
$(VENV)/.installed-test: $(VENV)/.installed
	@echo "==> Adding the test tools to $(VENV) (pip install -e '.[test]')"
	$(PIP) install -e '.[test]'
	touch $@

venv: $(VENV)/.installed

dev: $(VENV)/.installed-test

demo: venv
	@echo "==> Running examples/quickstart/run.py"
	$(BIN)/python examples/quickstart/run.py

test: dev
	$(BIN)/python -m pytest -q

# What runs on jobs' and remote hosts' Python must work on 3.8.
PY38_FILES := rundock/__init__.py rundock/states.py rundock/errors.py rundock/context rundock/agent rundock/history \
	rundock/runconfig/__init__.py rundock/runconfig/docker_args.py \
	rundock/hyperdrive/goal.py rundock/hyperdrive/parameters.py rundock/hyperdrive/sampling.py \
	rundock/hyperdrive/policies.py rundock/hyperdrive/_tpe.py

lint: dev
	$(BIN)/ruff check rundock tests examples bench
	$(BIN)/mypy
	$(BIN)/vermin -q -t=3.8- --no-tips --violations --backport typing $(PY38_FILES)

# Benchmarks: a separate venv that also has MLflow (the baseline of figure 5); needs root for the services.
$(VENV)-bench/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)-bench
	$(VENV)-bench/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]' 'mlflow>=2.10'
	touch $@

bench: $(VENV)-bench/.installed
	bash .ci/services.sh
	$(VENV)-bench/bin/python -m bench

clean:
	rm -rf $(VENV) $(VENV)-bench examples/quickstart/.rundock examples/quickstart/model.pkl
