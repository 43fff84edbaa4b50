"""A small dataset of your own in the documented generic format (docs/sensors.md), written for a test.

Each subject wears a 100 Hz acce+gyro band; three activities differ in frequency and amplitude, so
a probe can learn them from a few short recordings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

NAME = "wristband"
LABELS = ("rest", "walk", "run")
CHANNELS = {"acce": ("ax", "ay", "az"), "gyro": ("gx", "gy", "gz")}


def descriptor(rate_hz: float = 100, *, name: str = NAME, label_column: bool = True, label_names: bool = True,
               extra: str = "") -> str:
    """dataset.toml text (JSON arrays of strings are TOML arrays too)."""
    lines = [f'name = "{name}"', f"rate_hz = {rate_hz:g}", extra]
    if label_column:
        lines.append('label_column = "label"')
    if label_names:
        lines.append(f"label_names = {json.dumps(LABELS)}")
    lines += ["[modalities]"] + [f"{m} = {json.dumps(cs)}" for m, cs in CHANNELS.items()]
    return "\n".join(lines) + "\n"


def write_generic(root: Path, *, subjects: int = 6, seconds: float = 30.0, rate_hz: float = 100, seed: int = 0,
                  string_labels: bool = False, **descriptor_kw) -> Path:
    """``root/dataset.toml`` plus one CSV run per subject folder; returns ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(descriptor(rate_hz, **descriptor_kw))
    n = int(seconds * rate_hz)
    t = np.arange(n) / rate_hz
    header = ",".join(c for cs in CHANNELS.values() for c in cs) + ",label"
    for s in range(subjects):
        y = np.repeat(rng.integers(0, len(LABELS), size=n // int(5 * rate_hz) + 1), int(5 * rate_hz))[:n]
        phase = 2 * np.pi * np.array([0.5, 2.0, 3.5])[y] * t
        x = np.stack([np.sin(phase), np.cos(phase), 0.5 * y, np.sin(2 * phase), y - 1.0, np.cos(2 * phase)], 1)
        x = x * (1 + 0.5 * y)[:, None] + rng.normal(0, 0.2, x.shape)
        cells = np.char.mod("%.4f", x)
        labels = np.asarray(LABELS, dtype=object)[y] if string_labels else y.astype(str)
        rows = [",".join(r) + f",{lab}" for r, lab in zip(cells, labels)]
        (root / f"s{s:02d}").mkdir(exist_ok=True)
        (root / f"s{s:02d}" / "run1.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return root
