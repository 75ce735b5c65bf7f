# Two commands set everything up on a fresh machine:
#   make demo   virtual environment, install, pretrain the quickstart recipe on the embedded data, probe it,
#               draw nearest neighbours and write RUN/report.html
#   make test   virtual environment, install, run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The demo's own folder, replaced by each demo (not runs/quickstart, the recipe's default --out).
RUN ?= runs/demo

.PHONY: demo test lint clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	rm -rf $(RUN)
	$(VENV)/bin/sslkit pretrain recipes/quickstart.yaml --out $(RUN)
	$(VENV)/bin/sslkit probe $(RUN)
	$(VENV)/bin/sslkit neighbors $(RUN) --query 3 17 42
	$(VENV)/bin/sslkit report $(RUN)

test: $(VENV)/.installed
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check sslkit tests eval

clean:
	rm -rf $(VENV) runs
