"""Build a signed model package from a run's global model (used by ``fedmekt export`` and the aggregator)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from tqdm import tqdm

from export.onnx_export import OPSET, export_classifier
from export.package import MANIFEST, Manifest, ModelFile, file_entry, sign_package
from export.quantize import quantize_int8
from export.run_model import RunModel
from export.verify import LENGTHS, check_parity
from fedmekt.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltPackage:
    path: Path
    manifest: Manifest

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())


def parity_inputs(channels: int, seed: int = 0) -> np.ndarray:
    """Standard-normal inputs [2, 2000, C]: what normalised sensor data looks like to the encoder."""
    return np.random.default_rng(seed).standard_normal((2, max(LENGTHS), channels)).astype(np.float32)


def build_package(run: RunModel, out_dir: Path, key: Ed25519PrivateKey, *, int8: bool = False,
                  stride: int | None = None, round_: int | None = None, progress: bool = False,
                  run_id: str = "", device_class: str = "") -> BuiltPackage:
    """Export every modality's encoder + head, check them, optionally quantize, sign; write into ``out_dir``.

    Each fp32 file must pass onnx.checker and the parity check (:mod:`export.verify`)
    before it is packaged. ``out_dir`` must be empty or absent; it is filled through a
    temporary sibling directory so a failed build leaves nothing half-written. ``device_class`` (signed, in
    the manifest's ``extra``) names the gateways that may install it ("" = any).
    """
    info = run.info
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir} exists and is not empty")
    stride = int(stride or max(1, info.window // 2))
    if not 1 <= stride <= info.window:
        raise UserError(f"stride must be between 1 and the window length {info.window}, got {stride}")
    missing = [m for m in info.channels if m not in info.norm_mean or m not in info.norm_std]
    if missing:
        raise UserError(f"run.json has no normalisation statistics for {missing}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        entries: list[ModelFile] = []
        for modality in tqdm(list(info.channels), desc="export", unit="modality", disable=not progress, leave=False):
            channels = int(info.channels[modality])
            classifier = run.classifier(modality)
            fp32 = export_classifier(classifier, channels, tmp / f"{modality}.onnx",
                                     doc=f"fedmekt {info.federation} {modality} encoder + head")
            check_parity(classifier, fp32, parity_inputs(channels))
            path = fp32
            if int8:
                path = quantize_int8(fp32, tmp / f"{modality}.int8.onnx")
                fp32.unlink()
            entries.append(file_entry(modality, path, channels, info.norm_mean[modality], info.norm_std[modality]))
        manifest = Manifest(
            federation=info.federation, round=int(info.rounds_completed if round_ is None else round_),
            algorithm=info.algorithm, dataset=info.dataset, label_names=tuple(info.label_names),
            window=int(info.window), stride=stride, rate_hz=float(info.rate_hz),
            rep_size=int(info.rep_size), precision="int8" if int8 else "fp32", models=tuple(entries),
            extra={"exporter": "torch.onnx TorchScript (dynamo=False)", "opset": OPSET,
                   **({"device_class": device_class} if device_class else {})}, run=run_id,
        )
        sign_package(tmp, manifest, key)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.debug("package round %d (%s) written to %s", manifest.round, manifest.precision, out_dir / MANIFEST)
    return BuiltPackage(out_dir, manifest)
