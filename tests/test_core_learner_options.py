"""Learner options measured under the validation protocol (docs/fedmekt-c-selection.md): distillation
targets, cross-modal alignment, the server's walk over the labelled inputs. Off by default; each changes
what is learnt and none changes what is sent."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedmekt.learn.algorithms.base import inputs_only, masked
from fedmekt.config import FederationConfig
from fedmekt.errors import UserError
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.learn.engine import build_model
from fedmekt.learn.losses import alignment_loss, distillation_loss, embedding_mse, kd_loss
from sensors.windowing import gather_windows, window_starts
from tests.core_support import tiny_config, tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()


def _t(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_distillation_kinds():
    s, t = _t(4, 6, 2, seed=1).requires_grad_(True), _t(4, 6, 2, seed=2)
    assert torch.equal(distillation_loss(s, t, "kl", 3.0), kd_loss(s, t, 3.0))
    assert torch.equal(distillation_loss(s, t, "mse", 3.0), embedding_mse(s, t))
    assert torch.equal(distillation_loss(s, t, "kl", 3.0, faithful=True), kd_loss(s, t, 3.0, faithful=True))
    # time-axis softmax: distributions over the 6 steps, exact KL (zero on identical inputs)
    assert not torch.isclose(distillation_loss(s, t, "kl-time", 3.0), kd_loss(s, t, 3.0))
    assert float(distillation_loss(t, t, "kl-time", 3.0)) == pytest.approx(0.0, abs=1e-6)
    # standardised targets: invariant to a common per-channel affine map of student and teacher
    scale, shift = torch.tensor([10.0, 0.1]), torch.tensor([3.0, -2.0])
    for kind in ("kl-std", "mse-std"):
        a = distillation_loss(s, t, kind, 3.0)
        b = distillation_loss(s * scale + shift, t * scale + shift, kind, 3.0)
        assert torch.isclose(a, b, rtol=1e-4)
        a.backward()
        assert s.grad is not None and float(s.grad.abs().sum()) > 0
        s.grad = None


def test_alignment_is_lowest_on_aligned_pairs_and_trains_both_sides():
    za, zb = _t(8, 5, 2, seed=3).requires_grad_(True), _t(8, 5, 2, seed=4).requires_grad_(True)
    for kind in ("mse", "cosine"):
        assert alignment_loss(za, za.detach(), kind).item() == pytest.approx(0.0, abs=1e-6)
        assert alignment_loss(za, zb, kind).item() > 0.1
    near = za.detach() + 0.01 * _t(8, 5, 2, seed=5)
    assert alignment_loss(za, near, "infonce", 0.1).item() < alignment_loss(za, zb, "infonce", 0.1).item()
    alignment_loss(za, zb, "infonce", 0.1).backward()
    assert float(za.grad.abs().sum()) > 0 and float(zb.grad.abs().sum()) > 0


def test_inputs_only_stacks_rows_offsets_segments_and_drops_labels(split):
    both = inputs_only([split.proxy, split.labelled], ("a", "b"))
    n = len(split.proxy)
    assert len(both) == n + len(split.labelled) and (both.labels == -1).all()
    np.testing.assert_array_equal(both.modalities["a"][n:], split.labelled.modalities["a"])
    np.testing.assert_array_equal(both.segments[len(split.proxy.segments):], split.labelled.segments + n)
    assert both.units == split.proxy.units + split.labelled.units


def test_masking_zeroes_the_same_steps_of_every_modality_and_draws_nothing_when_off():
    xs = {"a": _t(64, 30, 3, seed=6), "b": _t(64, 30, 2, seed=7)}
    rng = np.random.default_rng(0)
    assert masked(xs, 0.0, rng) is xs and rng.bit_generator.state == np.random.default_rng(0).bit_generator.state
    seen = masked(xs, 0.5, rng)
    hidden = seen["a"].eq(0).all(-1)
    assert torch.equal(hidden, seen["b"].eq(0).all(-1)) and 0.4 < hidden.float().mean() < 0.6
    assert torch.equal(seen["a"][~hidden], xs["a"][~hidden]) and not xs["a"].eq(0).all(-1).any()


def _run(split, algorithm="fedmekt-c", **kw):
    hyper = kw.pop("hyper", {})
    cfg = tiny_config(algorithm, **{"rounds": 1, **kw})
    cfg = dataclasses.replace(cfg, hyper=dataclasses.replace(cfg.hyper, **hyper))
    return run_inprocess(cfg, split, progress=False)


@pytest.mark.parametrize("algorithm, option", [
    ("fedmekt-c", {"server_walk_labelled": True}), ("fedmekt-c", {"hyper": {"align": "mse"}}),
    ("fedmekt-c", {"hyper": {"align": "infonce"}}), ("fedmekt-c", {"hyper": {"kd": "kl-time"}}),
    ("fedmekt-c", {"hyper": {"mask_ratio": 0.5}}), ("mmfedavg", {"hyper": {"mask_ratio": 0.5}}),
    ("mmfedavg", {"hyper": {"align": "infonce"}})])
def test_an_option_changes_the_learnt_model_and_not_the_bytes(split, algorithm, option):
    base, other = _run(split, algorithm), _run(split, algorithm, **option)
    assert any(not np.array_equal(base.model_state[k], other.model_state[k]) for k in base.model_state)
    for a, b in zip(base.rows, other.rows):
        assert (a["bytes_up"], a["bytes_down"]) == (b["bytes_up"], b["bytes_down"])


def test_mmfedavg_clients_alignment_aligns_the_global_encoders(split):
    """The A+B clients' term reaches the averaged model: its two encoders agree more on windows it never saw."""
    starts = window_starts(split.labelled, 8, 4)
    x = {m: torch.from_numpy(gather_windows(split.labelled.modalities[m], starts, 8)).float() for m in ("a", "b")}

    def misalignment(align: str) -> float:
        cfg = tiny_config("mmfedavg", hyper={"align": align, "align_weight": 5.0}, rounds=3)
        state = run_inprocess(cfg, split, progress=False).model_state
        model = build_model(cfg, {m: v.shape[-1] for m, v in x.items()})
        model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(v) for k, v in state.items()
                               if k.startswith("autoencoder.")})
        with torch.no_grad():
            return alignment_loss(model.encode(x["a"], "a")[0], model.encode(x["b"], "b")[0], "infonce").item()

    assert misalignment("infonce") < misalignment("none") - 0.2


def test_an_aligned_run_is_labelled_so_where_alignment_acts(split):
    """FedMEKT-S trains each modality on its own: the option leaves its model as it was, and so its label."""
    from fedmekt.experiment.in_process import variant_label

    assert variant_label(tiny_config("mmfedavg", hyper={"align": "infonce"})).endswith(",align-infonce]")
    assert "align" not in variant_label(tiny_config())
    separate = tiny_config("fedmekt-s")
    assert variant_label(tiny_config("fedmekt-s", hyper={"align": "infonce"})) == variant_label(separate)
    plain, aligned = _run(split, "fedmekt-s"), _run(split, "fedmekt-s", hyper={"align": "infonce"})
    for k in plain.model_state:
        np.testing.assert_array_equal(plain.model_state[k], aligned.model_state[k])


def test_options_at_their_defaults_are_bit_identical(split):
    base = _run(split)
    off = _run(split, hyper={"align": "none", "align_weight": 5.0})
    for k in base.model_state:
        np.testing.assert_array_equal(base.model_state[k], off.model_state[k])


@pytest.mark.parametrize("bad", [{"hyper": {"align": "l1"}}, {"hyper": {"align_tau": 0.0}},
                                 {"hyper": {"kd": "kl-feature"}}, {"hyper": {"upload_weight": "steps"}},
                                 {"server_walk_labelled": True, "server_proxy_walk": False},
                                 {"hyper": {"mask_ratio": 1.0}}, {"hyper": {"mask_ratio": -0.1}}])
def test_bad_learner_options_are_one_line_errors(bad):
    data = tiny_config().to_dict()
    data.update({k: ({**data["hyper"], **v} if k == "hyper" else v) for k, v in bad.items()})
    with pytest.raises(UserError):
        FederationConfig.from_dict(data)


def test_upload_weight_by_rounds_counts_each_clients_past_and_survives_a_checkpoint(split):
    from fedmekt.learn.engine import ServerEngine

    uniform, weighted = _run(split, rounds=3), _run(split, rounds=3, hyper={"upload_weight": "rounds"})
    learning = lambda r: {k: v for k, v in r.items() if k != "wall_s"}  # noqa: E731
    assert learning(uniform.rows[0]) == learning(weighted.rows[0])  # nobody has a past in round 1: equal weights
    assert any(not np.array_equal(uniform.model_state[k], weighted.model_state[k]) for k in uniform.model_state)
    cfg = dataclasses.replace(tiny_config("fedmekt-c", rounds=3),
                              hyper=dataclasses.replace(tiny_config().hyper, upload_weight="rounds"))
    engines = [ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled) for _ in range(2)]
    counts = {}
    for row in weighted.rows:
        for c in row["participants"]:
            counts[c] = counts.get(c, 0) + 1
    engines[0]._absorbed_rounds = dict(counts)
    state = engines[0].state_dict()
    assert {k: int(v[0]) for k, v in state.items() if k.startswith("meta/absorbed_rounds/")} == {
        f"meta/absorbed_rounds/{c}": n for c, n in counts.items()}
    engines[1].load_state_dict(state)
    assert engines[1]._absorbed_rounds == counts
