"""UCI HAPT (Reyes-Ortiz et al. 2016): the shared ``hapt_raw.npz`` and the original RawData layout.

Both give one Recording per experiment (unit ``user07-exp13``, subject ``user07``), modalities
``acce`` (g) and ``gyro`` (rad/s) at 50 Hz, labels 1..12 -> 0..11 and -1 for unlabelled rows.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from sensors.errors import UserError
from sensors.preprocess import forward_fill, uniform_timestamps
from sensors.recording import UNLABELLED, Recording

RATE_HZ = 50.0
LABEL_NAMES = (
    "WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING",
    "STAND_TO_SIT", "SIT_TO_STAND", "SIT_TO_LIE", "LIE_TO_SIT", "STAND_TO_LIE", "LIE_TO_STAND",
)
CHANNELS = {"acce": ("acc_x", "acc_y", "acc_z"), "gyro": ("gyro_x", "gyro_y", "gyro_z")}
NPZ_NAME = "hapt_raw.npz"
DEMO_NAME = "hapt_demo.npz"  # the bundled subset (sensors/demo/), same layout
NPZ_KEYS = ("acc", "gyro", "label", "sequence_starts", "sequence_user")


def _labels_from_codes(codes: np.ndarray) -> np.ndarray:
    """HAPT activity ids 1..12 -> 0..11; anything else (-1, 0) -> UNLABELLED."""
    c = codes.astype(np.int64)
    return np.where((c >= 1) & (c <= len(LABEL_NAMES)), c - 1, UNLABELLED)


def _recording(dataset: str, user: int, exp: int, acc: np.ndarray, gyro: np.ndarray, labels: np.ndarray) -> Recording:
    return Recording(
        dataset=dataset,
        unit=f"user{user:02d}-exp{exp:02d}",
        subject=f"user{user:02d}",
        rate_hz=RATE_HZ,
        modalities={"acce": forward_fill(acc), "gyro": forward_fill(gyro)},
        labels=labels,
        timestamps=uniform_timestamps(labels.shape[0], RATE_HZ),
        label_names=LABEL_NAMES,
        channel_names=dict(CHANNELS),
    )


def read_npz(path: Path, dataset: str = "hapt") -> list[Recording]:
    """Read ``hapt_raw.npz`` (layout in shared/data/hapt/README.txt); never unpickles."""
    file = path
    if path.is_dir():
        file = next((path / n for n in (NPZ_NAME, DEMO_NAME) if (path / n).is_file()), path / NPZ_NAME)
    if not file.is_file():
        raise UserError(f"{file} not found (expected the HAPT {NPZ_NAME})")
    try:
        with np.load(file, allow_pickle=False) as z:
            missing = [k for k in NPZ_KEYS if k not in z.files]
            if missing:
                raise UserError(f"{file} lacks arrays {missing}; is it a HAPT npz?")
            acc, gyro, codes = z["acc"], z["gyro"], z["label"]
            starts, users = z["sequence_starts"].astype(np.int64), z["sequence_user"].astype(np.int64)
            # optional: experiment numbers of a subset (the demo); else position in the full set
            exps = z["sequence_id"].astype(np.int64) if "sequence_id" in z.files else np.arange(1, users.size + 1)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {file}: {exc}") from exc
    n = acc.shape[0]
    lengths_ok = gyro.shape[0] == n and codes.shape[0] == n and starts[-1] == n
    if not lengths_ok or starts.size != users.size + 1 or exps.size != users.size:
        raise UserError(f"{file}: inconsistent array lengths")
    labels = _labels_from_codes(codes)
    recs = []
    for e, user in enumerate(users):
        a, b = starts[e], starts[e + 1]
        recs.append(_recording(dataset, int(user), int(exps[e]), acc[a:b], gyro[a:b], labels[a:b]))
    return recs


_RAW = re.compile(r"acc_exp(\d+)_user(\d+)\.txt$")


def read_uci_raw(path: Path, dataset: str = "hapt_uci") -> list[Recording]:
    """Read the UCI download's ``RawData/`` folder (acc_expXX_userYY.txt, gyro_…, labels.txt).

    labels.txt rows are ``exp user activity start end`` with 0-based, inclusive row indices
    (this convention reproduces the per-sample labels of hapt_raw.npz exactly).
    """
    root = path / "RawData" if (path / "RawData").is_dir() else path
    acc_files = sorted(p for p in root.glob("acc_exp*_user*.txt") if _RAW.search(p.name))
    if not acc_files:
        raise UserError(f"no acc_expXX_userYY.txt files in {root} (expected HAPT RawData)")
    label_file = root / "labels.txt"
    if not label_file.is_file():
        raise UserError(f"{label_file} not found")
    spans = np.loadtxt(label_file, dtype=np.int64, ndmin=2)
    if spans.shape[1] != 5:
        raise UserError(f"{label_file}: expected 5 columns, got {spans.shape[1]}")
    recs = []
    for f in acc_files:
        exp, user = (int(g) for g in _RAW.search(f.name).groups())
        gyro_file = root / f"gyro_exp{exp:02d}_user{user:02d}.txt"
        if not gyro_file.is_file():
            raise UserError(f"{gyro_file} missing (every acc file needs its gyro file)")
        acc = np.loadtxt(f, dtype=np.float32, ndmin=2)
        gyro = np.loadtxt(gyro_file, dtype=np.float32, ndmin=2)
        if acc.shape[1] != 3 or gyro.shape[1] != 3 or acc.shape[0] != gyro.shape[0]:
            raise UserError(f"{f.name}/{gyro_file.name}: expected two [T, 3] files of equal length")
        codes = np.zeros(acc.shape[0], dtype=np.int64)
        for _, _, act, a, b in spans[(spans[:, 0] == exp) & (spans[:, 1] == user)]:
            if not 0 <= a <= b < len(codes):
                raise UserError(f"{label_file}: span {a}..{b} of exp {exp} outside its {len(codes)} samples")
            codes[a : b + 1] = act
        recs.append(_recording(dataset, user, exp, acc, gyro, _labels_from_codes(codes)))
    recs.sort(key=lambda r: r.unit)
    return recs
