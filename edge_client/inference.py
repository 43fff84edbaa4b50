"""Streaming sliding-window activity recognition with onnxruntime only (no torch on this path).

A :class:`StreamingRecognizer` takes raw sensor rows as they arrive (any batch sizes),
normalises them with the package's statistics, cuts windows of the package's length at
its stride (counted from the first row), and classifies each window from a zero LSTM
state, like training and evaluation do. The label of a window is the argmax of the head
at its last step — the step that has seen the whole window — stamped with that row's
timestamp; the confidence is the softmax probability of that label.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from export.install import CURRENT, VERSIONS, InstalledModel
from export.package import MANIFEST, PackageError, VerifiedPackage, verify_package
from export.runtime import session_options
from fedmekt.errors import UserError
from fedmekt.wire.runs import run_label

log = logging.getLogger(__name__)

MAX_BATCH = 256  # windows per onnxruntime call; bounds memory when a source delivers a large backlog


class BatchLike(Protocol):
    """What sensor sources yield (sensors' SampleBatch): timestamps [n] and {modality: float32 [n, C]}."""

    timestamps: np.ndarray
    modalities: dict[str, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    t: float
    label: str
    confidence: float
    index: int

    def to_json(self) -> str:
        return json.dumps({"t": self.t, "label": self.label, "confidence": round(self.confidence, 6)})


def resolve_package_dir(path: Path) -> Path:
    """A package directory itself, or a gateway model store whose ``current`` names one."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    if (path / CURRENT).is_file():
        name = (path / CURRENT).read_text().strip()
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"{path / CURRENT} does not name an installed package")
        return path / VERSIONS / name
    raise UserError(f"{path} is neither a model package ({MANIFEST}) nor a model store ({CURRENT})")


class StreamingRecognizer:
    """Sliding-window recognition over one modality of a verified package."""

    def __init__(self, package: VerifiedPackage, modality: str | None = None, *, stride: int | None = None,
                 threads: int = 1) -> None:
        manifest = package.manifest
        self.modality = modality or manifest.modalities[0]
        if self.modality not in manifest.modalities:
            raise UserError(f"package has no {self.modality!r} encoder (it has {', '.join(manifest.modalities)})")
        self.package = package
        self.entry = manifest.model(self.modality)
        self.window = manifest.window
        self.stride = int(stride or manifest.stride)
        if not 1 <= self.stride <= self.window:
            raise UserError(f"stride must be between 1 and the window length {self.window}, got {self.stride}")
        self.labels = manifest.label_names
        self.session = ort.InferenceSession(package.onnx_bytes(self.modality), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self._rows = np.zeros((0, self.entry.channels), np.float32)  # normalised rows from the next window start on
        self._times = np.zeros(0, np.float64)
        self._unit: str | None = None
        self._warned_nonfinite = False

    @classmethod
    def open(cls, path: Path, public_key: Ed25519PublicKey | None, modality: str | None = None,
             **kwargs) -> "StreamingRecognizer":
        """Verify the package at ``path`` (signature when a key is given, hashes always) and load it."""
        return cls(verify_package(resolve_package_dir(path), public_key), modality, **kwargs)

    def classify(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Label index and confidence of normalised windows [n, W, C] (last-step softmax)."""
        idx, conf = [], []
        for i in range(0, len(windows), MAX_BATCH):
            logits = self.session.run(["logits"], {"x": windows[i:i + MAX_BATCH]})[0][:, -1, :]
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            idx.append(p.argmax(-1))
            conf.append(p.max(-1))
        if not idx:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        return np.concatenate(idx), np.concatenate(conf)

    def push(self, timestamps: np.ndarray, x: np.ndarray) -> list[Prediction]:
        """Add raw rows [n, C] of this modality; return the predictions of every window completed."""
        x = np.asarray(x, np.float32)
        if x.ndim != 2 or x.shape[1] != self.entry.channels or len(timestamps) != len(x):
            raise ValueError(f"{self.modality}: expected [n, {self.entry.channels}] rows with n timestamps, "
                             f"got {x.shape} and {len(timestamps)}")
        z = self.entry.normalise(x)
        if not np.isfinite(z).all():
            if not self._warned_nonfinite:
                log.warning("%s: non-finite sensor values replaced by the training mean", self.modality)
                self._warned_nonfinite = True
            z = np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0)
        rows = np.concatenate([self._rows, z])
        times = np.concatenate([self._times, np.asarray(timestamps, np.float64)])
        n = 0 if len(rows) < self.window else (len(rows) - self.window) // self.stride + 1
        if n == 0:
            self._rows, self._times = rows, times
            return []
        views = np.lib.stride_tricks.sliding_window_view(rows, self.window, axis=0)[: n * self.stride: self.stride]
        windows = np.ascontiguousarray(views.transpose(0, 2, 1))
        ends = times[np.arange(n) * self.stride + self.window - 1]
        self._rows, self._times = rows[n * self.stride:], times[n * self.stride:]
        idx, conf = self.classify(windows)
        return [Prediction(float(t), self.labels[i], float(c), int(i)) for t, i, c in zip(ends, idx, conf)]

    def reset(self) -> None:
        """Forget buffered rows: the next window starts with the next row."""
        self._rows, self._times = self._rows[:0], self._times[:0]

    def feed(self, batch: BatchLike) -> list[Prediction]:
        """:meth:`push` this recognizer's modality of a sensor batch (other modalities are ignored).

        A batch from another unit (a replay moving to the next recording, a new device
        session) starts a new stream: windows never straddle two units.
        """
        unit = getattr(batch, "unit", None)
        if unit != self._unit:
            self.reset()
            self._unit = unit
        x = batch.modalities.get(self.modality)
        return [] if x is None else self.push(batch.timestamps, x)

    def run(self, batches: Iterable[BatchLike]) -> Iterator[Prediction]:
        for batch in batches:
            yield from self.feed(batch)



class ModelService:
    """What a running edge client holds: its model store, the MQTT package receiver and the recognizer in service.

    Route every message of :attr:`subscription` to :meth:`handle` and every sensor batch to
    :meth:`feed`. A verified new package is installed atomically and swapped in (the next
    batch uses it); a refused one is logged and the current model keeps serving.
    """

    def __init__(self, store_dir: Path, public_key: Ed25519PublicKey, federation: str, modality: str | None = None,
                 *, stride: int | None = None, threads: int = 1, accept_hand_exported: bool = False,
                 device_class: str | None = None) -> None:
        """``device_class``: the gateway's declared class: it installs only packages of that class (or naming
        none), from ``models/`` and from a mixed fleet's ``models/<class>/``."""
        from export.install import ModelStore
        from export.push import PackageReceiver

        self.modality, self.stride, self.threads = modality, stride, threads
        self.device_class = device_class or ""  # named in its sync requests: the answer carries that class's package
        self.store = ModelStore(store_dir, public_key)
        self.receivers = [PackageReceiver(self.store, federation, on_installed=lambda m: self._swap(m, installed=True),
                                          accept_hand_exported=accept_hand_exported, device_class=device_class,
                                          namespace=namespace)
                          for namespace in ("",) + ((device_class,) if device_class else ())]
        self.receiver = self.receivers[0]
        self._lock = threading.Lock()
        self.recognizer: StreamingRecognizer | None = None
        self._run_name = ("", "")  # (run, name) of the trusted run's manifest: the name its log line gives
        current = self._verified_current()
        if current is not None:
            self._swap(current)

    def _verified_current(self):
        """The installed model, or when it fails verification (altered on disk) the newest earlier version that
        passes, put back in service; None (train without a model) when there is none. Never a crash loop."""
        try:
            return self.store.current()
        except PackageError as exc:
            broken = exc
        current_file = self.store.root / CURRENT
        name = current_file.read_text().strip() if current_file.is_file() else ""
        for path in sorted((self.store.root / VERSIONS).iterdir(), reverse=True):
            if path.name == name or not path.is_dir():
                continue
            try:
                verify_package(path, self.store.public_key)
                installed = self.store.install(path)
            except PackageError:
                continue
            log.error("installed model %s refused (%s); fell back to the previous verified version %s",
                      name, broken, path.name)
            return installed
        log.error("installed model %s refused (%s) and no earlier version verifies; running without a model until "
                  "a valid package arrives", name, broken)
        return None

    @property
    def subscription(self) -> str:
        return self.receiver.subscription

    def handle(self, topic: str, payload: bytes) -> None:
        for receiver in self.receivers:
            receiver.handle(topic, payload)

    def trust_run(self, run: str, name: str = "") -> None:
        """The run (and its name) of the verified federation manifest: only its packages are installed from now on."""
        self._run_name = (run, name)
        for receiver in self.receivers:
            receiver.trust_run(run)

    def _swap(self, model: InstalledModel, installed: bool = False) -> None:
        """Put ``model`` in service; one line says which package it is, of which run, round and class."""
        m = model.package.manifest
        recognizer = StreamingRecognizer(model.package, self.modality, stride=self.stride, threads=self.threads)
        with self._lock:
            self.recognizer = recognizer
        run, name = self._run_name
        log.info("model package %s %s: run %s, round %d%s, %s encoder", model.path.name,
                 "installed and in service" if installed else "in service",
                 run_label(m.run, name if m.run == run else ""), m.round,
                 f", class {m.device_class}" if m.device_class else "", recognizer.modality)

    def feed(self, batch: BatchLike) -> list[Prediction]:
        """Predictions for a sensor batch; none until a model is installed."""
        with self._lock:
            recognizer = self.recognizer
        return [] if recognizer is None else recognizer.feed(batch)
