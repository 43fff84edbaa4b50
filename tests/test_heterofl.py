"""HeteroFL (issue 22 baseline (b)): width-sliced parameter averaging over a mixed fleet.

A narrower class's model is a slice of the wide one (it loads, and computes what the wide model computes with
the other units zeroed); the server averages each element over the clients whose slice covers it and keeps its
value where none did; with one class it is mmFedAvg bit for bit; each class deploys its slice. Through mosquitto:
tests/test_fleet.py runs a mixed heterofl fleet against the in-process run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core_support import tiny_config, tiny_split
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.learn import slicing
from fedmekt.learn.algorithms.base import param_key, to_numpy
from fedmekt.learn.engine import ClientEngine, ServerEngine, build_model
from fedmekt.learn.streaming import StreamingMean
from fedmekt_cli.main import build_parser
from fedmekt_cli.reproduce import build_configs
from learning_rows import learning


def _wide_state(model) -> dict[str, np.ndarray]:
    return {k: to_numpy(v) for k, v in model.state_dict().items()}


def test_a_slice_loads_into_the_narrow_model_and_computes_what_the_wide_one_does_with_the_rest_zeroed():
    cfg, split = tiny_config("heterofl", fleet="mixed"), tiny_split()
    wide, narrow = build_model(cfg, split.channels, "large"), build_model(cfg, split.channels, "small")
    state = _wide_state(wide)
    narrow.load_state_dict({k: torch.from_numpy(v) for k, v in slicing.sliced_state(state, narrow.hidden).items()})
    assert {k: tuple(v.shape) for k, v in narrow.state_dict().items()} == {
        k: slicing.shape_at(k, v.shape, narrow.hidden) for k, v in state.items()}
    zeroed = {}
    for k, v in state.items():   # the units the slice lacks: their rows (gates, biases) set to zero
        kept = np.zeros(v.shape, bool)
        kept[slicing.index(k, v.shape, narrow.hidden)] = True
        rows_only = kept.any(axis=tuple(range(1, v.ndim))) if v.ndim > 1 else kept
        zeroed[k] = torch.from_numpy(np.where(rows_only.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0.0)
                                     .astype(np.float32))
    wide.load_state_dict(zeroed)
    x = torch.from_numpy(split.proxy.modalities["a"][:40][None])
    with torch.no_grad():
        for out_w, out_n in zip(wide.encode(x, "a"), narrow.encode(x, "a")):
            if out_w.shape != out_n.shape:   # the hidden layer: the extra units output exactly 0
                assert torch.all(out_w[..., narrow.hidden:] == 0)
                out_w = out_w[..., :narrow.hidden]
            torch.testing.assert_close(out_w, out_n)
        for m, rec in wide(x, "a").items():
            torch.testing.assert_close(rec, narrow(x, "a")[m])
    with pytest.raises(ValueError, match="no width-16 slice"):
        slicing.sliced("encoders.a.first.weight_hh_l0", np.zeros((32, 8), np.float32), 16)


def test_each_element_is_the_weighted_mean_of_the_uploads_covering_it_and_the_rest_stays():
    """Mixed fleet (global width 16): an A+B client of the small class (width 4, weight mm_weight) uploads 1.0
    everywhere, a unimodal A client of the standard class (width 8, weight 1) uploads 2.0."""
    cfg, split = tiny_config("heterofl", fleet="mixed"), tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    algo, acc, w = server.algorithm, StreamingMean(), cfg.hyper.mm_weight
    plan = server.plan_round(0, [c.client_id for c in split.clients])
    for mods, device_class, value, weight in ((("a", "b"), "small", 1.0, w), (("a",), "standard", 2.0, 1.0)):
        spec = server.expected_upload(mods, plan, device_class)
        upload = {k: np.full(shape, value, np.float32) for k, (shape, _) in spec.items()}
        for k, v in algo.teacher_view(server.party, upload, {}).items():
            acc.add(k, v, weight)
    old = _wide_state(server.model)
    out = algo.aggregate(server.party, acc)
    both, std_only = np.float32((w * 1.0 + 2.0) / (w + 1.0)), np.float32(2.0)
    key = "encoders.a.first.weight_hh_l0"   # [4 × 16, 16]: gate g's unit u is row 16 g + u
    got, before = out[param_key(key)], old[key]
    for g in range(4):
        assert np.all(got[16 * g: 16 * g + 4, :4] == both)
        assert np.all(got[16 * g: 16 * g + 8, 4:8] == std_only) and np.all(got[16 * g + 4: 16 * g + 8, :4] == std_only)
        assert np.array_equal(got[16 * g + 8: 16 * (g + 1)], before[16 * g + 8: 16 * (g + 1)])
        assert np.array_equal(got[16 * g: 16 * g + 8, 8:], before[16 * g: 16 * g + 8, 8:])
    b = out[param_key("encoders.b.first.bias_ih_l0")]   # only the small client holds b
    assert all(np.all(b[16 * g: 16 * g + 4] == 1.0) for g in range(4))
    assert np.array_equal(b[4:16], old["encoders.b.first.bias_ih_l0"][4:16])
    second = out[param_key("encoders.a.second.weight_ih_l0")]   # [4 r, 16]: columns by width, rows never sliced
    assert np.all(second[:, :4] == both) and np.all(second[:, 4:8] == std_only)
    assert np.array_equal(second[:, 8:], old["encoders.a.second.weight_ih_l0"][:, 8:])


@pytest.mark.parametrize("robust", ["clip", "none"])
def test_with_one_class_heterofl_is_mmfedavg_bit_for_bit(robust):
    split = tiny_split()
    ours = run_inprocess(tiny_config("heterofl", robust_aggregation=robust), split, progress=False)
    theirs = run_inprocess(tiny_config("mmfedavg", robust_aggregation=robust), split, progress=False)
    strip = ("run", "algorithm", "variant")
    assert [{k: v for k, v in learning(r).items() if k not in strip} for r in ours.rows] == \
        [{k: v for k, v in learning(r).items() if k not in strip} for r in theirs.rows]
    assert ours.model_state.keys() == theirs.model_state.keys()
    for k, v in theirs.model_state.items():
        np.testing.assert_array_equal(ours.model_state[k], v)


def test_a_client_trains_its_slice_and_the_server_checks_the_width_its_class_declared():
    cfg, split = tiny_config("heterofl", fleet="mixed"), tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = server.plan_round(0, [c.client_id for c in split.clients])
    down, client = server.downstream(plan), next(c for c in split.clients if c.client_id in plan.selected)
    engine = ClientEngine(cfg, client.client_id, client.modalities, split.channels, split.proxy, "small")
    view = {k: v for k, v in down.items() if k.startswith(tuple(f"param/encoders.{m}." for m in client.modalities)
                                                        + tuple(f"param/decoders.{m}." for m in client.modalities))}
    upload = engine.train_round(plan, view, client.data)
    assert slicing.width_of(upload) == 4
    server.begin_round(plan)
    with pytest.raises(ValueError, match="expected float32"):   # a small upload declared as standard
        server.absorb(client.client_id, client.modalities, upload, "standard")
    server.absorb(client.client_id, client.modalities, upload, "small")
    narrow = {k: slicing.sliced(k[len("param/"):], v, 4) for k, v in view.items()}
    with pytest.raises(ValueError, match="narrower"):   # a standard gateway handed a small model
        ClientEngine(cfg, client.client_id, client.modalities, split.channels, split.proxy, "standard") \
            .train_round(plan, narrow, client.data)


def test_each_class_deploys_its_slice_of_the_global_model():
    cfg = tiny_config("heterofl", fleet="mixed", hyper=dict(deploy_rounds=0, deploy_head="linear"))  # the slice
    split = tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    models, wide = server.class_models(), _wide_state(server.model)
    assert {c: m.model.hidden for c, m in models.items()} == {"small": 4, "standard": 8, "large": 16}
    for c, cm in models.items():
        for k, v in cm.model.encoders.state_dict().items():
            np.testing.assert_array_equal(to_numpy(v), slicing.sliced(f"encoders.{k}", wide[f"encoders.{k}"],
                                                                      cm.model.hidden))


def test_reproduce_and_simulate_accept_heterofl_and_only_it_of_the_averaging_algorithms_runs_a_mixed_fleet():
    (cfg,) = build_configs(build_parser().parse_args(["reproduce", "--dataset", "demo", "--algorithms", "heterofl",
                                                     "--fleet", "mixed", "--seeds", "1"]))
    assert cfg.algorithm == "heterofl" and cfg.device_classes == ("small", "standard", "large")
    assert build_parser().parse_args(["simulate", "--algorithm", "heterofl"]).algorithm == "heterofl"
    (default,) = {c.algorithm for c in build_configs(build_parser().parse_args(
        ["reproduce", "--dataset", "demo", "--seeds", "1"]))} & {"heterofl"} or {None}
    assert default is None   # the paper's five stay the default
