"""The deployed model (issue 19 §3): the federation's encoders and a head fine-tuned on the labelled set by a bounded,
seeded recipe; the federation itself untouched; what final_evaluation scores and what a run folder's packages ship."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmekt.learn.engine import ServerEngine
from fedmekt.learn.deploy import load_deployed
from fedmekt.learn.model import HEADS, POOL_STEPS, LinearHead, PooledMLPHead, build_head
from tests.core_support import assert_deployed_figures_score_the_shipped_model, tiny_config, tiny_split


def _server(split, **hyper):
    cfg = tiny_config("mmfedavg")
    cfg = replace(cfg, hyper=replace(cfg.hyper, **hyper))
    return ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def split():
    return tiny_split()


def test_zero_rounds_ships_the_federations_head_on_its_frozen_encoders(split):
    server = _server(split, deploy_rounds=0, deploy_head="linear")
    dep = server.deployed()
    assert dep.steps == 0 and isinstance(dep.head, LinearHead)
    assert _states_equal({k: v.numpy() for k, v in dep.model.encoders.state_dict().items()},
                         {k: v.numpy() for k, v in server.model.encoders.state_dict().items()})
    assert torch.equal(dep.head.linear.weight, server.head.linear.weight)


@pytest.mark.parametrize("head", ["linear", "mlp", "mlp-pool"])
def test_fine_tuning_is_seeded_bounded_and_leaves_the_federation_untouched(split, head):
    before = _server(split).state_dict()
    server = _server(split, deploy_rounds=3, deploy_head=head)
    dep = server.deployed()
    assert type(dep.head) is HEADS[head]
    # the classifier's schedule: at most classifier_step_budget steps per label modality and round, and some
    cfg = server.cfg
    assert 0 < dep.steps <= 3 * len(cfg.label_modalities) * cfg.hyper.classifier_step_budget
    # the encoders moved (fine-tuned), the federation's model, head and optimizers did not
    assert not torch.equal(dep.model.encoders["a"].first.weight_ih_l0, server.model.encoders["a"].first.weight_ih_l0)
    assert _states_equal(server.state_dict(), before)
    # same seed and global model -> the same deployed model (another process, the MQTT aggregator, rebuilds it)
    again = _server(split, deploy_rounds=3, deploy_head=head).deployed()
    assert _states_equal(dep.state(), again.state())
    # computed once per completed round; a loaded checkpoint (a resumed aggregator) derives it afresh, identically
    assert server.deployed() is dep
    server.load_state_dict(server.state_dict())
    assert server.deployed() is not dep and _states_equal(server.deployed().state(), dep.state())


def test_frozen_encoder_recipe_trains_the_head_alone(split):
    server = _server(split, deploy_rounds=2, deploy_head="mlp", deploy_tune_encoder=False)
    dep = server.deployed()
    assert dep.steps > 0
    assert _states_equal({k: v.numpy() for k, v in dep.model.encoders.state_dict().items()},
                         {k: v.numpy() for k, v in server.model.encoders.state_dict().items()})


@pytest.mark.parametrize("head,params", [("mlp", ("hidden.weight", "hidden.bias", "out.weight", "out.bias")),
                                         ("mlp-pool", ("mlp.hidden.weight", "mlp.hidden.bias", "mlp.out.weight",
                                                       "mlp.out.bias"))])
def test_final_evaluation_scores_the_deployed_model_and_the_run_state_keeps_it(split, head, params):
    server = _server(split, deploy_rounds=2, deploy_head=head)
    final = server.final_evaluation()
    dep = server.deployed()
    assert final["deploy_steps"] == dep.steps > 0
    assert_deployed_figures_score_the_shipped_model(server, final)
    state = server.final_state()
    assert {k for k in state if k.startswith("deployed.head.")} == {f"deployed.head.{k}" for k in params}
    assert any(k.startswith("autoencoder.") for k in state) and any(k.startswith("head.") for k in state)
    # a run folder's state loads back as the same kind of head, computing the same logits
    loaded = load_deployed(state, server.model, len(server.label_names))
    assert type(loaded.head) is type(dep.head) and _states_equal(loaded.state(), dep.state())


def test_pooled_head_is_causal_bounded_and_restarts_with_every_sequence():
    """At step t the pooled head sees steps t - POOL_STEPS + 1..t of its sequence: changing later steps changes
    nothing before them; changing a step changes the outputs of the POOL_STEPS steps from it on (it pools,
    unlike the per-step MLP) and none after."""
    torch.manual_seed(0)
    head = build_head("mlp-pool", 3, 5).eval()
    z = torch.randn(4, 2 * POOL_STEPS + 10, 3)
    later, earlier = z.clone(), z.clone()
    later[:, 25:] += torch.randn(4, z.shape[1] - 25, 3)
    earlier[:, 3] += 1.0
    with torch.no_grad():
        out, out_later, out_earlier = head(z), head(later), head(earlier)
    assert torch.equal(out[:, :25], out_later[:, :25]) and not torch.allclose(out[:, 25:], out_later[:, 25:])
    assert torch.equal(out[:, :3], out_earlier[:, :3])
    assert (out[:, 3:3 + POOL_STEPS] - out_earlier[:, 3:3 + POOL_STEPS]).abs().amax(dim=-1).min() > 0
    torch.testing.assert_close(out[:, 3 + POOL_STEPS:], out_earlier[:, 3 + POOL_STEPS:])
    # a suffix fed as its own sequence is pooled from its own start, as the package pools each window
    assert not torch.allclose(head(z[:, 20:]), out[:, 20:])
    # the summary's gradient is finite at a sequence's first step (variance 0 there)
    z1 = torch.zeros(1, 1, 3, requires_grad=True)
    head(z1).sum().backward()
    assert torch.isfinite(z1.grad).all() and isinstance(head, PooledMLPHead)


def test_a_bad_recipe_is_one_line_user_error():
    from fedmekt.errors import UserError

    for hyper, words in (({"deploy_head": "cnn"}, "deploy_head"), ({"deploy_head": "mlp", "deploy_rounds": 0}, "deploy_rounds >= 1"),
                         ({"deploy_head": "mlp-pool", "deploy_rounds": 0}, "'mlp-pool' needs hyper.deploy_rounds >= 1"),
                         ({"deploy_rounds": -1}, "deploy_rounds"), ({"deploy_rounds": 1, "lr_deploy": 0.0},
                                                                    "lr_deploy")):
        cfg = tiny_config()
        with pytest.raises(UserError, match=words):
            replace(cfg, hyper=replace(cfg.hyper, **hyper))


def test_pooled_head_recipe_round_trips_through_a_config_file(tmp_path):
    from fedmekt.config import FederationConfig, load_config

    cfg = tiny_config()
    path = tmp_path / "federation.toml"
    path.write_text(f'federation = "{cfg.federation}"\ndataset = "{cfg.dataset}"\npair = {list(cfg.pair)!r}\n'
                    '[hyper]\ndeploy_head = "mlp-pool"\ndeploy_rounds = 7\n'.replace("'", '"'))
    loaded = load_config(path)
    assert (loaded.hyper.deploy_head, loaded.hyper.deploy_rounds) == ("mlp-pool", 7)
    assert FederationConfig.from_dict(loaded.to_dict()) == loaded
