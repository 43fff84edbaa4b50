"""Signed packages: what is in the manifest, and refusal of tampered, truncated or unsigned packages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.install import ModelStore
from export.package import (MANIFEST, SIGNATURE, Manifest, PackageError, generate_keypair, load_private_key,
                            load_public_key, sign_package, verify_package)
from export_support import built_package, signing_keys, trained_run
from fedmekt.errors import UserError


@pytest.fixture
def keys(tmp_path_factory):
    private, public = signing_keys(tmp_path_factory)
    return load_private_key(private), load_public_key(public)


@pytest.fixture
def package(data_dir, tmp_path_factory, tmp_path) -> Path:
    """A fresh copy of the signed HAPT package that a test may damage."""
    return Path(shutil.copytree(built_package("hapt", data_dir, tmp_path_factory), tmp_path / "pkg"))


def test_manifest_describes_the_run(package, keys, data_dir, tmp_path_factory):
    info = trained_run("hapt", data_dir, tmp_path_factory).model.info
    verified = verify_package(package, keys[1])
    m = verified.manifest
    assert verified.signed
    assert (m.federation, m.round, m.algorithm, m.dataset) == (info.federation, info.rounds_completed,
                                                                info.algorithm, "hapt")
    assert m.label_names == info.label_names and m.window == info.window and m.precision == "fp32"
    assert m.modalities == ("acce", "gyro")
    for entry in m.models:
        assert entry.channels == info.channels[entry.modality] == 3
        assert list(entry.norm_mean) == pytest.approx(info.norm_mean[entry.modality])
        assert list(entry.norm_std) == pytest.approx(info.norm_std[entry.modality])
        assert (package / entry.file).stat().st_size == entry.bytes
    assert sorted(p.name for p in package.iterdir()) == sorted([MANIFEST, SIGNATURE, "acce.onnx", "gyro.onnx"])


@pytest.mark.parametrize("damage,message", [
    (lambda p: (p / SIGNATURE).unlink(), "unsigned package"),
    (lambda p: (p / "acce.onnx").write_bytes((p / "acce.onnx").read_bytes()[:-100]), "truncated"),
    (lambda p: (p / "gyro.onnx").write_bytes(b"\x00" + (p / "gyro.onnx").read_bytes()[1:]), "altered"),
    (lambda p: (p / "acce.onnx").unlink(), "missing"),
    (lambda p: (p / MANIFEST).write_bytes((p / MANIFEST).read_bytes().replace(b'"round": 3', b'"round": 9')),
     "bad signature"),
    (lambda p: (p / SIGNATURE).write_bytes(b"\x01" * 64), "bad signature"),
    (lambda p: (p / MANIFEST).unlink(), "not a model package"),
])
def test_damaged_package_is_refused(package, keys, damage, message):
    damage(package)
    with pytest.raises(PackageError, match=message) as exc:
        verify_package(package, keys[1])
    assert "\n" not in str(exc.value)


def test_package_signed_by_another_key_is_refused(package, keys, tmp_path):
    generate_keypair(tmp_path / "rogue.key", tmp_path / "rogue.pub")
    manifest = Manifest.from_bytes((package / MANIFEST).read_bytes())
    sign_package(package, manifest, load_private_key(tmp_path / "rogue.key"))
    verify_package(package, load_public_key(tmp_path / "rogue.pub"))  # valid for its own key…
    with pytest.raises(PackageError, match="bad signature"):
        verify_package(package, keys[1])  # …but not for the gateway's


def test_signed_manifest_with_a_path_outside_the_package_is_refused(package, keys):
    """Even a correctly signed manifest may not name files outside the package directory."""
    data = json.loads((package / MANIFEST).read_bytes())
    data["models"][0]["file"] = "../../etc/acce.onnx"
    (package / MANIFEST).write_bytes(json.dumps(data).encode())
    (package / SIGNATURE).write_bytes(keys[0].sign((package / MANIFEST).read_bytes()))
    with pytest.raises(PackageError, match="invalid manifest: file name"):
        verify_package(package, keys[1])


def test_refused_install_keeps_the_model_in_service(package, keys, tmp_path, data_dir, tmp_path_factory):
    store = ModelStore(tmp_path / "store", keys[1])
    assert store.current() is None
    first = store.install(package)
    damaged = Path(shutil.copytree(package, tmp_path / "damaged"))
    (damaged / "acce.onnx").write_bytes((damaged / "acce.onnx").read_bytes()[:1000])
    with pytest.raises(PackageError, match="truncated"):
        store.install(damaged)
    now = store.current()
    assert now.path == first.path and now.package.files == first.package.files
    assert sorted(p.name for p in (tmp_path / "store" / "versions").iterdir()) == [first.path.name]


def test_older_round_is_refused_as_stale(package, keys, tmp_path):
    store = ModelStore(tmp_path / "store", keys[1])
    store.install(package)
    old = Path(shutil.copytree(package, tmp_path / "old"))
    manifest = Manifest.from_bytes((old / MANIFEST).read_bytes())
    sign_package(old, Manifest(**{**manifest.__dict__, "round": manifest.round - 1}), keys[0])
    with pytest.raises(PackageError, match="stale package"):
        store.install(old)


def test_rollback_to_an_older_runs_package_is_refused_whatever_its_round(package, keys, tmp_path):
    """Packages are ordered by the signed run order first: an older run's round 9 never replaces a newer
    run's round 1; the run and federation bindings are part of the signed manifest."""
    from fedmekt.wire.runs import new_run_id

    def resigned(name: str, **changes) -> Path:
        pkg = Path(shutil.copytree(package, tmp_path / name))
        manifest = Manifest.from_bytes((pkg / MANIFEST).read_bytes())
        sign_package(pkg, Manifest(**{**manifest.__dict__, **changes}), keys[0])
        return pkg

    old, new = new_run_id(1), new_run_id(2)
    store = ModelStore(tmp_path / "store", keys[1])
    assert store.install(resigned("new1", run=new, round=1), federation="test-hapt", run=new).package.manifest.run == new
    with pytest.raises(PackageError, match="stale package: run .* round 9 is older"):
        store.install(resigned("old9", run=old, round=9))
    with pytest.raises(PackageError, match="names run"):
        store.install(resigned("old10", run=old, round=10), run=new)
    with pytest.raises(PackageError, match="federation 'other'"):
        store.install(resigned("other", run=new, round=2, federation="other"), federation="test-hapt")
    assert store.current().package.manifest.round == 1
    assert Manifest.from_bytes((package / MANIFEST).read_bytes()).run == ""  # exported by hand: bound to no run


def test_key_files(tmp_path):
    generate_keypair(tmp_path / "a.key", tmp_path / "a.pub")
    assert (tmp_path / "a.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(UserError, match="refusing to overwrite"):
        generate_keypair(tmp_path / "a.key", tmp_path / "b.pub")
    with pytest.raises(UserError, match="not an Ed25519 public key|not a PEM Ed25519 key"):
        load_public_key(tmp_path / "a.key")
