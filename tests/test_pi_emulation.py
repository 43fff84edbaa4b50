"""The pure parts of the Raspberry Pi install: which torch pip may pick on a Pi, and tools/pi-emulation's
arguments. The emulated install and round themselves take tens of minutes (tools/pi-emulation/run.sh).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "pi-emulation" / "pi_emulation.py"
_spec = importlib.util.spec_from_file_location("pi_emulation", SCRIPT)
pi = importlib.util.module_from_spec(_spec)
sys.modules["pi_emulation"] = pi  # dataclasses look their module up
_spec.loader.exec_module(pi)


# 2.9.1: CPU build, runs on ARMv8.0; 2.10.x: illegal instruction on ARMv8.0 (Pi 3 / Zero 2 W / Pi 4);
# 2.11 on: CUDA builds on PyPI's aarch64 (2.13.0+cu130 with 2.7 GB of CUDA wheels)
@pytest.mark.parametrize("version, on_pi", [("2.3.0", True), ("2.9.1", True), ("2.10.0", False), ("2.10.1", False),
                                            ("2.11.0", False), ("2.13.0", False), ("2.2.2", False)])
def test_a_pi_gets_only_cpu_torch_that_runs_on_armv8_0(version, on_pi):
    spec = pi.requirement_for("torch", "train", "aarch64")
    assert spec.specifier.contains(version) is on_pi


@pytest.mark.parametrize("version, allowed", [("2.13.0", True), ("2.10.0", True), ("2.15.0", True),
                                              ("2.2.2", False)])
def test_x86_keeps_its_torch_requirement(version, allowed):
    spec = pi.requirement_for("torch", "train", "x86_64")
    assert str(spec.specifier) == ">=2.3"  # the CI installs torch==2.13.0 first; unchanged
    assert spec.specifier.contains(version) is allowed


def test_the_inference_only_install_has_no_torch_on_any_machine():
    for machine in ("aarch64", "x86_64"):
        assert pi.requirement_for("torch", "infer", machine) is None
        assert pi.requirement_for("onnxruntime", "infer", machine) is not None


def test_two_torch_lines_for_one_machine_are_refused(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = []\n[project.optional-dependencies]\n'
                         'train = ["torch>=2.3", "torch<2.10; platform_machine == \'aarch64\'"]\n')
    assert str(pi.requirement_for("torch", "train", "x86_64", pyproject).specifier) == ">=2.3"
    with pytest.raises(ValueError, match="2 requirements on torch apply on aarch64"):
        pi.requirement_for("torch", "train", "aarch64", pyproject)


def test_defaults_run_infer_only_on_the_a53_and_training_on_the_a72_and_a76(tmp_path):
    plan = pi.parse_args(["--cache", str(tmp_path / "c"), "--work", str(tmp_path / "w")])
    assert plan.gateways() == [("cortex-a53", "infer"), ("cortex-a72", "train"), ("cortex-a76", "train")]
    assert plan.steps == ("install", "round")
    assert plan.root == tmp_path / "c" / "bookworm-arm64"
    assert not plan.reuse_venvs and pi.parse_args(["--reuse-venvs"]).reuse_venvs
    assert pi.parse_args(["--only", "root"]).steps == ()
    assert pi.parse_args(["--only", "install", "--train-cpus", ""]).gateways() == [("cortex-a53", "infer")]


@pytest.mark.parametrize("argv, message", [
    (["--train-cpus", "cortex-a75"], "unknown CPU model 'cortex-a75' (did you mean 'cortex-a76'?)"),
    (["--infer-cpus", "cortex-a72"], "cortex-a72 is in both --infer-cpus and --train-cpus"),
    (["--train-cpus", "cortex-a72,cortex-a72"], "CPU model listed twice"),
    (["--train-cpus", ""], "the round needs a training gateway"),
    (["--infer-cpus", "", "--train-cpus", "", "--only", "install"], "nothing to run"),
    (["--round-timeout", "0"], "--round-timeout must be positive"),
    (["--ca-bundle", "/nonexistent/ca.crt"], "--ca-bundle /nonexistent/ca.crt: no such file"),
])
def test_bad_arguments_are_one_line_and_exit_2(argv, message):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("pi-emulation: error: ") and message in last, proc.stderr


def test_a_work_folder_it_did_not_make_is_never_emptied(tmp_path):
    (tmp_path / "precious.txt").write_text("keep")
    with pytest.raises(pi.StepFailed, match="not an earlier run's folder"):
        pi.prepare_work(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep"
    pi.prepare_work(tmp_path / "run")
    (tmp_path / "run" / "old.log").write_text("x")
    pi.prepare_work(tmp_path / "run")  # an earlier run's folder: emptied
    assert [p.name for p in (tmp_path / "run").iterdir()] == [pi.WORK_MARK]


def test_the_emulated_cpuinfo_names_each_pi_core():
    """onnxruntime reads /proc/cpuinfo; the host's x86 one makes it segfault under qemu 7.2."""
    parts = {name: cpu.cpuinfo().count(f"CPU part\t: {cpu.part}\n") for name, cpu in pi.CPUS.items()}
    assert parts == {"cortex-a53": 4, "cortex-a72": 4, "cortex-a76": 4}
    assert "atomics" in pi.CPUS["cortex-a76"].features and "atomics" not in pi.CPUS["cortex-a72"].features


def test_the_emulated_command_mounts_the_fake_cpuinfo_in_a_private_namespace(tmp_path):
    root = pi.EmulatedRoot(tmp_path / "root", tmp_path / "work", tmp_path / "pip", tmp_path / "ca.crt")
    (tmp_path / "work").mkdir()
    root.prepare("cortex-a72")
    argv = root.argv("cortex-a72", ["python3", "-c", "print(1)"])
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert f"mount --rbind /sys {tmp_path / 'root'}/sys" in argv[7]
    assert f"mount --bind {tmp_path / 'work' / 'cpuinfo-cortex-a72'} {tmp_path / 'root'}/proc/cpuinfo" in argv[7]
    assert f"mount --bind {tmp_path / 'ca.crt'} {tmp_path / 'root'}/etc/ssl/certs/ca-certificates.crt" in argv[7]
    assert "QEMU_CPU=cortex-a72" in argv[7] and argv[-3:] == ["python3", "-c", "print(1)"]
    assert "CPU part\t: 0xd08" in (tmp_path / "work" / "cpuinfo-cortex-a72").read_text()
