# Two commands set everything up on a fresh machine:
#   make demo   - short federated run on the bundled demo data through an embedded broker
#   make test   - the whole test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all]'
	touch $@

demo: setup
	$(VENV)/bin/fedmekt simulate

test: setup
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		(apt-get update -q && apt-get install -y -q mosquitto)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done
