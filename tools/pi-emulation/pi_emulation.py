"""Prove the Raspberry Pi install on an x86 Debian host, under aarch64 emulation (qemu-user + binfmt).

What a Pi user does, on the Pi's CPU cores as qemu models them (``QEMU_CPU``):

1. an arm64 Debian bookworm root (``mmdebstrap --arch=arm64``; cached, built once);
2. per CPU model, a venv in that root and ``pip install '<this project's wheel>[infer|train]'`` from PyPI,
   exactly as docs/raspberry-pi.md says: the inference-only gateway on the Cortex-A53 (Zero 2 W, Pi 3),
   the training gateway on the Cortex-A72 (Pi 4) and Cortex-A76 (Pi 5); then an import check (torch must be
   the CPU build the pyproject's aarch64 marker allows, with no CUDA package installed; the infer-only venv
   must have no torch);
3. one real round from inside the root against a mosquitto and a ``fedmekt aggregator`` on the host (with a
   signing key): every training gateway uploads its round, the aggregator publishes a signed package, and
   the infer-only gateway verifies and installs it and publishes predictions.

It prints each step's time per CPU model and writes them to ``<work>/results.json``. Slow (tens of
minutes under emulation), so it is not part of the test suite; tests/test_pi_emulation.py tests its pure
parts. Run it through ``tools/pi-emulation/run.sh`` (as root: it mounts inside a private mount namespace).

Each command in the root runs in a private mount namespace (``unshare --mount``) with /proc, /dev,
resolv.conf, the work folder and pip's cache bound in, and a Pi-like ``/proc/cpuinfo``: under qemu 7.2,
``import onnxruntime`` segfaults while parsing the host's x86 cpuinfo.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FEDERATION = "pi"
INFER_UNIT = "user22-exp44"  # the bundled demo recording the infer-only gateway classifies
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
ROOT_PACKAGES = "python3,python3-venv,ca-certificates"  # Debian packages of the root: what a Pi OS Lite has


@dataclass(frozen=True)
class CpuModel:
    """A Pi's core as qemu models it, and what /proc/cpuinfo says on that Pi."""

    name: str         # QEMU_CPU
    boards: str       # the Raspberry Pi models with this core
    part: str         # CPU part of /proc/cpuinfo
    features: str     # Features line of /proc/cpuinfo (the kernel's names)

    def cpuinfo(self, cores: int = 4) -> str:
        block = ("processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: " + self.features +
                 "\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x{variant}\n"
                 "CPU part\t: " + self.part + "\nCPU revision\t: {rev}\n\n")
        variant, rev = ("4", "1") if self.name == "cortex-a76" else ("0", "3")
        return "".join(block.format(i=i, variant=variant, rev=rev) for i in range(cores))


_V80 = "fp asimd evtstrm crc32 cpuid"
CPUS = {c.name: c for c in (
    CpuModel("cortex-a53", "Zero 2 W, 3", "0xd03", _V80),
    CpuModel("cortex-a72", "4", "0xd08", _V80),
    CpuModel("cortex-a76", "5", "0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
                                          "cpuid asimdrdm lrcpc dcpop asimddp"),
)}


@dataclass
class Plan:
    """What one run does (from the command line)."""

    infer_cpus: list[str]
    train_cpus: list[str]
    cache: Path
    work: Path
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    rebuild_root: bool = False
    round_timeout: float = 3600.0
    steps: tuple[str, ...] = ("install", "round")
    ca_bundle: Path | None = None
    reuse_venvs: bool = False

    @property
    def root(self) -> Path:
        return self.cache / f"{self.suite}-arm64"

    def gateways(self) -> list[tuple[str, str]]:
        """(cpu, kind) in run order; kind is "infer" or "train"."""
        return [(c, "infer") for c in self.infer_cpus] + [(c, "train") for c in self.train_cpus]


def _cpu_list(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for n in names:
        if n not in CPUS:
            near = difflib.get_close_matches(n, CPUS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise argparse.ArgumentTypeError(f"unknown CPU model {n!r}{hint}; one of {', '.join(CPUS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"CPU model listed twice in {text!r}")
    return names


def parse_args(argv: list[str] | None = None) -> Plan:
    """The plan of a run; bad arguments end with one ``pi-emulation: error: …`` line and exit code 2."""
    p = argparse.ArgumentParser(
        prog="pi-emulation", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CPU models: " + "; ".join(f"{c.name} (Raspberry Pi {c.boards})" for c in CPUS.values()))
    p.add_argument("--infer-cpus", type=_cpu_list, default=["cortex-a53"],
                   help="CPU models that run the inference-only gateway (default cortex-a53)")
    p.add_argument("--train-cpus", type=_cpu_list, default=["cortex-a72", "cortex-a76"],
                   help="CPU models that run a training gateway (default cortex-a72,cortex-a76)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("PI_EMULATION_CACHE",
                                                                     "/var/cache/fedmekt-pi-emulation")),
                   help="the arm64 root and pip's download cache (kept between runs; env PI_EMULATION_CACHE)")
    p.add_argument("--work", type=Path, default=Path("/var/tmp/fedmekt-pi-emulation"),
                   help="this run's files: wheel, keys, logs, results.json (emptied first)")
    p.add_argument("--suite", default="bookworm", help="Debian suite of the root (default bookworm: Raspberry "
                                                       "Pi OS 12's base, Python 3.11)")
    p.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror for mmdebstrap")
    p.add_argument("--rebuild-root", action="store_true", help="build the arm64 root again even when cached")
    p.add_argument("--round-timeout", type=float, default=3600.0,
                   help="seconds the emulated round may take (default 3600)")
    p.add_argument("--ca-bundle", type=Path, default=Path(HOST_CA) if Path(HOST_CA).exists() else None,
                   help="CA certificates pip in the root trusts (default: this host's, " + HOST_CA +
                        ", so a TLS-inspecting proxy the host trusts works there too)")
    p.add_argument("--reuse-venvs", action="store_true",
                   help="keep the gateways' venvs of an earlier run (times only the import check and the round)")
    p.add_argument("--only", choices=("root", "install", "round"),
                   help="stop after this step (root: build the root; install: venvs and import checks)")
    args = p.parse_args(argv)
    if not args.infer_cpus and not args.train_cpus:
        p.error("nothing to run: --infer-cpus and --train-cpus are both empty")
    both = sorted(set(args.infer_cpus) & set(args.train_cpus))
    if both:
        p.error(f"{both[0]} is in both --infer-cpus and --train-cpus: one gateway per CPU model")
    if args.only in (None, "round") and not args.train_cpus:
        p.error("the round needs a training gateway: give --train-cpus (or --only install)")
    if args.ca_bundle is not None and not args.ca_bundle.is_file():
        p.error(f"--ca-bundle {args.ca_bundle}: no such file")
    if args.round_timeout <= 0:
        p.error(f"--round-timeout must be positive, got {args.round_timeout:g}")
    steps = {"root": (), "install": ("install",), "round": ("install", "round"), None: ("install", "round")}
    return Plan(args.infer_cpus, args.train_cpus, args.cache.resolve(), args.work.resolve(), args.suite,
                args.mirror, args.rebuild_root, args.round_timeout, steps[args.only],
                args.ca_bundle.resolve() if args.ca_bundle else None, args.reuse_venvs)


# -- the packaging rule this run checks ------------------------------------------------------------------

def requirement_for(package: str, extra: str, machine: str, pyproject: Path = REPO / "pyproject.toml"):
    """The requirement on ``package`` that pip applies to ``pip install '.[extra]'`` on a Linux ``machine``
    with Python 3.11 (a ``packaging.requirements.Requirement``), or None when no line applies."""
    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    lines = project["dependencies"] + project["optional-dependencies"].get(extra, [])
    env = {"platform_machine": machine, "platform_system": "Linux", "sys_platform": "linux",
           "python_version": "3.11", "python_full_version": "3.11.2", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": extra}
    found = [r for r in map(Requirement, lines) if r.name == package and (r.marker is None or r.marker.evaluate(env))]
    if len(found) > 1:
        raise ValueError(f"{len(found)} requirements on {package} apply on {machine}: {[str(r) for r in found]}")
    return found[0] if found else None


# -- the emulated root -------------------------------------------------------------------------------

@dataclass
class EmulatedRoot:
    """Runs commands inside the arm64 root as a given CPU model, each in its own mount namespace."""

    path: Path
    work: Path
    pip_cache: Path
    ca_bundle: Path | None = None  # bound over the root's CA bundle, which pip then uses (PIP_CERT)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def prepare(self, cpu: str) -> None:
        """The Pi-like cpuinfo and the mount points the command's mounts need."""
        (self.work / f"cpuinfo-{cpu}").write_text(CPUS[cpu].cpuinfo())
        for d in ("proc", "sys", "dev", "etc/ssl/certs", str(self.work).lstrip("/"), "root/.cache/pip"):
            (self.path / d).mkdir(parents=True, exist_ok=True)
        (self.path / HOST_CA.lstrip("/")).touch()
        resolv = self.path / "etc/resolv.conf"
        if resolv.is_symlink() or not resolv.exists():
            resolv.unlink(missing_ok=True)
            resolv.touch()

    def argv(self, cpu: str, command: list[str]) -> list[str]:
        """``command`` as ``cpu`` in the root, in a private mount namespace (its mounts vanish with it)."""
        cpuinfo = self.work / f"cpuinfo-{cpu}"
        r = shlex.quote(str(self.path))
        mounts = "; ".join([
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /sys {r}/sys",  # onnxruntime's cpuinfo reads the CPU lists there
            f"mount --bind {shlex.quote(str(cpuinfo))} {r}/proc/cpuinfo",
            f"mount --rbind /dev {r}/dev",
            f"mount --bind /etc/resolv.conf {r}/etc/resolv.conf",
            f"mount --bind {shlex.quote(str(self.work))} {r}{shlex.quote(str(self.work))}",
            f"mount --bind {shlex.quote(str(self.pip_cache))} {r}/root/.cache/pip",
        ] + ([f"mount --bind {shlex.quote(str(self.ca_bundle))} {r}{HOST_CA}"] if self.ca_bundle else []))
        env = [f"QEMU_CPU={cpu}", "HOME=/root", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1",
               "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_PROGRESS_BAR=off", f"PIP_CERT={HOST_CA}",
               "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
        script = f"set -e; {mounts}; exec chroot {r} /usr/bin/env -i {' '.join(env)} \"$@\""
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script, "sh", *command]

    def run(self, cpu: str, command: list[str], log: Path, timeout: float) -> float:
        """Run to the end; seconds taken. A failure raises with the end of the log."""
        start = time.monotonic()
        with open(log, "ab") as out:
            out.write(f"$ QEMU_CPU={cpu} {shlex.join(command)}\n".encode())
            out.flush()
            self.prepare(cpu)
            proc = subprocess.Popen(self.argv(cpu, command), stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, "QEMU_CPU": cpu}, start_new_session=True)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                raise StepFailed(f"{shlex.join(command)} on {cpu} ran past {timeout:.0f} s", log) from None
        if rc != 0:
            raise StepFailed(f"{shlex.join(command)} on {cpu} exited with {rc}", log)
        return time.monotonic() - start

    def spawn(self, cpu: str, command: list[str], log: Path) -> subprocess.Popen:
        self.prepare(cpu)
        out = open(log, "wb")
        proc = subprocess.Popen(self.argv(cpu, command), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "QEMU_CPU": cpu}, start_new_session=True)
        out.close()
        self.procs.append(proc)
        return proc


class StepFailed(Exception):
    def __init__(self, what: str, log: Path | None = None):
        tail = ""
        if log is not None and log.exists():
            tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        super().__init__(f"{what}{tail}")


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def check_host(plan: Plan) -> None:
    """One clear line for each thing the host lacks."""
    if os.geteuid() != 0:
        raise StepFailed("run as root: the emulated root is entered with chroot and bind mounts")
    missing = [t for t in ("unshare", "chroot", "mount") if shutil.which(t) is None]
    if plan.rebuild_root or not (plan.root / ".fedmekt-root").exists():
        missing += [t for t in ("mmdebstrap",) if shutil.which(t) is None]
    if missing:
        raise StepFailed(f"missing on this host: {', '.join(missing)} (apt-get install -y mmdebstrap util-linux)")
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if os.uname().machine != "aarch64" and not binfmt.exists():
        raise StepFailed("aarch64 binaries do not run here: apt-get install -y qemu-user-static binfmt-support "
                         "(and `update-binfmts --enable qemu-aarch64` where binfmt_misc was not mounted)")
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists() and "round" in plan.steps:
        raise StepFailed("mosquitto is not installed (apt-get install -y mosquitto)")


def build_root(plan: Plan) -> float | None:
    """The cached arm64 root (None: it was there already); built into a temporary folder, then renamed."""
    recipe = f"{plan.suite} arm64 minbase {ROOT_PACKAGES}\n"
    stamp = plan.root / ".fedmekt-root"
    if not plan.rebuild_root and stamp.exists() and stamp.read_text() == recipe:
        return None
    start = time.monotonic()
    tmp = plan.root.with_name(plan.root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plan.cache.mkdir(parents=True, exist_ok=True)
    log = plan.work / "mmdebstrap.log"
    with open(log, "wb") as out:
        rc = subprocess.call(["mmdebstrap", "--arch=arm64", "--variant=minbase",
                              f"--include={ROOT_PACKAGES}", plan.suite, str(tmp), plan.mirror],
                             stdout=out, stderr=subprocess.STDOUT)
    if rc != 0:
        raise StepFailed(f"mmdebstrap exited with {rc}", log)
    shutil.rmtree(plan.root, ignore_errors=True)
    tmp.rename(plan.root)
    stamp.write_text(recipe)
    return time.monotonic() - start


# -- install -----------------------------------------------------------------------------------------

CHECK_TRAIN = """\
import ctypes, importlib.metadata as md, json, sys
import torch
hwcap = ctypes.CDLL(None).getauxval(16)
names = [d.metadata["Name"].lower() for d in md.distributions()]
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "lse_atomics": bool(hwcap & 256),
                  "gpu_packages": sorted(n for n in names if n.startswith(("nvidia-", "cuda-", "triton")))}))
"""
CHECK_INFER = """\
import ctypes, importlib.util, json
import onnxruntime
hwcap = ctypes.CDLL(None).getauxval(16)
print(json.dumps({"onnxruntime": onnxruntime.__version__, "torch": importlib.util.find_spec("torch") is not None,
                  "lse_atomics": bool(hwcap & 256)}))
"""


def venv(cpu: str) -> Path:
    """The gateway's venv inside the root, one per CPU model."""
    return Path("/opt/fedmekt-emu") / cpu


def install(root: EmulatedRoot, plan: Plan, cpu: str, kind: str, wheel: Path) -> dict:
    """A fresh venv with the gateway's extra from PyPI, then the import check; the step times and facts."""
    env_dir = venv(cpu)
    log = plan.work / f"install-{cpu}.log"
    took: dict[str, float] = {}
    if not (plan.reuse_venvs and (root.path / str(env_dir).lstrip("/") / "bin/fedmekt").exists()):
        shutil.rmtree(root.path / str(env_dir).lstrip("/"), ignore_errors=True)
        took["venv"] = root.run(cpu, ["python3", "-m", "venv", str(env_dir)], log, 900)
        took["pip install"] = root.run(cpu, [f"{env_dir}/bin/pip", "install", f"{wheel}[{kind}]"], log, 7200)
    probe = plan.work / f"check-{cpu}.json"
    start = time.monotonic()
    root.run(cpu, ["/bin/sh", "-c", f"{env_dir}/bin/python -c {shlex.quote(CHECK_TRAIN if kind == 'train' else CHECK_INFER)}"
                                    f" > {probe}"], log, 900)
    took["import check"] = time.monotonic() - start
    facts = json.loads(probe.read_text())
    size = subprocess.run(["du", "-sm", str(root.path / str(env_dir).lstrip("/"))], capture_output=True, text=True)
    facts["venv_mib"] = int(size.stdout.split()[0]) if size.returncode == 0 else None
    if kind == "train":
        spec = requirement_for("torch", "train", "aarch64")
        if spec is None or not spec.specifier.contains(facts["torch"].split("+")[0]):
            raise StepFailed(f"{cpu}: pip installed torch {facts['torch']}, outside the aarch64 requirement {spec}")
        if facts["cuda"] is not None or facts["gpu_packages"]:
            raise StepFailed(f"{cpu}: a CUDA build came in: cuda {facts['cuda']}, {facts['gpu_packages']}")
    elif facts["torch"]:
        raise StepFailed(f"{cpu}: the inference-only install pulled torch")
    return {"steps": took, "facts": facts}


# -- the round ---------------------------------------------------------------------------------------

@dataclass
class Recorder:
    """Arrival time of the federation's messages on the host broker (topic -> [monotonic times])."""

    seen: dict[str, list[float]] = field(default_factory=dict)
    announcements: list[tuple[float, bytes]] = field(default_factory=list)  # (time, signed payload)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_message(self, client, userdata, msg) -> None:
        now = time.monotonic()
        online = msg.topic.endswith("/status") and b'"online"' in msg.payload
        with self.lock:
            self.seen.setdefault(msg.topic + ("#online" if online else ""), []).append(now)
            if msg.topic.endswith("/rounds"):
                self.announcements.append((now, bytes(msg.payload)))

    def opened(self, round_: int) -> float | None:
        """When the announcement that opens ``round_`` (counted from 0) arrived; the topic carries others too."""
        from fedmekt.wire.signing import unwrap

        with self.lock:
            seen = list(self.announcements)
        for t, payload in seen:
            plan = json.loads(unwrap(payload)).get("plan") if payload else None
            if plan and plan.get("round") == round_:
                return t
        return None

    def first(self, topic: str) -> float | None:
        with self.lock:
            times = self.seen.get(topic, [])
            return min(times) if times else None

    def last(self, topic: str) -> float | None:
        with self.lock:
            times = [t for k, ts in self.seen.items() if k.startswith(topic) for t in ts]
        return max(times) if times else None

    def count(self, topic: str) -> int:
        with self.lock:
            return len(self.seen.get(topic, []))


def _host_fedmekt(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedmekt_cli", *args]


def run_round(root: EmulatedRoot, plan: Plan) -> dict:
    """Aggregator and mosquitto on the host, the gateways in the root; per CPU model the round's times."""
    import paho.mqtt.client as mqtt

    from fedmekt.transport.broker import start_mosquitto
    from fedmekt.errors import UserError

    work = plan.work
    config = work / "federation.toml"
    n = len(plan.train_cpus)
    config.write_text(f'federation = "{FEDERATION}"\ndataset = "demo"\nclients = [0, 0, {n}]\nper_round = {n}\n'
                      f'rounds = 1\nseed = 0\ndevice = "cpu"\nthreads = 1\n')
    host_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    _host_step(_host_fedmekt("export", "keygen", "--out", str(work / "aggregator")), host_env)
    try:
        broker = start_mosquitto(workdir=work / "mosquitto")
    except UserError as exc:
        raise StepFailed(str(exc)) from None
    url = f"mqtt://127.0.0.1:{broker.port}"
    rec = Recorder()
    monitor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pi-emulation-monitor")
    subscribed = threading.Event()
    monitor.on_message = rec.on_message
    monitor.on_connect = lambda c, u, f, rc, p: c.subscribe(f"fedmekt/{FEDERATION}/#", qos=1)
    monitor.on_subscribe = lambda c, u, mid, rcs, p: subscribed.set()
    monitor.connect("127.0.0.1", broker.port)
    monitor.loop_start()
    procs: dict[str, subprocess.Popen] = {}
    started: dict[str, float] = {}
    # training gateways take their partition of the split (ids c000, c001, …); an infer-only one any id
    ids = {cpu: f"c{i:03d}" for i, cpu in enumerate(plan.train_cpus)}
    ids.update({cpu: "pi-" + cpu.removeprefix("cortex-") for cpu in plan.infer_cpus})
    try:
        if not subscribed.wait(30):
            raise StepFailed("the monitor could not subscribe to the host mosquitto")
        for cpu, kind in plan.gateways():
            cid, env_dir = ids[cpu], venv(cpu)
            common = ["--broker", url, "--client-id", cid, "--federation", FEDERATION,
                      "--public-key", str(work / "aggregator.pub"), "--store", str(work / cid / "store.sqlite")]
            if kind == "train":
                argv = [f"{env_dir}/bin/fedmekt", "client", *common, "--source", f"split:{config}",
                        "--exit-when-done"]
            else:
                argv = [f"{env_dir}/bin/fedmekt", "client", "--infer-only", *common,
                        "--source", f"replay:demo:{INFER_UNIT}", "--modalities", "acce:3"]
            started[cpu] = time.monotonic()
            procs[cpu] = root.spawn(cpu, argv, work / f"gateway-{cpu}.log")
        agg_log = open(work / "aggregator.log", "wb")
        procs["aggregator"] = subprocess.Popen(_host_fedmekt(
            "aggregator", "--broker", url, "--config", str(config), "--out", str(work / "aggregator-run"),
            "--signing-key", str(work / "aggregator.key"), "--package-every", "0", "--wait-clients", str(n),
            "--wait-timeout", str(plan.round_timeout), "--round-timeout", str(plan.round_timeout),
            "--resend-after", "0", "--no-progress"), stdout=agg_log, stderr=subprocess.STDOUT, env=host_env,
            cwd=work, start_new_session=True)
        agg_log.close()
        deadline = time.monotonic() + plan.round_timeout
        waiting = dict(procs)
        while waiting:
            for name, proc in list(waiting.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                del waiting[name]
                if rc != 0:
                    log = work / ("aggregator.log" if name == "aggregator" else f"gateway-{name}.log")
                    raise StepFailed(f"{name} exited with {rc} during the round", log)
            if time.monotonic() > deadline:
                raise StepFailed(f"the round ran past {plan.round_timeout:.0f} s; still running: "
                                 f"{', '.join(waiting)}", work / "aggregator.log")
            time.sleep(1)
        prefix = f"fedmekt/{FEDERATION}"
        announced = rec.opened(0)
        package = rec.first(f"{prefix}/models/manifest")
        out = {}
        for cpu, kind in plan.gateways():
            cid = ids[cpu]
            online = rec.first(f"{prefix}/clients/{cid}/status#online")
            steps = {"start to online": _span(started[cpu], online)}
            if kind == "train":
                uploaded = rec.last(f"{prefix}/clients/{cid}/upload/0/")
                if uploaded is None:
                    raise StepFailed(f"{cpu} ({cid}) uploaded nothing in round 1", work / f"gateway-{cpu}.log")
                steps["round announced to upload"] = _span(announced, uploaded)
                steps["trained (its log)"] = _trained_seconds(work / f"gateway-{cpu}.log")
            else:
                topic = f"{prefix}/clients/{cid}/inference"
                first = rec.first(topic)
                if first is None:
                    raise StepFailed(f"{cpu} ({cid}) published no prediction", work / f"gateway-{cpu}.log")
                steps["package to first prediction"] = _span(package, first)
                steps["first to last prediction"] = _span(first, rec.last(topic))
                steps["predictions"] = rec.count(topic)
            out[cpu] = steps
        return out
    finally:
        for proc in procs.values():
            _kill(proc)
        monitor.loop_stop()
        monitor.disconnect()
        broker.stop()


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else end - start


def _trained_seconds(log: Path) -> float | None:
    """The training time the gateway logs: "round 1 trained on N samples (…) in X s"."""
    for line in log.read_text(errors="replace").splitlines():
        if " trained on " in line and " in " in line:
            try:
                return float(line.rsplit(" in ", 1)[1].split(" s")[0])
            except ValueError:
                return None
    return None


# -- main ----------------------------------------------------------------------------------------------

WORK_MARK = ".pi-emulation-work"


def prepare_work(work: Path) -> None:
    """Empty the work folder of an earlier run; never a folder this tool did not make."""
    if work.exists() and any(work.iterdir()) and not (work / WORK_MARK).exists():
        raise StepFailed(f"--work {work} is not empty and not an earlier run's folder: give another one")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / WORK_MARK).touch()


def build_wheel(plan: Plan) -> Path:
    dist = plan.work / "dist"
    _host_step([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(REPO),
                "-w", str(dist)], os.environ)
    return next(dist.glob("fedmekt_edge-*.whl"))


def _host_step(command: list[str], env) -> None:
    """A quick command on the host; its failure is one StepFailed with the end of its output."""
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise StepFailed(f"{shlex.join(command)} exited with {proc.returncode}\n{tail}")


def report(results: dict) -> str:
    lines = []
    for cpu, r in results["gateways"].items():
        lines.append(f"{cpu} (Raspberry Pi {CPUS[cpu].boards}), {r['kind']} gateway:")
        for step, value in {**r.get("install", {}), **r.get("round", {})}.items():
            shown = "-" if value is None else (f"{value}" if isinstance(value, int) else f"{value:7.1f} s")
            lines.append(f"  {step:30s} {shown}")
        if "facts" in r:
            lines.append(f"  {json.dumps(r['facts'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        plan = parse_args(argv)
        check_host(plan)
        prepare_work(plan.work)
        (plan.cache / "pip").mkdir(parents=True, exist_ok=True)
        results: dict = {"plan": {"infer": plan.infer_cpus, "train": plan.train_cpus}, "gateways": {}}
        print(f"pi-emulation: arm64 {plan.suite} root in {plan.root}", flush=True)
        built = build_root(plan)
        results["root_build_s"] = built
        print("  root: cached" if built is None else f"  root: built in {built:.0f} s", flush=True)
        root = EmulatedRoot(plan.root, plan.work, plan.cache / "pip", plan.ca_bundle)
        if "install" in plan.steps:
            wheel = build_wheel(plan)
            for cpu, kind in plan.gateways():
                print(f"  {cpu}: installing the {kind} gateway …", flush=True)
                got = install(root, plan, cpu, kind, wheel)
                results["gateways"][cpu] = {"kind": kind, "install": got["steps"], "facts": got["facts"]}
                print(report({"gateways": {cpu: results["gateways"][cpu]}}), flush=True)
        if "round" in plan.steps:
            print("  the round: aggregator and mosquitto on the host, the gateways emulated …", flush=True)
            for cpu, steps in run_round(root, plan).items():
                results["gateways"][cpu]["round"] = steps
        results["host"] = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg()}
        (plan.work / "results.json").write_text(json.dumps(results, indent=2))
        print("\n" + report(results))
        print(f"\npi-emulation: done on {os.cpu_count()} host CPUs (load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}); logs and results.json in {plan.work}")
        return 0
    except StepFailed as exc:
        print(f"pi-emulation: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
