"""Mixed fleets (issue 22): gateways of several device classes, each with the encoder width it affords, in one
FedMEKT federation; the server distils each narrower class's encoder from its global model.

Core: the config refuses what cannot mix; classes keep r, so uploads keep their shape. Through a real
mosquitto: a mixed fleet's simulation (FedMEKT-C, and HeteroFL's width slices: baseline (b)), and its separate
aggregator and client processes, equal the in-process run; each class's gateways install that class's signed package; the aggregator ignores a gateway of a class it
does not accept (one line), and a gateway told so by the manifest exits with that line.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from core_support import tiny_config, tiny_split
from export.install import ModelStore
from export.package import generate_keypair, load_public_key
from fedmekt import device_classes
from fedmekt.config import load_config
from fedmekt.errors import UserError
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.learn.engine import ClientEngine, ServerEngine, build_model
from fedmekt.transport.mqtt import LinkOptions, MqttLink
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.topics import Topics
from fedmekt_cli.simulation import run_simulation
from sensors.datasets import load_dataset
from sensors.splits import make_split
from learning_rows import learning



# ---- core -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, words", [
    (dict(algorithm="mmfedavg", fleet="mixed"), "averages parameters"),
    (dict(fleet="mixed", layers="rep+hidden"), "layers = 'rep'"),
    (dict(fleet="tiny"), "fleet must name"),
    (dict(fleet="small,small"), "distinct"),
])
def test_config_refuses_a_fleet_that_cannot_run(kw, words):
    with pytest.raises(UserError, match=words):
        tiny_config(**kw)


def test_fleet_deals_sorted_clients_round_robin_and_the_global_model_is_the_widest():
    assert device_classes.assign("mixed", ["c2", "c0", "c1", "c3"]) == {
        "c0": "small", "c1": "standard", "c2": "large", "c3": "small"}
    assert device_classes.parse_fleet("large, small") == ("small", "large")
    assert device_classes.resolve("small", None) == "small" and device_classes.resolve("mixed", None) == "standard"
    cfg, split = tiny_config(fleet="small,large"), tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    assert server.model.hidden == 16  # tiny_config's hidden 8 is the standard width; large doubles it


def test_every_class_uploads_the_same_shape():
    cfg, split = tiny_config(fleet="mixed"), tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = server.plan_round(0, [c.client_id for c in split.clients])
    down = server.downstream(plan)
    client = next(c for c in split.clients if c.modalities == ("a", "b"))
    shapes = {}
    for device_class in device_classes.CLASSES:
        engine = ClientEngine(cfg, client.client_id, client.modalities, split.channels, split.proxy, device_class)
        assert engine.model.hidden == device_classes.hidden_for(cfg.hidden, device_class)
        upload = engine.train_round(plan, down, client.data)
        shapes[device_class] = {k: v.shape for k, v in upload.items()}
    assert shapes["small"] == shapes["standard"] == shapes["large"]
    with pytest.raises(ValueError, match="does not accept"):
        ClientEngine(tiny_config(fleet="small"), client.client_id, client.modalities, split.channels, split.proxy,
                     "large")


def test_each_narrower_class_gets_an_encoder_of_its_width_distilled_from_the_global_one():
    cfg, split = tiny_config(fleet="mixed"), tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    models = server.class_models()
    assert {c: m.model.hidden for c, m in models.items()} == {"small": 4, "standard": 8, "large": 16}
    assert models["large"].model is server.deployed().model  # the widest class ships the deployed model
    assert all(torch.equal(v, server.model.state_dict()[k]) for k, v in before.items())  # the teacher is read only
    # the student moved towards the teacher's z: closer than where it started
    x = torch.from_numpy(split.proxy.modalities["a"][:64][None])
    with torch.no_grad():
        target = server.model.encode(x, "a")[0]
        fresh = build_model(cfg, split.channels, "small").encode(x, "a")[0]
        distilled = models["small"].model.encode(x, "a")[0]
    assert torch.mean((distilled - target) ** 2) < torch.mean((fresh - target) ** 2)


def test_a_package_before_the_last_round_warm_starts_each_class_and_the_last_round_distils_afresh():
    """A package due before the last round starts each narrower student from the class's previous package
    (``class_distil_warm_steps`` 0: the very same encoders); after the last round every student is distilled
    afresh, so the final models do not depend on how many packages went out before."""
    cfg = tiny_config(fleet="mixed", rounds=3, hyper=dict(class_distil_steps=8, class_distil_warm_steps=0))
    split = tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)

    def advance() -> dict:
        plan = server.plan_round(server.rounds_completed, [c.client_id for c in split.clients])
        server.begin_round(plan)
        server.update_without_uploads(plan)   # the server's own steps move the global encoders
        server.finish_round(plan)
        return {k: v.clone() for k, v in server.class_models()["small"].model.encoders.state_dict().items()}

    first, second, last = advance(), advance(), advance()
    assert all(torch.equal(first[k], second[k]) for k in first)   # warm, no steps: the previous package's encoders
    fresh = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    fresh.load_state_dict(server.state_dict())   # the same global model, no package history
    alone = fresh.class_models()["small"].model.encoders.state_dict()
    assert all(torch.equal(last[k], alone[k]) for k in last)
    assert not all(torch.equal(last[k], second[k]) for k in last)


# ---- through mosquitto ----------------------------------------------------------------------------------
@pytest.mark.broker
@pytest.mark.parametrize("algorithm", ["fedmekt-c", "heterofl"])   # heterofl: baseline (b), parameters by width
def test_mixed_fleet_through_mosquitto_equals_inprocess(mosquitto, tmp_path, algorithm):
    cfg, split = tiny_config(algorithm, fleet="mixed", hyper=dict(class_distil_steps=8)), tiny_split()
    sim = run_simulation(cfg, split, url=mosquitto.url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                         workdir=tmp_path / "devices", round_timeout=60)
    ref = run_inprocess(cfg, split, progress=False)
    for row in sim.result.rows:
        assert row["absorbed"] == row["selected"] == cfg.per_round
    assert [learning(r) for r in sim.result.rows] == [learning(r) for r in ref.rows]
    assert learning(sim.result.final) == learning(ref.final)
    for k, v in ref.model_state.items():
        np.testing.assert_array_equal(sim.result.model_state[k], v)
    for c in device_classes.CLASSES:
        assert 0.0 <= ref.final[f"class_{c}_deployed_f1_weighted_a"] <= 1.0
    assert ref.final["class_small_hidden"] == 4 and ref.final["class_large_hidden"] == 16


@pytest.mark.broker
def test_aggregator_ignores_a_gateway_of_a_class_it_does_not_accept(mosquitto, tmp_path, caplog):
    cfg, split = tiny_config(fleet="small,standard", rounds=1), tiny_split()
    topics = Topics(cfg.federation)
    # retained before the aggregator subscribes: the first status it reads
    with MqttLink(mosquitto.url, LinkOptions(client_id="intruder")).connect() as link:
        link.publish_all([(topics.status("intruder"), fedwire.Status("online", ("a",), device_class="large").to_bytes())],
                         retain=True)
    with caplog.at_level(logging.WARNING, logger="aggregator"):
        sim = run_simulation(cfg, split, url=mosquitto.url, out=tmp_path / "out", progress=False, rate_hz=20.0,
                             workdir=tmp_path / "devices", round_timeout=60)
    lines = [r.getMessage() for r in caplog.records if "intruder" in r.getMessage()]
    assert lines == ["ignoring intruder: 'large' is a device class it does not accept for federation t "
                     "(it accepts: small, standard; choose one with --device-class)"]
    assert all("intruder" not in row["participants"] for row in sim.result.rows)


@pytest.mark.broker
def test_gateway_of_a_refused_class_exits_with_one_line(mosquitto, tmp_path):
    """``device-class`` from the gateway's TOML config; the retained manifest says which classes are accepted."""
    cfg, split = tiny_config(fleet="small,standard"), tiny_split()
    manifest, _ = fedwire.build(cfg, split, run="")
    with MqttLink(mosquitto.url, LinkOptions(client_id="aggregator")).connect() as link:
        link.publish_all([(Topics(cfg.federation).proxy_manifest, manifest.to_bytes())], retain=True)
    channels = split.channels["a"]
    csv = tmp_path / "samples.csv"
    csv.write_text("".join(f"{i * 0.05!r}," + ",".join("0.5" for _ in range(channels)) + "\n" for i in range(50)))
    gateway = tmp_path / "gateway.toml"
    gateway.write_text(f'broker = "{mosquitto.url}"\nclient-id = "gw01"\nfederation = "{cfg.federation}"\n'
                       f'device-class = "large"\nexit-when-done = true\n')
    proc = subprocess.run([sys.executable, "-m", "fedmekt_cli", "client", "--config", str(gateway),
                           "--source", f"csv:{csv}", "--modalities", f"a:{channels}",
                           "--store", str(tmp_path / "gw" / "store.sqlite")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert ("gw01: 'large' is a device class it does not accept for federation t (it accepts: small, standard; "
            "choose one with --device-class)") in proc.stderr.splitlines()[-1]


# ---- separate processes ---------------------------------------------------------------------------------
def _mixed_processes(fed, tmp_path, algorithm: str = "fedmekt-c"):
    """``fed`` made a mixed fleet of ``algorithm``, a signing key pair in ``tmp_path``, and one ``fedmekt client
    --device-class …`` process per client, dealt as reproduce deals them (the aggregator is the caller's to start)."""
    fed.config.write_text(fed.config.read_text().replace(  # top-level keys before the table
        "[hyper]\n", f'fleet = "mixed"\nalgorithm = "{algorithm}"\n[hyper]\n'
                      'class_distil_steps = 4\nclass_distil_warm_steps = 4\n'))
    generate_keypair(tmp_path / "agg.key", tmp_path / "agg.pub")
    for cid, device_class in device_classes.assign("mixed", fed.client_ids).items():
        fed.start_client(cid, True, "--device-class", device_class, "--public-key", str(tmp_path / "agg.pub"))
    return fed


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.parametrize("algorithm", ["fedmekt-c", "heterofl"])
def test_mixed_fleet_of_processes_equals_inprocess_and_each_class_installs_its_package(federation, tmp_path,
                                                                                        algorithm):
    """``fedmekt aggregator`` and one ``fedmekt client --device-class …`` process per client (dealt as reproduce
    deals them): the same final figures as the in-process run, and each gateway installs its class's package
    (under heterofl its slice of the global model)."""
    fed = _mixed_processes(federation(rounds=2, clients=(1, 1, 1), per_round=3, round_timeout=60.0,
                                      federation="fleet"), tmp_path, algorithm)
    classes = device_classes.assign("mixed", fed.client_ids)
    assert sorted(classes.values()) == ["large", "small", "standard"]
    fed.start_aggregator("--signing-key", str(tmp_path / "agg.key"))
    assert fed.wait_exit("aggregator", 300) == 0, fed.log("aggregator")[-3000:]
    for cid in fed.client_ids:
        assert fed.wait_exit(cid, 60) == 0, fed.log(cid)[-3000:]
        installed = ModelStore(fed.store(cid).parent / "models", load_public_key(tmp_path / "agg.pub")).current()
        assert installed is not None and installed.package.manifest.device_class == classes[cid], fed.log(cid)[-2000:]
        assert "refused model package" not in fed.log(cid)

    cfg = load_config(fed.config)
    split = make_split(load_dataset(cfg.dataset), cfg.pair, scheme=cfg.partition, seed=cfg.seed, clients=cfg.clients)
    ref = run_inprocess(cfg, split, progress=False).final
    final = json.loads((fed.out / "final.jsonl").read_text().splitlines()[-1])
    assert final["algorithm"] == algorithm
    keys = [k for k in ref if k.startswith(("probe_f1", "deployed_f1", "class_"))]
    assert any(k.startswith("class_small_") for k in keys)
    assert {k: final[k] for k in keys} == {k: ref[k] for k in keys}


@pytest.mark.slow
@pytest.mark.broker
def test_a_sync_answer_carries_the_package_of_the_asking_gateways_class(federation, no_retain, tmp_path):
    """On a broker that keeps nothing, an inference-only small-class gateway that joins after a package went out
    gets that class's package (models/small/) in the answer to its sync request, and no other class's. Four
    rounds: the aggregator is still running rounds (and answering) when the gateway asks."""
    fed = _mixed_processes(federation(rounds=4, clients=(1, 1, 1), per_round=3, round_timeout=60.0,
                                      federation="fleetsync", broker=no_retain), tmp_path)
    fed.start_aggregator("--signing-key", str(tmp_path / "agg.key"), "--package-every", "1")
    topics = Topics("fleetsync")
    small = topics.models_of("small") + "/manifest"
    fed.wait_until(lambda: any(t == small for _, t, _p in fed.recorder.snapshot()), 180,
                   "the small class's first package to go out (live only: nothing is retained)")
    fed.start_infer_only("gw01", tmp_path / "agg.pub", "--device-class", "small")
    assert fed.wait_exit("gw01", 150) == 0, fed.log("gw01")[-3000:]
    installed = ModelStore(tmp_path / "gw01" / "models", load_public_key(tmp_path / "agg.pub")).current()
    assert installed is not None and installed.package.manifest.device_class == "small", fed.log("gw01")[-2000:]
    answered = {topics.replied("gw01", t) for _, t, p in fed.recorder.snapshot() if p}
    assert small in answered, sorted(a for a in answered if a)
    assert not {topics.models_of(c) + "/manifest" for c in ("standard", "large")} & answered
    assert fed.wait_exit("aggregator", 300) == 0, fed.log("aggregator")[-3000:]
