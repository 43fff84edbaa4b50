# Two commands set everything up on a fresh machine:
#   make demo       - short federated run on the bundled demo data through an embedded broker
#   make test       - the whole test suite (what CI runs)
#   make test-fast  - the suite without the tests marked slow (the edit loop)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Most tests wait on brokers and child processes, so four workers fit two cores (one file per worker:
# a file's tests share fixtures); PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 4
XDIST := -n $(PYTEST_WORKERS) --dist loadfile

.PHONY: setup demo test test-fast mosquitto faketime chromium bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "==> [1/3] creating the virtual environment $(VENV)"
	python3 -m venv $(VENV)
	@echo "==> [2/3] installing torch 2.13.0, CPU build (about 200 MB; takes a few minutes)"
	$(PY) -m pip install --progress-bar on torch==2.13.0
	@echo "==> [3/3] installing fedmekt-edge with all extras"
	$(PY) -m pip install --progress-bar on -e '.[all]'
	touch $@
	@echo "==> ready: $(VENV)/bin/fedmekt"

demo: setup
	$(VENV)/bin/fedmekt simulate

# mosquitto is needed by the broker tests; installed only when missing (as root, or through sudo)
mosquitto:
	@if command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; then exit 0; fi; \
	echo "==> installing mosquitto (apt-get)"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
		echo "mosquitto is missing: install it as root (apt-get install -y mosquitto)"; exit 1; fi; \
	$$SUDO apt-get update -q && $$SUDO apt-get install -y -q mosquitto

# libfaketime shifts a test process's wall clock (the clock-skew test); installed only when missing, like mosquitto
faketime:
	@for lib in /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1; do \
		if [ -e "$$lib" ]; then exit 0; fi; done; \
	echo "==> installing libfaketime (apt-get)"; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
		echo "libfaketime is missing: install it as root (apt-get install -y faketime libfaketime)"; exit 1; fi; \
	$$SUDO apt-get update -q && $$SUDO apt-get install -y -q faketime libfaketime

# chromium drives the dashboard's browser test (slow); installed when missing and we may, else that test skips
chromium:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" -eq 0 ]; then SUDO=; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=sudo; \
	else echo "chromium is missing: the dashboard browser test will skip (apt-get install -y chromium)"; exit 0; fi; \
	echo "==> installing chromium (apt-get)"; \
	$$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium

test: setup mosquitto faketime chromium
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS); rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

test-fast: setup mosquitto
	$(PY) -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

bench: setup
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done
