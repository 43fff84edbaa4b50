"""The FedMEKT server's teacher. Per-client heads (hyper.server_teacher, issue 19 §2c): the fit, the loss carried
through the round's mean, the invariance to a client's latent space, trust weighting, a round of the engine in both
upload orders. The reconstruction cut after a warm-up (hyper.server_rec_rounds, §2d)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmekt.errors import UserError
from fedmekt.learn import teacher_heads
from fedmekt.learn.engine import ClientEngine, ServerEngine, client_view
from fedmekt.learn.streaming import StreamingMean
from fedmekt.learn.teacher_heads import HeadTargets, fit_head
from tests.core_support import tiny_config, tiny_split

KEY = "emb/a/z"


def _embeddings(seed: int, shape=(12, 8, 3)) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _round_targets(g: np.ndarray, uploads: list[np.ndarray], trust: bool) -> HeadTargets:
    acc = StreamingMean()   # the plain mean: the robust clip is tested on its own (test_core_robust.py)
    for z in uploads:
        for k, v in teacher_heads.teacher_view(KEY, g, z, trust).items():
            acc.add(k, v)
    return HeadTargets.from_means(acc.mean(), KEY, "cpu")


def _direct_loss(g_fit: np.ndarray, g: np.ndarray, uploads: list[np.ndarray], trust: bool) -> float:
    """The mean over clients of w_k ||g A_k + b_k − z_k||² / s_k, averaged over windows and steps, written out."""
    terms = []
    for z in uploads:
        fit = fit_head(g_fit, z)
        w = max(fit.r2, 0.0) if trust else 1.0
        residual = g.astype(np.float64) @ fit.weight + fit.bias - z
        terms.append(w * np.square(residual).sum(-1).mean() / fit.variance)
    return float(np.mean(terms))


def _federated_round(server: ServerEngine, cfg, split, rnd: int, order=sorted) -> tuple[dict, dict, dict]:
    """One round of the selected clients of ``split`` through the engines, their uploads absorbed in ``order``;
    returns (downstream, the round's means, the metrics row)."""
    data = {c.client_id: c for c in split.clients}
    plan = server.plan_round(rnd, sorted(data))
    down = server.downstream(plan)
    server.begin_round(plan)
    for cid in order(plan.selected):
        c = data[cid]
        upload = ClientEngine(cfg, cid, c.modalities, split.channels, split.proxy).train_round(
            plan, client_view(down, c.modalities), c.data)
        server.absorb(cid, c.modalities, upload)
    means = server._mean.mean()
    return down, means, server.finish_round(plan)


def test_a_head_recovers_a_rotated_scaled_shifted_client_space():
    g = _embeddings(0)
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    fit = fit_head(g, 2.5 * g @ q + 0.7)
    assert fit.r2 > 0.999
    np.testing.assert_allclose(g @ fit.weight + fit.bias, 2.5 * g @ q + 0.7, atol=1e-2)


@pytest.mark.parametrize("trust", [False, True])
def test_the_loss_through_the_rounds_mean_equals_the_clients_weighted_residuals(trust):
    """The three terms averaged over clients give, at any g, the per-client losses written out (to the float32
    rounding of c − 2 g·v + gMg, which cancels near a good fit)."""
    g_fit = _embeddings(0)
    uploads = [g_fit @ np.diag([1.0, -2.0, 0.5]) + 0.3 * _embeddings(s) for s in (1, 2, 3)]
    targets = _round_targets(g_fit, uploads, trust)
    for g in (g_fit, _embeddings(9)):
        assert float(targets.loss(torch.from_numpy(g))) == pytest.approx(_direct_loss(g_fit, g, uploads, trust),
                                                                         rel=1e-4, abs=2e-4)


def test_the_loss_does_not_change_when_a_client_rotates_or_rescales_its_latent_space():
    g_fit, g = _embeddings(0), _embeddings(5)
    z = g_fit[..., :2] * 1.5 + 0.4 * _embeddings(1, (12, 8, 2))
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(2, 2)))
    plain = _round_targets(g_fit, [z], trust=False).loss(torch.from_numpy(g))
    moved = _round_targets(g_fit, [(7.0 * z @ q - 3.0).astype(np.float32)], trust=False).loss(torch.from_numpy(g))
    assert float(moved) == pytest.approx(float(plain), rel=1e-3)


def test_trust_weighting_lets_a_client_unrelated_to_the_global_model_count_for_almost_nothing():
    g = _embeddings(0)
    agreeing = (g @ np.diag([2.0, 1.0, -1.0])).astype(np.float32)
    unrelated = _embeddings(7)
    assert fit_head(g, unrelated).r2 < 0.1
    trusted = _round_targets(g, [agreeing, unrelated], trust=True)
    uniform = _round_targets(g, [agreeing, unrelated], trust=False)
    at_g = torch.from_numpy(g)
    assert float(trusted.loss(at_g)) < 0.05 < 0.4 < float(uniform.loss(at_g))   # the unrelated client's ~1 weighs ~0


def test_the_faithful_server_keeps_the_papers_mean_and_an_unknown_teacher_is_refused():
    assert tiny_config("fedmekt-c").server_teacher == "heads-trust"   # the default
    assert replace(tiny_config("fedmekt-c"), faithful=True).server_teacher == "mean"
    with pytest.raises(UserError, match="server_teacher must be one of"):
        tiny_config("fedmekt-c", hyper=dict(server_teacher="median"))
    with pytest.raises(UserError, match="heads_weight must be >= 0"):
        tiny_config("fedmekt-c", hyper=dict(heads_weight=-1.0))


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "fedmekt-s"])
def test_a_heads_round_trains_the_server_the_same_whatever_order_uploads_arrive(algorithm):
    """The engine folds each client's head sums into the round's mean; the server's update reads them. Two
    upload orders give bit-identical global models, different from the server's model before the round."""
    split = tiny_split()
    cfg = tiny_config(algorithm, hyper=dict(server_teacher="heads-trust"))
    states = []
    for order in (sorted, lambda ids: sorted(ids, reverse=True)):
        server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
        before = {k: v.clone() for k, v in server.model.state_dict().items()}
        _down, means, row = _federated_round(server, cfg, split, 0, order)
        assert {k.rsplit("/", 1)[-1] for k in means} == {"M", "v", "c"}
        assert np.isfinite(row["loss_server"])
        states.append(server.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], before[k]) for k in before)


def test_reproduce_and_simulate_take_the_server_teacher_flag():
    from fedmekt_cli.main import build_parser
    from fedmekt_cli.reproduce import build_configs

    args = build_parser().parse_args(["reproduce", "--dataset", "demo", "--algorithms", "fedmekt-c", "--seeds", "1",
                                      "--server-teacher", "heads-trust"])
    (cfg,) = build_configs(args)
    assert cfg.hyper.server_teacher == "heads-trust"
    assert build_parser().parse_args(["simulate", "--server-teacher", "heads"]).server_teacher == "heads"


def test_a_run_off_the_default_teacher_is_labelled_as_its_variant_in_the_tables():
    from fedmekt.experiment.in_process import variant_label

    def tags(**hyper):
        return variant_label(tiny_config("fedmekt-c", hyper=hyper))

    assert "teacher" not in tags() and "heads-w" not in tags()
    assert tags(server_teacher="mean").endswith(",teacher-mean]")      # after the tiny config's own tags (r, W)
    assert tags(server_teacher="heads", heads_weight=0.1).endswith(",teacher-heads,heads-w0.1]")
    assert tags(server_rec_rounds=50).endswith(",rec-warmup50]")
    assert "teacher" not in variant_label(tiny_config("mmfedavg", hyper=dict(server_teacher="mean")))


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "fedmekt-s"])
def test_after_the_reconstruction_warm_up_the_server_learns_from_the_clients_knowledge_alone(algorithm):
    """hyper.server_rec_rounds (issue 19 §2d): from that round on the decoders stay as they are and the encoders
    move only with the clients' knowledge; with no upload the server's update changes nothing."""
    split = tiny_split()
    cfg = tiny_config(algorithm, hyper=dict(server_rec_rounds=1))
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    data = {c.client_id: c for c in split.clients}
    for rnd in (0, 1):
        before = {k: v.clone() for k, v in server.model.state_dict().items()}
        _federated_round(server, cfg, split, rnd)
        after = server.model.state_dict()
        moved = {k for k in before if not torch.equal(before[k], after[k])}
        assert any(k.startswith("enc") for k in moved), moved
        assert any(k.startswith("dec") for k in moved) == (rnd == 0), moved   # round 0: the warm-up
    still = {k: v.clone() for k, v in server.model.state_dict().items()}
    server.update_without_uploads(server.plan_round(2, sorted(data)))
    assert all(torch.equal(still[k], v) for k, v in server.model.state_dict().items())


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "fedmekt-s"])
@pytest.mark.parametrize("heads_from", ["rep", "hidden"])
def test_heads_on_the_hidden_layer_train_the_trunk_and_leave_the_representation_layer(algorithm, heads_from):
    """hyper.heads_from = "hidden": each client's head reads the server's hidden embedding (32 wide, never sent), so
    with the reconstruction cut (round 1 here) the knowledge moves each encoder's first layer and not the layer
    that gives z; reading "rep" moves both."""
    split = tiny_split()
    cfg = tiny_config(algorithm, hyper=dict(server_rec_rounds=1, heads_from=heads_from))
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    width = {"rep": server.model.rep_size, "hidden": server.model.hidden}[heads_from]
    for rnd in (0, 1):
        before = {k: v.clone() for k, v in server.model.state_dict().items()}
        down, means, _row = _federated_round(server, cfg, split, rnd)
        assert not any(k.endswith("/h") for k in down)   # the hidden embeddings stay on the server
        assert {v.shape for k, v in means.items() if k.endswith("/M")} == {(width, width)}
    moved = {k.split(".")[2] for k, v in server.model.state_dict().items()
             if k.startswith("encoders") and not torch.equal(before[k], v)}
    assert moved == ({"first"} if heads_from == "hidden" else {"first", "second"})


def test_heads_from_is_checked_and_labelled():
    from fedmekt.experiment.in_process import variant_label

    with pytest.raises(UserError, match="heads_from must be one of"):
        tiny_config("fedmekt-c", hyper=dict(heads_from="input"))
    assert variant_label(tiny_config("fedmekt-c", hyper=dict(heads_from="hidden"))).endswith(",heads-from-hidden]")
    assert "heads-from" not in variant_label(tiny_config("fedmekt-c"))
