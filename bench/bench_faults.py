"""Faults injected and survived, bad inputs tried and rejected, rounds or samples lost.

Runs the security, fault, availability, bad-input and privacy tests (real mosquitto, real
processes) and prints the tally they record (tests/fault_ledger.py): per attack or fault how
often it was tried and refused or survived, and how many rounds it stalled (closed short of
their selection because a client that could never upload was chosen). Usage::

    .venv/bin/python bench/bench_faults.py            # all of them (a few minutes on 2 cores)
    .venv/bin/python bench/bench_faults.py --quick    # skip the tests marked slow

Exit status is non-zero if any test failed, anything was lost or a round stalled.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PATTERNS = ("test_security_*.py", "test_faults_*.py", "test_availability_*.py", "test_bad_input_*.py",
            "test_privacy_*.py")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="skip tests marked slow")
    args = parser.parse_args()
    files = sorted(str(p.relative_to(REPO)) for pat in PATTERNS for p in (REPO / "tests").glob(pat))
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
        if args.quick:
            cmd += ["-m", "not slow"]
        t0 = time.monotonic()
        done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "FEDMEKT_FAULT_LEDGER": str(ledger)},
                              capture_output=True, text=True)
        seconds = time.monotonic() - t0
        rows = json.loads(ledger.read_text()) if ledger.exists() else []
    summary = [line for line in done.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    print(f"tests: {summary[-1] if summary else done.stdout[-400:]}  ({seconds:.0f} s, {len(files)} files)")
    print(f"{'kind':<10} {'what':<58} {'tried':>7} {'handled':>8} {'valid':>6} {'lost':>5} {'stalled':>8}")
    for r in rows:
        print(f"{r['kind']:<10} {r['what']:<58} {r['tried']:>7} {r['handled']:>8} {r['accepted']:>6} {r['lost']:>5} "
              f"{r['stalled']:>8}")
    lost = sum(r["lost"] for r in rows)
    stalled = sum(r["stalled"] for r in rows)
    for kind, verb in (("fault", "survived"), ("bad input", "rejected"), ("attack", "refused"),
                       ("privacy", "private rows absent from every published byte")):
        sel = [r for r in rows if r["kind"] == kind]
        tried, handled = sum(r["tried"] for r in sel), sum(r["handled"] for r in sel)
        valid = sum(r["accepted"] for r in sel)
        extra = f" ({valid} mutations left the input valid and were accepted unchanged)" if valid else ""
        label = "privacy checks" if kind == "privacy" else f"{kind}s"
        print(f"{label}: {tried} tried, {handled} {verb}{extra}")
    print(f"rounds or samples lost: {lost}")
    print(f"rounds stalled: {stalled}")
    if done.returncode != 0:
        print(done.stdout[-3000:], file=sys.stderr)
    return 1 if done.returncode != 0 or lost or stalled else 0


if __name__ == "__main__":
    sys.exit(main())
