# The two commands: `make demo` (the whole job, offline, on CPU) and `make test`. Both set up .venv first.
# The demo installs only what it runs (requirements-ci.txt); the tests add pytest and DeepSpeed
# (requirements-test.txt), whose multi-process tests run on CPU.
VENV ?= .venv
PY := $(VENV)/bin/python

# Editable installs run with -qq: setuptools prints a notice box on each one (errors still show).
$(VENV)/.installed: pyproject.toml requirements-ci.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -qq --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

# The oldest versions the package claims (pyproject.toml's floors), in a venv of their own.
MIN_VENV ?= .venv-min
MIN_PY := $(MIN_VENV)/bin/python

$(MIN_VENV)/.installed: pyproject.toml requirements-min.txt requirements-test.txt
	python3 -m venv $(MIN_VENV)
	$(MIN_PY) -m pip install -q --upgrade pip
	$(MIN_PY) -m pip install -q -r requirements-min.txt -r requirements-test.txt
	$(MIN_PY) -m pip install -qq --no-deps -e .
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

test: install-test
	$(PY) -m pytest -q

# pytest exits 5 when no test is marked slow: that is not a failure.
test-slow: install-test
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

test-min: $(MIN_VENV)/.installed
	$(MIN_PY) -m pytest -q

# The demo synthesises its corpus with flite; install it when missing (Debian/Ubuntu).
demo: install
	@command -v flite >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq flite) \
		|| { echo "please install flite (apt-get install flite)"; exit 1; }
	$(VENV)/bin/hf-asr-distill demo

.PHONY: install install-test test test-slow test-min demo
