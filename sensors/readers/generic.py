"""The documented generic format: bring your own wearable logs without writing a reader.

Layout (one folder per subject or device, one file per run/session)::

    mydata/
      dataset.toml              # or dataset.json, same keys
      alice/  2024-05-01.csv  2024-05-02.npz
      bob/    morning.csv

Descriptor keys::

    name = "wristband"                  # dataset name (default "generic")
    rate_hz = 50                        # nominal rate; rows are i / rate_hz s apart without a time column
    time_column = "t"                   # optional: CSV column / NPZ array with timestamps
    time_unit = "s"                     # "s" (default) or "ms"
    label_column = "label"              # optional: integer ids 0..K-1; -1 or empty = unlabelled
    label_names = ["walk", "sit"]       # names of ids 0..K-1
    [modalities]                        # modality -> its columns, in channel order
    acce = ["ax", "ay", "az"]
    gyro = ["gx", "gy", "gz"]

CSV files have one header row naming the columns; empty cells, ``nan`` and ``inf`` are forward
filled. NPZ files hold one float array per modality ``[T, C]`` (named like the modality) plus the
label and time arrays; a modality sampled at another rate comes with its own ``t_<modality>``
timestamps and is linearly resampled onto the run's time base. Rows with non-increasing timestamps
are dropped (first occurrence kept).
"""

from __future__ import annotations

import csv
import json
import logging
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmekt.errors import UserError
from sensors.preprocess import forward_fill, resample_linear, uniform_timestamps
from sensors.recording import UNLABELLED, Recording

log = logging.getLogger(__name__)
DESCRIPTORS = ("dataset.toml", "dataset.json")


@dataclass(frozen=True)
class Descriptor:
    """Parsed ``dataset.toml``/``dataset.json``."""

    name: str
    rate_hz: float
    modalities: dict[str, tuple[str, ...]]
    label_names: tuple[str, ...]
    time_column: str | None = None
    time_scale: float = 1.0
    label_column: str | None = None

    @classmethod
    def load(cls, file: Path) -> Descriptor:
        try:
            raw = tomllib.loads(file.read_text()) if file.suffix == ".toml" else json.loads(file.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: cannot parse descriptor ({exc})") from exc
        mods = raw.get("modalities")
        if not isinstance(mods, dict) or not mods or not all(
            isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in mods.values()
        ):
            raise UserError(f"{file}: 'modalities' must map each modality to a non-empty list of column names")
        rate = raw.get("rate_hz")
        if not isinstance(rate, (int, float)) or rate <= 0:
            raise UserError(f"{file}: 'rate_hz' must be a positive number")
        unit = raw.get("time_unit", "s")
        if unit not in ("s", "ms"):
            raise UserError(f"{file}: 'time_unit' must be \"s\" or \"ms\"")
        return cls(
            name=str(raw.get("name", "generic")),
            rate_hz=float(rate),
            modalities={m: tuple(c) for m, c in mods.items()},
            label_names=tuple(str(n) for n in raw.get("label_names", ())),
            time_column=raw.get("time_column"),
            time_scale=1e-3 if unit == "ms" else 1.0,
            label_column=raw.get("label_column"),
        )


def _read_csv(file: Path, d: Descriptor) -> tuple[np.ndarray | None, dict[str, np.ndarray], np.ndarray | None]:
    with file.open(newline="") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    wanted = [c for cols in d.modalities.values() for c in cols] + [c for c in (d.time_column, d.label_column) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{file}: columns {missing} named in the descriptor are not in the header")
    try:
        table = np.genfromtxt(file, delimiter=",", skip_header=1, dtype=np.float64, filling_values=np.nan, ndmin=2)
    except ValueError as exc:
        raise UserError(f"{file}: malformed CSV ({exc})") from exc
    if table.shape[1] != len(header):
        raise UserError(f"{file}: {table.shape[1]} columns but {len(header)} header names")
    col = {h: i for i, h in enumerate(header)}
    mods = {m: table[:, [col[c] for c in cols]] for m, cols in d.modalities.items()}
    t = table[:, col[d.time_column]] * d.time_scale if d.time_column else None
    y = table[:, col[d.label_column]] if d.label_column else None
    return t, mods, y


def _read_npz(file: Path, d: Descriptor) -> tuple[np.ndarray | None, dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(file, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from exc
    for m in d.modalities:
        if m not in arrays:
            raise UserError(f"{file}: no array {m!r}")
    t = arrays[d.time_column].astype(np.float64) * d.time_scale if d.time_column else None
    y = arrays[d.label_column].astype(np.float64) if d.label_column else None
    n = len(t) if t is not None else len(y) if y is not None else None
    mods = {}
    for m, cols in d.modalities.items():
        x = np.asarray(arrays[m], dtype=np.float64).reshape(len(arrays[m]), -1)
        if x.shape[1] != len(cols):
            raise UserError(f"{file}: {m} has {x.shape[1]} channels, descriptor names {len(cols)}")
        if f"t_{m}" in arrays:  # own clock: resample onto the run's time base below
            mods[m] = (arrays[f"t_{m}"].astype(np.float64) * d.time_scale, x)
        else:
            n = x.shape[0] if n is None else n
            if x.shape[0] != n:
                raise UserError(f"{file}: {m} has {x.shape[0]} rows, expected {n} (give t_{m} for another rate)")
            mods[m] = x
    if n is None:
        raise UserError(f"{file}: every modality has its own clock; add a '{d.time_column or 't'}' time base")
    if t is None:
        t = uniform_timestamps(n, d.rate_hz)
    for m, v in mods.items():
        if isinstance(v, tuple):
            src_t, x = v
            order = np.argsort(src_t, kind="stable")
            mods[m] = resample_linear(src_t[order], forward_fill(x[order]), t)
    return t, mods, y


def _labels(y: np.ndarray | None, n: int, d: Descriptor, file: Path) -> np.ndarray:
    if y is None:
        return np.full(n, UNLABELLED, dtype=np.int64)
    y = np.where(np.isfinite(y), y, UNLABELLED)
    if (y != np.round(y)).any() or y.min(initial=0) < UNLABELLED or y.max(initial=0) >= max(len(d.label_names), 1):
        raise UserError(f"{file}: labels must be integers -1..{len(d.label_names) - 1} (see label_names)")
    return y.astype(np.int64)


def read(path: Path, dataset: str = "generic", descriptor: Path | str | None = None) -> list[Recording]:
    """One Recording per data file; subject = its folder, unit = ``folder/file-stem``."""
    file = Path(descriptor) if descriptor else next((path / n for n in DESCRIPTORS if (path / n).is_file()), None)
    if file is None or not file.is_file():
        raise UserError(f"no dataset.toml or dataset.json in {path} (see README 'Generic format')")
    d = Descriptor.load(file)
    recs = []
    for f in sorted(p for p in path.glob("*/*") if p.suffix in (".csv", ".npz")):
        t, mods, y = (_read_csv if f.suffix == ".csv" else _read_npz)(f, d)
        n = next(iter(mods.values())).shape[0]
        if t is None:
            t = uniform_timestamps(n, d.rate_hz)
        labels = _labels(y, n, d, f)
        running_max = np.maximum.accumulate(np.nan_to_num(t, nan=-np.inf))
        keep = np.isfinite(t) & np.r_[True, t[1:] > running_max[:-1]]
        if not keep.all():
            log.warning("%s: dropped %d rows with non-increasing or missing timestamps", f, int((~keep).sum()))
        recs.append(Recording(
            dataset=d.name, unit=f"{f.parent.name}/{f.stem}", subject=f.parent.name, rate_hz=d.rate_hz,
            modalities={m: forward_fill(x[keep]) for m, x in mods.items()}, labels=labels[keep],
            timestamps=t[keep].astype(np.float64), label_names=d.label_names, channel_names=dict(d.modalities),
        ))
    if not recs:
        raise UserError(f"no <subject>/<run>.csv or .npz files under {path}")
    return recs
