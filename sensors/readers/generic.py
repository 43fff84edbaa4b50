"""The documented generic format: bring your own wearable logs without writing a reader.

Layout (one folder per subject or device, one file per run/session)::

    mydata/
      dataset.toml              # or dataset.json, same keys
      alice/  2024-05-01.csv  2024-05-02.npz
      bob/    morning.csv

Descriptor keys::

    name = "wristband"                  # dataset name: --dataset wristband finds this folder (default "generic")
    rate_hz = 100                       # nominal rate; rows are i / rate_hz s apart without a time column
    resample_hz = 50                    # optional: resample every run to this rate on load
    time_column = "t"                   # optional: CSV column / NPZ array with timestamps
    time_unit = "s"                     # "s" (default) or "ms"
    label_column = "label"              # optional: integer ids 0..K-1; -1 or empty = unlabelled
    label_names = ["walk", "sit"]       # names of ids 0..K-1 (default: the ids themselves, "0".."K-1")
    [modalities]                        # modality -> its columns, in channel order
    acce = ["ax", "ay", "az"]
    gyro = ["gx", "gy", "gz"]

CSV files have one header row naming the columns; empty cells, ``nan`` and ``inf`` are forward
filled. NPZ files hold one float array per modality ``[T, C]`` (named like the modality) plus the
label and time arrays; a modality sampled at another rate comes with its own ``t_<modality>``
timestamps and is linearly resampled onto the run's time base. Rows with non-increasing timestamps
are dropped (first occurrence kept).

Every window, sub-window and stride of the kit is counted in rows and its defaults were chosen on
~50 Hz data, so ``resample_hz`` is how a dataset recorded at another rate keeps their time span:
the run's rate becomes ``resample_hz`` everywhere (run records, packages).
"""

from __future__ import annotations

import csv
import json
import logging
import re
import tomllib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sensors.errors import UserError
from sensors.preprocess import align_nearest, forward_fill, resample_linear, uniform_timestamps
from sensors.recording import UNLABELLED, Recording

log = logging.getLogger(__name__)
DESCRIPTORS = ("dataset.toml", "dataset.json")
DOCS = "see docs/sensors.md, 'Generic format'"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # goes into topics, run names and folder names
KEYS = {"name", "rate_hz", "resample_hz", "time_column", "time_unit", "label_column", "label_names", "modalities"}


def find_descriptor(folder: Path) -> Path | None:
    """``folder/dataset.toml`` or ``folder/dataset.json``, whichever exists first."""
    return next((folder / n for n in DESCRIPTORS if (folder / n).is_file()), None)


def _positive(raw: dict, key: str, file: Path) -> float | None:
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise UserError(f"{file}: {key!r} must be a positive number, got {value!r} ({DOCS})")
    return float(value)


def _optional_str(raw: dict, key: str, file: Path) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise UserError(f"{file}: {key!r} must be a column name, got {value!r} ({DOCS})")
    return value


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
    resample_hz: float | None = None

    @property
    def run_rate_hz(self) -> float:
        """The rate of the recordings this descriptor yields (after any resampling)."""
        return self.resample_hz or self.rate_hz

    @classmethod
    def load(cls, file: Path, reserved: tuple[str, ...] = ()) -> Descriptor:
        """Parse and check ``file``; ``reserved`` are names a dataset of your own may not take (built-ins)."""
        try:
            raw = tomllib.loads(file.read_text()) if file.suffix == ".toml" else json.loads(file.read_text())
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{file}: cannot parse descriptor ({exc})") from exc
        if not isinstance(raw, dict):
            raise UserError(f"{file}: the descriptor must be a table of keys ({DOCS})")
        unknown = sorted(set(raw) - KEYS)
        if unknown:
            raise UserError(f"{file}: unknown key(s) {', '.join(unknown)} ({DOCS})")
        mods = raw.get("modalities")
        if not isinstance(mods, dict) or not mods or not all(
            isinstance(v, list) and v and all(isinstance(c, str) for c in v) for v in mods.values()
        ):
            raise UserError(f"{file}: 'modalities' must map each modality to a non-empty list of column names")
        rate = _positive(raw, "rate_hz", file)
        if rate is None:
            raise UserError(f"{file}: 'rate_hz' (the sampling rate in Hz) is required ({DOCS})")
        unit = raw.get("time_unit", "s")
        if unit not in ("s", "ms"):
            raise UserError(f"{file}: 'time_unit' must be \"s\" or \"ms\"")
        name = raw.get("name", "generic")
        if not isinstance(name, str) or not NAME.fullmatch(name) or (name in reserved and name != "generic"):
            raise UserError(f"{file}: 'name' must be letters, digits, '_', '.', '-' (at most 64) and not a built-in "
                            f"dataset's name, got {name!r}")
        names = raw.get("label_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f"{file}: 'label_names' must be a list of strings (the names of ids 0..K-1)")
        return cls(
            name=name,
            rate_hz=rate,
            modalities={m: tuple(c) for m, c in mods.items()},
            label_names=tuple(names),
            time_column=_optional_str(raw, "time_column", file),
            time_scale=1e-3 if unit == "ms" else 1.0,
            label_column=_optional_str(raw, "label_column", file),
            resample_hz=_positive(raw, "resample_hz", file),
        )


class _LabelCell:
    """genfromtxt converter of the label column: ids as floats, empty/nan as NaN, text as +inf (remembered)."""

    def __init__(self) -> None:
        self.text: str | None = None

    def __call__(self, cell: str | bytes) -> float:
        cell = (cell.decode(errors="replace") if isinstance(cell, bytes) else cell).strip()
        if cell.lower() in ("", "nan"):
            return np.nan
        try:
            return float(cell)
        except ValueError:
            self.text = self.text or cell
            return np.inf


def _read_csv(file: Path, d: Descriptor) -> tuple[np.ndarray | None, dict[str, np.ndarray], np.ndarray | None]:
    with file.open(newline="") as fh:
        header = [h.strip() for h in next(csv.reader(fh), [])]
    wanted = [c for cols in d.modalities.values() for c in cols] + [c for c in (d.time_column, d.label_column) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise UserError(f"{file}: columns {missing} named in the descriptor are not in the header")
    col = {h: i for i, h in enumerate(header)}
    label_cell = _LabelCell()
    try:  # numpy's C parser: ~35x faster than genfromtxt with a converter, for files with every cell a number
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": a header-only file
            table = np.loadtxt(file, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError:  # empty cells, text or ragged rows: the tolerant parser, which also names what is wrong
        try:
            table = np.genfromtxt(file, delimiter=",", skip_header=1, dtype=np.float64, filling_values=np.nan,
                                  ndmin=2, converters={col[d.label_column]: label_cell} if d.label_column else None)
        except ValueError as exc:
            raise UserError(f"{file}: malformed CSV ({' '.join(str(exc).split())})") from exc  # one line
    if table.size == 0:
        raise UserError(f"{file}: no data rows under the header")
    if table.shape[1] != len(header):
        raise UserError(f"{file}: {table.shape[1]} columns but {len(header)} header names")
    if label_cell.text is not None:
        raise UserError(f"{file}: label column {d.label_column!r} holds text ({label_cell.text!r}); labels must be "
                        f"integer ids 0..K-1 (-1 or empty = unlabelled) named by label_names ({DOCS})")
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
    for key in (d.time_column, d.label_column):
        if key and key not in arrays:
            raise UserError(f"{file}: no array {key!r} (named in the descriptor)")
        if key and arrays[key].dtype.kind not in "biuf":
            raise UserError(f"{file}: array {key!r} must be numeric, got {arrays[key].dtype} ({DOCS})")
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
    y = np.where(np.isnan(y), UNLABELLED, y)
    top = len(d.label_names) - 1 if d.label_names else np.inf
    if not np.isfinite(y).all() or (y != np.round(y)).any() or y.min(initial=0) < UNLABELLED \
            or y.max(initial=0) > top:
        ids = f"-1..{top:g}" if d.label_names else "-1, 0, 1, …"
        raise UserError(f"{file}: labels must be integer ids {ids} (see label_names; {DOCS})")
    return y.astype(np.int64)


def _moving_average(x: np.ndarray, k: int) -> np.ndarray:
    """Box filter of ``k`` rows per column, centred (half a row early for even ``k``; edges repeat): the
    anti-alias step of downsampling."""
    pad = np.pad(x.astype(np.float64), ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    c = np.cumsum(np.pad(pad, ((1, 0), (0, 0))), axis=0)
    return (c[k:] - c[:-k]) / k


def resample_run(t: np.ndarray, mods: dict[str, np.ndarray], labels: np.ndarray, rate_hz: float,
                 to_hz: float) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """One run on a uniform ``to_hz`` grid from its first timestamp: channels linearly interpolated (box-filtered
    over ``rate_hz / to_hz`` rows first when downsampling), each new row taking the label of the nearest old one."""
    if len(t) < 2:
        return t, mods, labels
    grid = uniform_timestamps(int(np.floor((t[-1] - t[0]) * to_hz + 1e-9)) + 1, to_hz, t[0])
    k = int(round(rate_hz / to_hz))
    smooth = (lambda x: _moving_average(x, k)) if k >= 2 else (lambda x: x)
    out = {m: resample_linear(t, smooth(x), grid) for m, x in mods.items()}
    return grid, out, align_nearest(t, labels, grid).astype(np.int64)


def read(path: Path, dataset: str = "generic") -> list[Recording]:
    """One Recording per data file; subject = its folder, unit = ``folder/file-stem``; named as the descriptor says."""
    file = find_descriptor(path)
    if file is None:
        raise UserError(f"no dataset.toml or dataset.json in {path} ({DOCS})")
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
        t, mods, labels = t[keep].astype(np.float64), {m: forward_fill(x[keep]) for m, x in mods.items()}, labels[keep]
        if d.resample_hz:
            t, mods, labels = resample_run(t, mods, labels, d.rate_hz, d.resample_hz)
        recs.append(Recording(
            dataset=d.name, unit=f"{f.parent.name}/{f.stem}", subject=f.parent.name, rate_hz=d.run_rate_hz,
            modalities=mods, labels=labels, timestamps=t, label_names=d.label_names,
            channel_names=dict(d.modalities),
        ))
    if not recs:
        raise UserError(f"no <subject>/<run>.csv or .npz files under {path} ({DOCS})")
    if d.label_column and not d.label_names:  # unnamed classes are called by their ids
        names = tuple(str(i) for i in range(max(int(r.labels.max(initial=-1)) for r in recs) + 1))
        recs = [replace(r, label_names=names) for r in recs]
    return recs
