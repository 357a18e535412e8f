# Every target works from a fresh clone: the first one run creates .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := setup.cfg pyproject.toml $(shell find nswarm twisted -name '*.py' 2>/dev/null)

.PHONY: demo test bench clean

$(VENV)/.deps: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check '.[test]'
	touch $@

# A non-editable install: twistd finds the plugin in site-packages (a PEP 660
# editable install would hide it). Reinstalled whenever a source file changes.
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall .
	rm -rf build
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

bench: $(VENV)/.installed
	$(PY) bench/run.py

test: $(VENV)/.installed
	$(PY) -m mypy
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
