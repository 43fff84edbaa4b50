"""UCI mHealth (Banos et al. 2014): ``mHealth_subjectN.log``, 24 whitespace-separated columns, 50 Hz.

Columns as in the paper's loader (``dg:49-52``): acce 9 = chest, left-ankle, right-arm acc
(0-2, 5-7, 14-16); gyro 6 = ankle, arm (8-10, 17-19); mage 6 = ankle, arm (11-13, 20-22); ECG 3-4
dropped; label column 23 (0 = null, 1..12 activities) kept as 13 classes like the paper.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sensors.errors import UserError
from sensors.preprocess import forward_fill, uniform_timestamps
from sensors.recording import UNLABELLED, Recording

RATE_HZ = 50.0
N_COLUMNS = 24
COLUMNS = {
    "acce": (0, 1, 2, 5, 6, 7, 14, 15, 16),
    "gyro": (8, 9, 10, 17, 18, 19),
    "mage": (11, 12, 13, 20, 21, 22),
}
LABEL_COLUMN = 23
CHANNELS = {
    "acce": tuple(f"{p}_acc_{a}" for p in ("chest", "ankle", "arm") for a in "xyz"),
    "gyro": tuple(f"{p}_gyro_{a}" for p in ("ankle", "arm") for a in "xyz"),
    "mage": tuple(f"{p}_mag_{a}" for p in ("ankle", "arm") for a in "xyz"),
}
LABEL_NAMES = (
    "null", "standing_still", "sitting_relaxing", "lying_down", "walking", "climbing_stairs", "waist_bends_forward",
    "frontal_elevation_arms", "knees_bending", "cycling", "jogging", "running", "jump_front_back",
)
_FILE = re.compile(r"mHealth_subject(\d+)\.log$")


def read(path: Path, dataset: str = "mhealth") -> list[Recording]:
    """One Recording per subject log (unit = subject = ``subject03``)."""
    root = path / "MHEALTHDATASET" if (path / "MHEALTHDATASET").is_dir() else path
    files = sorted((p for p in root.glob("mHealth_subject*.log") if _FILE.search(p.name)),
                   key=lambda p: int(_FILE.search(p.name).group(1)))
    if not files:
        raise UserError(f"no mHealth_subjectN.log files in {root}")
    recs = []
    for f in files:
        try:
            raw = np.loadtxt(f, dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise UserError(f"{f}: not a {N_COLUMNS}-column mHealth log ({exc})") from exc
        if raw.shape[1] != N_COLUMNS:
            raise UserError(f"{f}: expected {N_COLUMNS} columns, got {raw.shape[1]}")
        code = raw[:, LABEL_COLUMN]
        ok = np.isfinite(code) & (code >= 0) & (code < len(LABEL_NAMES))
        labels = np.where(ok, np.nan_to_num(code), UNLABELLED).astype(np.int64)
        unit = f"subject{int(_FILE.search(f.name).group(1)):02d}"
        mods = {m: forward_fill(raw[:, list(cols)]) for m, cols in COLUMNS.items()}
        recs.append(Recording(dataset, unit, unit, RATE_HZ, mods, labels, uniform_timestamps(len(labels), RATE_HZ),
                              LABEL_NAMES, dict(CHANNELS)))
    return recs
