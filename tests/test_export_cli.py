"""``fedmekt export`` and ``fedmekt export keygen`` on a run folder."""

from __future__ import annotations

import json

import pytest

from export.package import load_public_key, verify_package
from export_support import trained_run
from fedmekt_cli.main import main
from sensors.datasets import dataset_info

LABELS = set(dataset_info("demo").label_names)


def test_keygen_export_and_int8(data_dir, tmp_path, tmp_path_factory, capsys):
    run = trained_run("ur_fall", data_dir, tmp_path_factory)
    assert main(["export", "keygen", "--out", str(tmp_path / "keys" / "agg")]) == 0
    key, pub = tmp_path / "keys" / "agg.key", tmp_path / "keys" / "agg.pub"
    assert main(["export", "--run", str(run.run_dir), "--out", str(tmp_path / "fp32"), "--key", str(key)]) == 0
    assert main(["export", "--run", str(run.run_dir), "--out", str(tmp_path / "int8"), "--int8",
                 "--key", str(key)]) == 0
    fp32 = verify_package(tmp_path / "fp32", load_public_key(pub))
    int8 = verify_package(tmp_path / "int8", load_public_key(pub))
    assert fp32.manifest.modalities == int8.manifest.modalities == ("acce", "depth")
    assert (fp32.manifest.precision, int8.manifest.precision) == ("fp32", "int8")
    assert sorted(int8.files) == ["acce.int8.onnx", "depth.int8.onnx", "manifest.json", "manifest.sig"]
    assert sum(map(len, int8.files.values())) < sum(map(len, fp32.files.values()))
    assert "signed" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["export", "--run", "{tmp}/nope", "--out", "{tmp}/o", "--key", "{tmp}/k"], "cannot read key"),
    (["export", "--run", "{tmp}/nope", "--out", "{tmp}/o"], "no signing key"),
    (["export", "--out", "{tmp}/o"], "--run DIR and --out DIR are required"),
])
def test_bad_input_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEDMEKT_SIGNING_KEY", raising=False)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_not_a_run_folder(tmp_path, capsys):
    assert main(["export", "keygen", "--out", str(tmp_path / "k")]) == 0
    assert main(["export", "--run", str(tmp_path), "--out", str(tmp_path / "o"), "--key", str(tmp_path / "k.key")]) == 2
    assert "not a finished run folder" in capsys.readouterr().err


def test_reproduced_run_exports_and_infers(tmp_path, capsys):
    """The core engine's run folder (fedmekt reproduce) → fedmekt export → fedmekt infer, end to end."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("hidden = 8\nproxy_windows = 6\n[hyper]\nclassifier_epochs = 1\nlocal_epochs = 1\nprobe_max_iter = 20\ndeploy_rounds = 2\n")
    assert main(["reproduce", "--dataset", "demo", "--seeds", "1", "--rounds", "1", "--algorithms", "fedmekt-c",
                 "--config", str(cfg), "--out", str(tmp_path / "repro"), "--no-progress"]) == 0
    (run,) = (tmp_path / "repro" / "runs").iterdir()
    assert main(["export", "keygen", "--out", str(tmp_path / "agg")]) == 0
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "pkg"), "--key", str(tmp_path / "agg.key")]) == 0
    # the run folder that `fedmekt runs`, `log` and `report` name exports its one run too
    assert main(["export", "--run", str(tmp_path / "repro"), "--out", str(tmp_path / "pkg2"),
                 "--key", str(tmp_path / "agg.key")]) == 0
    assert (tmp_path / "pkg2" / "manifest.json").read_bytes() == (tmp_path / "pkg" / "manifest.json").read_bytes()
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "pkg3"), "--key", str(tmp_path / "agg.key"),
                 "--device-class", "large"]) == 2   # a fleet of one class: only its model
    assert "no model of device class 'large'; it has: standard" in capsys.readouterr().err
    assert main(["infer", "--model", str(tmp_path / "pkg"), "--source", "replay:demo", "--modality", "gyro",
                 "--public-key", str(tmp_path / "agg.pub"), "--max-windows", "4"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and all(d["label"] in LABELS and 0 < d["confidence"] <= 1 for d in lines)


def test_mixed_fleet_run_exports_the_package_of_each_device_class(tmp_path, capsys):
    """A mixed fleet's run folder keeps every class's model: ``--device-class`` exports that class's, signed for
    its gateways, each as wide as its class; a class the run has no model for is one line naming those it has."""
    cfg = tmp_path / "mixed.toml"
    cfg.write_text("hidden = 8\nproxy_windows = 6\n[hyper]\nclassifier_epochs = 1\nlocal_epochs = 1\n"
                   "probe_max_iter = 20\ndeploy_rounds = 2\nclass_distil_steps = 4\n")
    assert main(["reproduce", "--dataset", "demo", "--seeds", "1", "--rounds", "1", "--algorithms", "fedmekt-c",
                 "--fleet", "mixed", "--no-reference-rows", "--config", str(cfg), "--out", str(tmp_path / "repro"),
                 "--no-progress"]) == 0
    assert main(["export", "keygen", "--out", str(tmp_path / "agg")]) == 0
    sizes = {}
    for device_class in ("small", "standard", "large"):
        out = tmp_path / device_class
        assert main(["export", "--run", str(tmp_path / "repro"), "--out", str(out), "--key", str(tmp_path / "agg.key"),
                     "--device-class", device_class]) == 0
        package = verify_package(out, load_public_key(tmp_path / "agg.pub"))
        assert package.manifest.device_class == device_class
        sizes[device_class] = len(package.files["gyro.onnx"])
    assert sizes["small"] < sizes["standard"] < sizes["large"], sizes
    assert "device class large" in capsys.readouterr().out
    assert main(["export", "--run", str(tmp_path / "repro"), "--out", str(tmp_path / "typo"),
                 "--key", str(tmp_path / "agg.key"), "--device-class", "smal"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no model of device class 'smal' (did you mean 'small'?); it has: small, standard, large" \
        in err[0], err
    assert not (tmp_path / "typo").exists()
