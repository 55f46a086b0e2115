# Two commands set everything up on a fresh machine with Python 3.11:
#   make demo   — create/reuse .venv, install, generate data, train, print recommendations
#   make test   — create/reuse .venv, install with test extras, run the test suite
#   make test-fast — the unit tests only (no test marked slow: none trains a pipeline or starts a server)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# `make test EXTRAS=test,text` also installs the Sentence-BERT encoder (torch pinned, CPU);
# `,spark` adds pyspark for the Spark ALS engine (needs Java 17).
EXTRAS ?= test
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
# pytest-xdist workers; each test file runs whole on one worker (its module fixtures train once).
# One BLAS thread per process: the workers (and the servers tests start) share the cores.
TEST_WORKERS ?= 2
PYTEST := OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: demo test test-fast lint serve install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/recsys demo

# a local server: writes take the key dev-key unless RECSYS_API_KEYS says otherwise
serve: $(STAMP)
	RECSYS_API_KEYS="$${RECSYS_API_KEYS:-dev-key}" $(VENV)/bin/recsys serve

test: $(STAMP)
	$(PYTEST)

test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .recsys
