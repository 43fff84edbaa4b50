"""OPPORTUNITY challenge release (Chavarriaga et al. 2013): ``S{s}-ADL{r}.dat``, whitespace separated, 30 Hz.

Column lists follow the paper's loader (``dg:93-102``): column 0 = time [ms], acce 63 columns,
gyro 15 columns, label = column 115 (mid-level gestures, 0 = null + 17 gestures). Missing sensor
values (``NaN`` in the files) are forward filled.

The paper's gyro list repeats columns 66-68 (which are also acce columns; spec B7). ``faithful=True``
keeps that list for comparability; the default uses 76-78, the IMU triple the list was meant to hold.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sensors.errors import UserError
from sensors.preprocess import forward_fill
from sensors.recording import UNLABELLED, Recording

RATE_HZ = 30.0
TIME_COLUMN = 0
LABEL_COLUMN = 115
MIN_COLUMNS = LABEL_COLUMN + 1
ACCE_COLUMNS = (*range(1, 40), 46, 47, 48, 55, 56, 57, 64, 65, 66, 73, 74, 75, *range(85, 91), *range(101, 107))
GYRO_COLUMNS_FAITHFUL = (40, 41, 42, 49, 50, 51, 58, 59, 60, 67, 68, 69, 66, 67, 68)
GYRO_COLUMNS_FIXED = (40, 41, 42, 49, 50, 51, 58, 59, 60, 67, 68, 69, 76, 77, 78)
CHANNELS = {
    "acce": tuple(f"col{c}" for c in ACCE_COLUMNS),
    "gyro": tuple(f"col{c}" for c in GYRO_COLUMNS_FIXED),
}
# Mid-level gesture codes of the challenge release, in the usual order (0 = null).
GESTURE_CODES = (
    0, 406516, 406517, 404516, 404517, 406520, 404520, 406505, 404505,
    406519, 404519, 406511, 404511, 406508, 404508, 408512, 407521, 405506,
)
LABEL_NAMES = (
    "null", "open_door_1", "open_door_2", "close_door_1", "close_door_2", "open_fridge", "close_fridge",
    "open_dishwasher", "close_dishwasher", "open_drawer_1", "close_drawer_1", "open_drawer_2", "close_drawer_2",
    "open_drawer_3", "close_drawer_3", "clean_table", "drink_from_cup", "toggle_switch",
)
_FILE = re.compile(r"S(\d+)-ADL(\d+)\.dat$")


def gesture_labels(codes: np.ndarray) -> np.ndarray:
    """Gesture codes -> 0..17 (fixed table, so every run maps identically); unknown codes -> -1."""
    c = np.nan_to_num(codes, nan=-1).astype(np.int64)
    uniq, inv = np.unique(c, return_inverse=True)
    index = {code: i for i, code in enumerate(GESTURE_CODES)}
    lut = np.array([index.get(int(u), UNLABELLED) for u in uniq], dtype=np.int64)
    return lut[inv.reshape(-1)]


def read(path: Path, dataset: str = "opportunity", faithful: bool = False) -> list[Recording]:
    """One Recording per ``S{s}-ADL{r}.dat`` (unit ``S1-ADL4``, subject ``S1``); drill runs are skipped."""
    root = path / "dataset" if (path / "dataset").is_dir() else path
    files = sorted(p for p in root.glob("S*-ADL*.dat") if _FILE.search(p.name))
    if not files:
        raise UserError(f"no S{{s}}-ADL{{r}}.dat files in {root}")
    gyro_cols = GYRO_COLUMNS_FAITHFUL if faithful else GYRO_COLUMNS_FIXED
    recs = []
    for f in files:
        try:
            raw = np.loadtxt(f, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise UserError(f"{f}: not an OPPORTUNITY .dat file ({exc})") from exc
        if raw.shape[1] < MIN_COLUMNS:
            raise UserError(f"{f}: expected at least {MIN_COLUMNS} columns, got {raw.shape[1]}")
        t = raw[:, TIME_COLUMN] / 1000.0
        order = np.argsort(t, kind="stable")
        keep = order[np.concatenate(([True], np.diff(t[order]) > 0))]  # strictly increasing time
        raw, t = raw[keep], t[keep]
        s, r = (int(g) for g in _FILE.search(f.name).groups())
        mods = {"acce": forward_fill(raw[:, list(ACCE_COLUMNS)]), "gyro": forward_fill(raw[:, list(gyro_cols)])}
        channels = {"acce": CHANNELS["acce"], "gyro": tuple(f"col{c}" for c in gyro_cols)}
        recs.append(Recording(dataset, f"S{s}-ADL{r}", f"S{s}", RATE_HZ, mods, gesture_labels(raw[:, LABEL_COLUMN]),
                              t, LABEL_NAMES, channels))
    return recs
