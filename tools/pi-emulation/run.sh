#!/bin/sh
# Prove the Raspberry Pi install under aarch64 emulation on an x86 Debian host (as root):
#   apt-get install -y qemu-user-static binfmt-support mmdebstrap mosquitto
#   tools/pi-emulation/run.sh [--infer-cpus cortex-a53] [--train-cpus cortex-a72,cortex-a76] [--only root|install]
# Builds (once, cached) an arm64 bookworm root, pip-installs the gateways in it per emulated CPU model and
# runs one real round against a mosquitto and an aggregator on this host; prints each step's time.
# CPU-heavy for tens of minutes: it runs at nice 10. The host side needs this checkout's venv (make setup).
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
py=${PYTHON:-$repo/.venv/bin/python}
if [ ! -x "$py" ]; then
    echo "pi-emulation: error: no Python with this project at $py (make setup, or PYTHON=/path/to/python)" >&2
    exit 2
fi
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec nice -n 10 "$py" "$repo/tools/pi-emulation/pi_emulation.py" "$@"
