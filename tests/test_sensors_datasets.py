"""Readers on the shared data (UR Fall, HAPT), the bundled demo, and upstream-format files written here."""

from __future__ import annotations

import numpy as np
import pytest

from fedmekt.errors import UserError
from sensors.datasets import DATASETS, DEMO_DIR, dataset_info, load_dataset


def _check_recording(r, modalities: dict[str, int]):
    assert {m: x.shape[1] for m, x in r.modalities.items()} == modalities
    for x in r.modalities.values():
        assert x.dtype == np.float32 and x.shape[0] == len(r) and np.isfinite(x).all()
    assert r.labels.dtype == np.int64 and r.timestamps.dtype == np.float64
    assert (np.diff(r.timestamps) > 0).all()
    assert r.labels.min() >= -1 and r.labels.max() < len(r.label_names)


def test_hapt_npz_matches_readme_counts(data_dir):
    recs = load_dataset("hapt", data_dir)
    assert len(recs) == 61
    assert len({r.subject for r in recs}) == 30
    assert sum(len(r) for r in recs) == 1_122_772
    labels = np.concatenate([r.labels for r in recs])
    counts = np.bincount(labels + 1)
    # README: -1:307158 1:122091 ... 12:10867 (ids shifted to 0..11)
    assert counts[0] == 307_158 and counts[1] == 122_091 and counts[12] == 10_867
    for r in recs[:3]:
        _check_recording(r, {"acce": 3, "gyro": 3})
        assert r.rate_hz == 50
    assert recs[0].unit == "user01-exp01" and recs[0].label_names[0] == "WALKING"


def test_ur_fall_rows_labels_and_alignment(data_dir):
    recs = load_dataset("ur_fall", data_dir)
    assert len(recs) == 70
    assert sum(r.unit.startswith("fall") for r in recs) == 30
    assert sum(len(r) for r in recs) == 2_995 + 8_549
    counts = np.bincount(np.concatenate([r.labels for r in recs]))
    assert counts.tolist() == [1192 + 6260, 900 + 819, 903 + 1470]  # README label counts (-1/0/1)
    for r in recs[:3]:
        _check_recording(r, {"acce": 3, "depth": 8})
    # fall-02 has no sync file: frame f is at (f-1)/30 s; its acce row is the nearest accelerometer sample.
    rec = next(r for r in recs if r.unit == "fall-02")
    acc = np.loadtxt(data_dir / "ur_fall/acc/fall-02-acc.csv", delimiter=",")
    frame = round(rec.timestamps[10] * 30) + 1
    nearest = np.argmin(np.abs(acc[:, 0] - (frame - 1) * 1000 / 30))
    np.testing.assert_array_equal(rec.modalities["acce"][10], acc[nearest, 2:5].astype(np.float32))
    # fall-01 uses the real sync file (differs from the approximation by a few ms).
    f01 = next(r for r in recs if r.unit == "fall-01")
    sync = np.loadtxt(data_dir / "ur_fall/sync/fall-01-data.csv", delimiter=",")
    assert f01.timestamps[0] == pytest.approx(sync[0, 1] / 1000)


def test_ur_fall_optional_rgb_features(data_dir, tmp_path):
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    plain = load_dataset("ur_fall", data_dir)
    for r in plain:
        frames = np.round(r.timestamps * 30).astype(int) + 1
        if r.unit == "fall-01":  # real sync times: recover frame numbers from the feature CSV instead
            frames = np.loadtxt(data_dir / "ur_fall/features/urfall-cam0-falls.csv", delimiter=",", skiprows=1,
                                usecols=1, max_rows=len(r)).astype(int)
        feats = np.tile(frames[:, None].astype(np.float32), (1, 4))
        np.savez(rgb / f"{r.unit}.npz", frame=frames[::2], features=feats[::2])  # every other frame missing
    recs = load_dataset("ur_fall", data_dir, rgb_dir=rgb)
    r = next(x for x in recs if x.unit == "adl-05")
    assert r.modalities["rgb"].shape == (len(r), 4)
    frames = np.round(r.timestamps * 30).astype(int) + 1
    np.testing.assert_array_equal(r.modalities["rgb"][::2, 0], frames[::2])
    np.testing.assert_array_equal(r.modalities["rgb"][1::2, 0], frames[::2][: len(frames[1::2])])  # forward filled


def test_demo_is_a_small_bit_exact_hapt_subset(data_dir):
    demo = load_dataset("demo")
    assert len(demo) == 8 and len({r.subject for r in demo}) == 8
    assert sum(f.stat().st_size for f in DEMO_DIR.glob("*.npz")) <= 2_000_000
    assert "Reyes-Ortiz" in (DEMO_DIR / "ATTRIBUTION.txt").read_text()
    full = {r.unit: r for r in load_dataset("hapt", data_dir)}
    for r in demo:
        np.testing.assert_array_equal(r.modalities["acce"], full[r.unit].modalities["acce"])
        np.testing.assert_array_equal(r.labels, full[r.unit].labels)
    assert (np.concatenate([r.labels for r in demo]) >= 0).any()


def test_dataset_info_rep_sizes_and_channels():
    assert set(DATASETS) >= {"ur_fall", "hapt", "hapt_uci", "mhealth", "opportunity", "generic", "demo"}
    assert dataset_info("ur_fall").paper_rep_size(("acce", "depth")) == 2
    assert dataset_info("ur_fall").paper_rep_size(("rgb", "depth")) == 4
    assert dataset_info("hapt").paper_rep_size() == 4
    assert dataset_info("mhealth").channels == {"acce": 9, "gyro": 6, "mage": 6}
    assert dataset_info("opportunity").channels == {"acce": 63, "gyro": 15}
    assert dataset_info("opportunity").paper_rep_size() == 10
    assert dataset_info("ur_fall").channels == {"acce": 3, "depth": 8}  # rgb width comes from the user


def test_bad_names_and_paths_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("nope")
    with pytest.raises(UserError, match="not found"):
        load_dataset("hapt", tmp_path / "missing")
    with pytest.raises(UserError):
        load_dataset("hapt", tmp_path)  # exists but holds no npz
    with pytest.raises(UserError, match="option"):
        load_dataset("demo", bogus=1)
    (tmp_path / "hapt_raw.npz").write_bytes(b"garbage, not a zip")
    with pytest.raises(UserError, match="cannot read"):
        load_dataset("hapt", tmp_path)


# --- upstream formats written here (the real files are not on this machine) ---------------------------


def _write_hapt_rawdata(root, recs):
    """HAPT RawData exactly as UCI ships it: space-separated floats, labels.txt 'exp user act start end'."""
    root.mkdir()
    spans = []
    for r in recs:
        user, exp = int(r.subject[4:]), int(r.unit.split("exp")[1])
        np.savetxt(root / f"acc_exp{exp:02d}_user{user:02d}.txt", r.modalities["acce"], fmt="%.9g", delimiter=" ")
        np.savetxt(root / f"gyro_exp{exp:02d}_user{user:02d}.txt", r.modalities["gyro"], fmt="%.9g", delimiter=" ")
        lab = r.labels
        change = np.flatnonzero(np.diff(np.r_[-2, lab, -2]))
        for a, b in zip(change[:-1], change[1:]):
            if lab[a] >= 0:
                spans.append((exp, user, lab[a] + 1, a, b - 1))
    np.savetxt(root / "labels.txt", np.asarray(spans), fmt="%d")


def test_hapt_uci_rawdata_reproduces_the_npz(tmp_path):
    demo = load_dataset("demo")[:2]
    _write_hapt_rawdata(tmp_path / "RawData", demo)
    recs = load_dataset("hapt_uci", tmp_path)
    assert [r.unit for r in recs] == [r.unit for r in demo]
    for got, want in zip(recs, demo):
        np.testing.assert_array_equal(got.modalities["acce"], want.modalities["acce"])
        np.testing.assert_array_equal(got.modalities["gyro"], want.modalities["gyro"])
        np.testing.assert_array_equal(got.labels, want.labels)
        _check_recording(got, {"acce": 3, "gyro": 3})


def test_mhealth_log_columns_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "MHEALTHDATASET"
    folder.mkdir()
    for s in (1, 2, 10):
        raw = rng.normal(size=(120, 24)).round(4)
        raw[:, 23] = np.repeat([0, 4, 12], 40)
        raw[5, 0] = np.nan
        np.savetxt(folder / f"mHealth_subject{s}.log", raw, fmt="%g", delimiter="\t")
    recs = load_dataset("mhealth", tmp_path)
    assert [r.unit for r in recs] == ["subject01", "subject02", "subject10"]
    raw = np.loadtxt(folder / "mHealth_subject2.log")
    r = recs[1]
    _check_recording(r, {"acce": 9, "gyro": 6, "mage": 6})
    np.testing.assert_array_equal(r.modalities["acce"][:, 3:6], raw[:, 5:8].astype(np.float32))
    np.testing.assert_array_equal(r.modalities["gyro"][:, 3:], raw[:, 17:20].astype(np.float32))
    np.testing.assert_array_equal(r.modalities["mage"][:, :3], raw[:, 11:14].astype(np.float32))
    assert r.labels.tolist() == [0] * 40 + [4] * 40 + [12] * 40
    assert r.label_names[4] == "walking" and r.rate_hz == 50
    assert recs[0].modalities["acce"][5, 0] == recs[0].modalities["acce"][4, 0]  # NaN forward filled


def test_mhealth_wrong_column_count_is_user_error(tmp_path):
    np.savetxt(tmp_path / "mHealth_subject1.log", np.zeros((5, 20)), delimiter="\t")
    with pytest.raises(UserError, match="24 columns"):
        load_dataset("mhealth", tmp_path)


def _write_opportunity(path, rng, n=90):
    raw = rng.normal(size=(n, 250)).round(3)
    raw[:, 0] = np.arange(n) * 33 + 100  # MILLISEC
    raw[:, 115] = np.repeat([0, 406516, 405506], n // 3)
    raw[:, 115][-1] = 999  # unknown gesture code -> unlabelled
    text = "\n".join(" ".join("NaN" if (i == 7 and j == 2) else f"{v:g}" for j, v in enumerate(row))
                     for i, row in enumerate(raw))
    path.write_text(text + "\n")
    return raw


def test_opportunity_columns_gyro_fix_and_labels(tmp_path):
    rng = np.random.default_rng(1)
    raws = {name: _write_opportunity(tmp_path / f"{name}.dat", rng) for name in ("S1-ADL1", "S2-ADL4")}
    (tmp_path / "S1-Drill.dat").write_text("not an ADL run\n")  # drill runs are not ADL and are skipped
    fixed = load_dataset("opportunity", tmp_path)
    faithful = load_dataset("opportunity", tmp_path, faithful=True)
    assert [r.unit for r in fixed] == ["S1-ADL1", "S2-ADL4"]
    r, raw = fixed[0], raws["S1-ADL1"]
    _check_recording(r, {"acce": 63, "gyro": 15})
    np.testing.assert_array_equal(r.modalities["acce"][:, 39], raw[:, 46].astype(np.float32))
    np.testing.assert_array_equal(r.modalities["gyro"][:, 12:], raw[:, 76:79].astype(np.float32))
    np.testing.assert_array_equal(faithful[0].modalities["gyro"][:, 12:], raw[:, 66:69].astype(np.float32))
    assert r.modalities["acce"][7, 1] == r.modalities["acce"][6, 1]  # "NaN" in the file, forward filled
    assert r.labels[:30].tolist() == [0] * 30 and r.labels[30] == 1 and r.labels[60] == 17 and r.labels[-1] == -1
    assert r.timestamps[1] - r.timestamps[0] == pytest.approx(0.033)


def test_hapt_rawdata_label_span_outside_the_run_is_user_error(tmp_path):
    demo = load_dataset("demo")[:1]
    _write_hapt_rawdata(tmp_path / "RawData", demo)
    with (tmp_path / "RawData" / "labels.txt").open("a") as fh:
        fh.write(f"1 1 5 10 {len(demo[0]) + 5}\n")
    with pytest.raises(UserError, match="outside"):
        load_dataset("hapt_uci", tmp_path)


def test_sensors_never_imports_torch():
    """Gateways with the [infer] extra have no torch: every sensors module must import without it."""
    import subprocess
    import sys

    code = ("import sys; import sensors.datasets, sensors.splits, sensors.windowing, sensors.store, sensors.sources, "
            "sensors.readers.generic, fedmekt_cli.data; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
