# The two commands: `make demo` (the whole job, offline, on CPU) and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml requirements-ci.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q

# pytest exits 5 when no test is marked slow: that is not a failure.
test-slow: install
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

# The demo synthesises its corpus with flite; install it when missing (Debian/Ubuntu).
demo: install
	@command -v flite >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq flite) \
		|| { echo "please install flite (apt-get install flite)"; exit 1; }
	$(VENV)/bin/hf-asr-distill demo

.PHONY: install test test-slow demo
