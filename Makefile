# Every target works from a fresh clone: the first one run creates .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SOURCES := setup.cfg pyproject.toml $(shell find nswarm twisted -name '*.py' 2>/dev/null)

.PHONY: demo test lint docs bench chaos clean

$(VENV)/.deps: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check setuptools wheel
	$(PY) -m pip install -q --disable-pip-version-check '.[test]'
	touch $@

# A non-editable install: twistd finds the plugin in site-packages (a PEP 660
# editable install would hide it). Reinstalled whenever a source file changes.
$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation --force-reinstall .
	rm -rf build/lib build/bdist*
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

bench: $(VENV)/.installed
	$(PY) bench/run.py

# The chaos suite (issue 12): faults one at a time under load, about 5 minutes.
chaos: $(VENV)/.installed
	$(PY) bench/chaos.py

lint: $(VENV)/.deps
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: lint docs $(VENV)/.installed
	$(PY) -m mypy
	$(PY) -m pytest -q

# The API reference, from the docstrings (pydoctor, as Twisted's own); warnings fail the build.
docs: $(VENV)/.deps
	$(VENV)/bin/pydoctor --project-name=nswarm --docformat=epytext \
		--html-output=build/api --quiet --warnings-as-errors nswarm
	@echo "API reference written to build/api/index.html"

clean:
	rm -rf $(VENV) build *.egg-info
