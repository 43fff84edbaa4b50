"""UR Fall Detection (Kwolek & Kepski 2014): waist accelerometer + depth features per camera frame.

Rows are the frames that have a feature row in ``features/urfall-cam0-{falls,adls}.csv``; the
accelerometer (``acc/<run>-acc.csv`` columns 2..4) is paired to each frame by nearest timestamp,
frame time = (frame - 1) * 1000 / 30 ms unless ``sync/<run>-data.csv`` gives the real one.
Modalities: ``acce`` (3), ``depth`` (8) and optional ``rgb`` from user-supplied feature files.

Optional RGB features: pass ``rgb_dir=DIR`` holding ``<run>.npz`` with ``frame`` (int, [n]) and
``features`` (float32, [n, D]) — e.g. the paper's 512-d ResNet-18 pool features of cam0 frames.
Frames without an RGB row get NaN, which is forward filled like every other gap.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from sensors.errors import UserError
from sensors.preprocess import align_nearest, forward_fill
from sensors.recording import Recording

RATE_HZ = 30.0
LABEL_NAMES = ("not_lying", "falling", "lying")  # upstream -1 / 0 / 1
DEPTH_CHANNELS = ("HWRatio", "MMRatio", "BoundingBoxO", "MaxStdXZ", "HHMaxRatio", "H", "D", "P40")
ACCE_CHANNELS = ("acc_x", "acc_y", "acc_z")
FEATURE_FILES = ("urfall-cam0-falls.csv", "urfall-cam0-adls.csv")


def _read_features(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """run -> (frame numbers, labels 0..2, depth features [n, 8]) sorted by frame, duplicates dropped."""
    rows: dict[str, list[list[str]]] = {}
    for name in FEATURE_FILES:
        file = root / "features" / name
        if not file.is_file():
            raise UserError(f"{file} not found (expected the UR Fall depth feature CSVs)")
        with file.open(newline="") as fh:
            for rec in csv.reader(fh):
                if not rec or not rec[0].strip() or rec[0].startswith("Sequence"):
                    continue  # header present in some copies, absent in the originals
                if len(rec) != 11:
                    raise UserError(f"{file}: expected 11 columns, got {len(rec)} in {rec[:3]}")
                rows.setdefault(rec[0].strip(), []).append(rec[1:])
    out = {}
    for run, recs in rows.items():
        arr = np.asarray(recs, dtype=np.float64)
        frames, first = np.unique(arr[:, 0].astype(np.int64), return_index=True)
        arr = arr[first]
        labels = arr[:, 1].astype(np.int64) + 1  # -1/0/1 -> 0/1/2
        out[run] = (frames, labels, arr[:, 2:].astype(np.float32))
    return out


def _frame_times(root: Path, run: str, frames: np.ndarray) -> np.ndarray:
    """Seconds of each frame: the real sync file where present, else (frame-1)/30."""
    sync = root / "sync" / f"{run}-data.csv"
    if sync.is_file():
        s = np.loadtxt(sync, delimiter=",", ndmin=2)
        return np.interp(frames, s[:, 0], s[:, 1]) / 1000.0
    return (frames - 1) / RATE_HZ


def _rgb(rgb_dir: Path, run: str, frames: np.ndarray) -> np.ndarray:
    file = rgb_dir / f"{run}.npz"
    if not file.is_file():
        raise UserError(f"{file} not found (rgb_dir needs one <run>.npz per run)")
    with np.load(file, allow_pickle=False) as z:
        f, feats = z["frame"].astype(np.int64), z["features"].astype(np.float32)
    if feats.ndim != 2 or f.shape[0] != feats.shape[0]:
        raise UserError(f"{file}: expected frame [n] and features [n, D]")
    out = np.full((frames.size, feats.shape[1]), np.nan, dtype=np.float32)
    pos = np.searchsorted(frames, f)
    ok = (pos < frames.size) & (frames[np.minimum(pos, frames.size - 1)] == f)
    out[pos[ok]] = feats[ok]
    return forward_fill(out)


def read(path: Path, dataset: str = "ur_fall", rgb_dir: Path | str | None = None) -> list[Recording]:
    """One Recording per run (``fall-01`` … ``adl-40``); unit = subject = run name."""
    feats = _read_features(path)
    recs = []
    for run in sorted(feats):
        frames, labels, depth = feats[run]
        acc_file = path / "acc" / f"{run}-acc.csv"
        if not acc_file.is_file():
            raise UserError(f"{acc_file} not found")
        acc = np.loadtxt(acc_file, delimiter=",", ndmin=2)
        if acc.shape[1] < 5:
            raise UserError(f"{acc_file}: expected 5 columns (t_ms, SV, Ax, Ay, Az)")
        acc = acc[np.argsort(acc[:, 0], kind="stable")]
        t = _frame_times(path, run, frames)
        mods = {"acce": align_nearest(acc[:, 0] / 1000.0, forward_fill(acc[:, 2:5]), t), "depth": forward_fill(depth)}
        channels = {"acce": ACCE_CHANNELS, "depth": DEPTH_CHANNELS}
        if rgb_dir is not None:
            mods["rgb"] = _rgb(Path(rgb_dir), run, frames)
            channels["rgb"] = tuple(f"rgb_{i}" for i in range(mods["rgb"].shape[1]))
        recs.append(Recording(dataset, run, run, RATE_HZ, mods, labels, t, LABEL_NAMES, channels))
    if not recs:
        raise UserError(f"no UR Fall runs found under {path}")
    return recs
