"""Rebuild sensors/demo/hapt_demo.npz from the shared hapt_raw.npz (the bundled demo dataset).

Eight subjects, the first experiment of each: enough for a split disjoint by subject
(1 test, 1 proxy, 1 labelled, 5 pool subjects) while staying under 2 MiB.
Run: python sensors/demo/build_demo.py [path/to/hapt_raw.npz]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

USERS = (1, 4, 7, 10, 13, 16, 19, 22)
OUT = Path(__file__).resolve().parent / "hapt_demo.npz"


def build(src: Path) -> None:
    z = np.load(src, allow_pickle=False)
    starts, seq_user = z["sequence_starts"], z["sequence_user"]
    seqs = [int(np.flatnonzero(seq_user == u)[0]) for u in USERS]
    rows = np.concatenate([np.arange(starts[s], starts[s + 1]) for s in seqs])
    lengths = np.array([starts[s + 1] - starts[s] for s in seqs])
    np.savez_compressed(
        OUT,
        acc=z["acc"][rows], gyro=z["gyro"][rows], label=z["label"][rows], user=z["user"][rows],
        sequence=np.repeat(np.arange(len(seqs), dtype=np.int16), lengths),
        sequence_starts=np.r_[0, np.cumsum(lengths)].astype(np.int64),
        sequence_user=seq_user[seqs],
        sequence_id=np.array([s + 1 for s in seqs], dtype=np.int16),  # experiment number in the full set
        label_names=z["label_names"], sampling_rate_hz=z["sampling_rate_hz"],
    )


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[3] / "shared/data/hapt/hapt_raw.npz"
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
    print(f"wrote {OUT} ({OUT.stat().st_size / 2**20:.2f} MiB)")
