"""The documented generic format (CSV and NPZ, TOML and JSON descriptors) and `fedmekt data`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmekt_cli.main import main
from fedmekt.errors import UserError
from sensors.datasets import load_dataset
from sensors.splits import make_split

TOML = """
name = "wristband"
rate_hz = 20
time_column = "t_ms"
time_unit = "ms"
label_column = "label"
label_names = ["walk", "sit", "stand"]
[modalities]
acce = ["ax", "ay", "az"]
gyro = ["gx", "gy"]
"""


def _csv(path, n, rng, t0=0):
    lines = ["t_ms,ax,ay,az,gx,gy,label,battery"]
    for i in range(n):
        ax = "" if i == 3 else f"{rng.normal():.5f}"  # empty cell -> forward filled
        lines.append(f"{t0 + 50 * i},{ax},{rng.normal():.5f},{rng.normal():.5f},{rng.normal():.5f},inf,{i % 3},0.9")
    lines.insert(8, lines[7])  # a duplicated row (same timestamp) -> dropped
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def generic_dir(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "wristband"
    for subject in ("alice", "bob", "carol", "dave", "erin"):
        (root / subject).mkdir(parents=True)
        _csv(root / subject / "run1.csv", 60, rng)
    (root / "dataset.toml").write_text(TOML)
    # erin also has an NPZ run whose gyro is logged at 10 Hz on its own clock
    t = np.arange(40) * 50.0
    np.savez(root / "erin" / "run2.npz", t_ms=t, acce=rng.normal(size=(40, 3)).astype(np.float32),
             gyro=np.stack([np.arange(20) * 1.0, np.zeros(20)], axis=1), t_gyro=np.arange(20) * 100.0,
             label=np.full(40, -1))
    return root


def test_generic_csv_and_npz(generic_dir):
    recs = load_dataset("generic", generic_dir)
    assert [r.unit for r in recs] == ["alice/run1", "bob/run1", "carol/run1", "dave/run1", "erin/run1", "erin/run2"]
    r = recs[0]
    assert r.dataset == "wristband" and r.subject == "alice" and r.rate_hz == 20
    assert len(r) == 60  # the duplicated timestamp row is gone
    assert {m: x.shape[1] for m, x in r.modalities.items()} == {"acce": 3, "gyro": 2}
    assert r.modalities["acce"][3, 0] == r.modalities["acce"][2, 0]
    assert (r.modalities["gyro"][:, 1] == 0).all()  # inf with nothing before it -> 0
    np.testing.assert_allclose(np.diff(r.timestamps), 0.05)
    assert r.labels[:4].tolist() == [0, 1, 2, 0] and r.label_names == ("walk", "sit", "stand")
    npz = recs[-1]
    # gyro at 10 Hz resampled onto the 20 Hz base: channel 0 counts 0,1,2,… per 100 ms -> 0, .5, 1, …
    np.testing.assert_allclose(npz.modalities["gyro"][:6, 0], [0, 0.5, 1, 1.5, 2, 2.5])
    assert (npz.labels == -1).all()
    split = make_split(recs, ("acce", "gyro"), clients=(1, 1, 1), n_div=4)
    assert split.manifest["disjoint_by"] == "subject"


def test_generic_json_descriptor_and_errors(generic_dir, tmp_path):
    (generic_dir / "dataset.toml").unlink()
    desc = {"rate_hz": 20, "modalities": {"acce": ["ax", "ay", "az"]}}
    (generic_dir / "dataset.json").write_text(json.dumps(desc))
    recs = load_dataset("generic", generic_dir)
    assert recs[0].dataset == "generic" and (recs[0].labels == -1).all()
    desc["modalities"]["acce"].append("missing_col")
    (generic_dir / "dataset.json").write_text(json.dumps(desc))
    with pytest.raises(UserError, match="missing_col"):
        load_dataset("generic", generic_dir)
    (generic_dir / "dataset.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot parse"):
        load_dataset("generic", generic_dir)
    with pytest.raises(UserError, match="dataset.toml"):
        load_dataset("generic", tmp_path)


def test_generic_rejects_out_of_range_labels(generic_dir):
    (generic_dir / "dataset.toml").write_text(TOML.replace('["walk", "sit", "stand"]', '["walk", "sit"]'))
    with pytest.raises(UserError, match="labels"):
        load_dataset("generic", generic_dir)


def test_cli_data_inspect_and_split(capsys, tmp_path, generic_dir):
    assert main(["data", "inspect", "demo", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["recordings"] == 8 and info["modalities"]["acce"]["channels"] == 3
    assert sum(info["labels"].values()) == info["rows"] == 147_104
    assert main(["data", "inspect", "generic", "--data-dir", str(generic_dir)]) == 0
    out = capsys.readouterr().out
    assert "wristband" in out and "alice" in out and "walk" in out
    assert main(["data", "inspect", "hapt", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["data", "split", "demo", "--scheme", "subject", "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["scheme"] == "subject"
    # --pair A-B and --clients a,b,ab are spelt as in reproduce and simulate
    assert main(["data", "split", "demo", "--pair", "gyro-acce", "--clients", "1,2,3",
                 "--out", str(tmp_path / "p.json")]) == 0
    manifest = json.loads((tmp_path / "p.json").read_text())
    assert manifest["pair"] == ["gyro", "acce"] and len(manifest["clients"]) == 6
    assert main(["data", "split", "demo", "--clients", "1,2", "--out", str(tmp_path / "c.json")]) == 2
    assert "--clients must be 3 comma-separated integers" in capsys.readouterr().err
    assert main(["data", "split", "generic", "--data-dir", str(generic_dir), "--scheme", "subject",
                 "--out", str(tmp_path / "g.json")]) == 0  # pair defaults to the files' first two modalities
    assert json.loads((tmp_path / "g.json").read_text())["pair"] == ["acce", "gyro"]
    assert main(["data", "split", "demo", "--pair", "acce-depth", "--out", str(tmp_path / "x.json")]) == 2


def test_resample_hz_brings_a_100_hz_dataset_to_50_hz(tmp_path, capsys):
    from generic_support import write_generic

    native = load_dataset("generic", write_generic(tmp_path / "native", subjects=2, seconds=10))
    data = write_generic(tmp_path / "half", subjects=2, seconds=10, extra="resample_hz = 50")
    recs = load_dataset("wristband", data)
    r, n = recs[0], native[0]
    assert (r.rate_hz, n.rate_hz, len(r), len(n)) == (50.0, 100.0, 500, 1000)
    np.testing.assert_allclose(np.diff(r.timestamps), 0.02)
    assert (r.labels == n.labels[::2]).all()  # blocks of 5 s: every new row falls on an old one
    # a 2-row box filter, then every other row: the mean of each pair of native rows
    np.testing.assert_allclose(r.modalities["acce"][1:], (n.modalities["acce"][1:-1:2] + n.modalities["acce"][2::2]) / 2,
                               atol=1e-5)
    assert main(["data", "inspect", "--data-dir", str(data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rate_hz"] == [50.0]


def test_descriptor_mistakes_are_refused(generic_dir):
    for text, message in (("label_colum = 'label'\n" + TOML, "unknown key"),
                          (TOML.replace('"wristband"', '"hapt"'), "built-in"),
                          (TOML.replace('"wristband"', '"wrist band"'), "'name'"),
                          (TOML.replace("rate_hz = 20", "rate_hz = 0"), "rate_hz"),
                          (TOML.replace("rate_hz = 20", "resample_hz = 10"), "'rate_hz'")):
        (generic_dir / "dataset.toml").write_text(text)
        with pytest.raises(UserError, match=message):
            load_dataset("generic", generic_dir)
    (generic_dir / "dataset.toml").write_text(TOML)
    with pytest.raises(UserError, match="names dataset 'wristband'"):
        load_dataset("anklet", generic_dir)


def test_npz_string_labels_and_mixed_rates_are_refused(generic_dir, tmp_path):
    np.savez(generic_dir / "erin" / "run2.npz", t_ms=np.arange(4) * 50.0, acce=np.zeros((4, 3)),
             gyro=np.zeros((4, 2)), label=np.array(["walk"] * 4))
    with pytest.raises(UserError, match="'label' must be numeric"):
        load_dataset("generic", generic_dir)
    recs = load_dataset("demo")
    recs[0].rate_hz = 100.0
    with pytest.raises(UserError, match="different rates"):
        make_split(recs, ("acce", "gyro"))
