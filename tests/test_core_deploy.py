"""The deployed model (issue 19 §3): the federation's encoders and a head fine-tuned on the labelled set by a bounded,
seeded recipe; the federation itself untouched; what final_evaluation scores and what a run folder's packages ship."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmekt.learn.engine import ServerEngine
from fedmekt.learn.model import LinearHead, MLPHead
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


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_fine_tuning_is_seeded_bounded_and_leaves_the_federation_untouched(split, head):
    before = _server(split).state_dict()
    server = _server(split, deploy_rounds=3, deploy_head=head)
    dep = server.deployed()
    assert isinstance(dep.head, {"linear": LinearHead, "mlp": MLPHead}[head])
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


def test_final_evaluation_scores_the_deployed_model_and_the_run_state_keeps_it(split):
    server = _server(split, deploy_rounds=2, deploy_head="mlp")
    final = server.final_evaluation()
    dep = server.deployed()
    assert final["deploy_steps"] == dep.steps > 0
    assert_deployed_figures_score_the_shipped_model(server, final)
    state = server.final_state()
    assert {k for k in state if k.startswith("deployed.head.")} == {f"deployed.head.{k}" for k in
                                                                    ("hidden.weight", "hidden.bias", "out.weight",
                                                                     "out.bias")}
    assert any(k.startswith("autoencoder.") for k in state) and any(k.startswith("head.") for k in state)


def test_a_bad_recipe_is_one_line_user_error():
    from fedmekt.errors import UserError

    for hyper, words in (({"deploy_head": "cnn"}, "deploy_head"), ({"deploy_head": "mlp", "deploy_rounds": 0}, "deploy_rounds >= 1"),
                         ({"deploy_rounds": -1}, "deploy_rounds"), ({"deploy_rounds": 1, "lr_deploy": 0.0},
                                                                    "lr_deploy")):
        cfg = tiny_config()
        with pytest.raises(UserError, match=words):
            replace(cfg, hyper=replace(cfg.hyper, **hyper))
