"""Atomic model swap: a gateway killed (SIGKILL) anywhere in an installation keeps a valid model."""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.install import ModelStore
from export.package import MANIFEST, Manifest, load_private_key, load_public_key, sign_package
from export_support import REPO, built_package, signing_keys

STEPS = ("wrote manifest.json", "wrote manifest.sig", "wrote acce.onnx", "wrote gyro.onnx", "staged", "renamed",
         "switched", "cleaned")

# Installs argv[3] into the store argv[1] with public key argv[2]; prints each durable step and
# freezes at step argv[4] (if given) until the test kills it.
CHILD = """
import sys, time
from pathlib import Path
from export.install import ModelStore
from export.package import load_public_key
store = ModelStore(Path(sys.argv[1]), load_public_key(Path(sys.argv[2])))
stop = sys.argv[4] if len(sys.argv) > 4 else None
print("ready", flush=True)
def step(name):
    print(name, flush=True)
    if name == stop:
        time.sleep(60)
store.install(Path(sys.argv[3]), on_step=step)
print("done", flush=True)
"""


@pytest.fixture
def packages(data_dir, tmp_path_factory, tmp_path):
    """(old, new): the HAPT package at round 3 and the same re-signed as round 4."""
    old = built_package("hapt", data_dir, tmp_path_factory)
    new = Path(shutil.copytree(old, tmp_path / "new"))
    manifest = Manifest.from_bytes((new / MANIFEST).read_bytes())
    sign_package(new, Manifest(**{**manifest.__dict__, "round": manifest.round + 1}),
                 load_private_key(signing_keys(tmp_path_factory)[0]))
    return old, new


def child(store: Path, public: Path, package: Path, stop: str | None = None) -> subprocess.Popen:
    args = [sys.executable, "-c", CHILD, str(store), str(public), str(package)] + ([stop] if stop else [])
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)


def assert_old_or_new(store: ModelStore, rounds: set[int]) -> int:
    current = store.current()  # verifies signature and hashes of what is in service
    assert current is not None and current.package.manifest.round in rounds
    return current.package.manifest.round


@pytest.mark.parametrize("stop", STEPS)
def test_kill_at_each_step_leaves_old_or_new(stop, packages, tmp_path, tmp_path_factory):
    old, new = packages
    public = signing_keys(tmp_path_factory)[1]
    store = ModelStore(tmp_path / "store", load_public_key(public))
    store.install(old)
    proc = child(store.root, public, new, stop)
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if seen[-1] == stop:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert seen[-1] == stop and "done" not in seen
    expected = 4 if STEPS.index(stop) >= STEPS.index("switched") else 3
    assert assert_old_or_new(store, {3, 4}) == expected
    # the next installation cleans up after the killed one and completes
    store.install(new)
    assert assert_old_or_new(store, {4}) == 4
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging-")]


def test_kill_at_random_times(packages, tmp_path, tmp_path_factory):
    """Kills between the named steps too (mid-write, mid-fsync): still old or new, and the next install works."""
    old, new = packages
    public = signing_keys(tmp_path_factory)[1]
    rng = random.Random(5)
    for i in range(6):
        store = ModelStore(tmp_path / f"store{i}", load_public_key(public))
        store.install(old)
        proc = child(store.root, public, new)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.015))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert_old_or_new(store, {3, 4})
        store.install(new)
        assert_old_or_new(store, {4})
