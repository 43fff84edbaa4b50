"""Π_t delivery: the whole proxy set once, or only the round's raw windows with each round's knowledge.

The two deliveries must train bit-identical models with float32 on the wire (in int8 the round's windows are
quantised, the proxy set sent once is not) while the bytes follow the rule
``FederationConfig.proxy_delivery_for`` states; a client that holds no proxy set refuses knowledge that
lacks the round's windows or carries them in the wrong shape.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from core_support import tiny_config, tiny_split
from fedmekt.learn.engine import ClientEngine, ServerEngine, client_view, window_key
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.wire import manifest as fedwire


def _run(delivery: str, **kw):
    return run_inprocess(tiny_config("fedmekt-c", proxy_delivery=delivery, **kw), tiny_split(), progress=False)


def test_round_delivery_trains_the_same_model_as_the_proxy_set_once():
    once, per_round = _run("once", wire_dtype="float32"), _run("round", wire_dtype="float32")
    assert once.final["proxy_delivery"] == "once" and per_round.final["proxy_delivery"] == "round"
    for k, v in once.model_state.items():
        np.testing.assert_array_equal(per_round.model_state[k], v)
    learning = lambda r: {k: v for k, v in r.items() if not k.startswith("bytes") and k != "wall_s"}  # noqa: E731
    assert [learning(r) for r in per_round.rows] == [learning(r) for r in once.rows]
    # bytes: nothing once, and every selected client's view grows by its modalities' windows
    assert once.final["bytes_proxy_once"] > 0 and per_round.final["bytes_proxy_once"] == 0
    cfg, split = tiny_config("fedmekt-c", proxy_delivery="round", wire_dtype="float32"), tiny_split()
    window_rows = cfg.proxy_windows * cfg.window
    for a, b in zip(once.rows, per_round.rows):
        assert a["bytes_up"] == b["bytes_up"]
        grown = b["bytes_down"] - a["bytes_down"]
        assert 4 * window_rows * min(split.channels.values()) * b["selected"] <= grown
        assert grown <= 4 * window_rows * sum(split.channels.values()) * b["selected"] + 2048 * b["selected"]


def test_auto_picks_the_delivery_that_sends_fewer_bytes():
    # 10 rounds x 4 of 6 clients selected x 6 windows x 8 rows = 1,920 window rows against 6 x the proxy rows
    cfg = tiny_config("fedmekt-c", rounds=10, wire_dtype="float32", proxy_delivery="auto")
    assert cfg.proxy_delivery_for(319) == "once" and cfg.proxy_delivery_for(321) == "round"
    quarter = tiny_config("fedmekt-c", rounds=10, proxy_delivery="auto")   # int8 by default: windows cost a quarter
    assert quarter.proxy_delivery_for(81) == "round" and quarter.proxy_delivery_for(80) == "once"
    half = tiny_config("fedmekt-c", rounds=10, wire_dtype="float16", proxy_delivery="auto")  # windows cost half
    assert half.proxy_delivery_for(161) == "round" and half.proxy_delivery_for(159) == "once"
    assert tiny_config("mmfedavg").proxy_delivery_for(10**6) == "none"
    assert tiny_config("fedmekt-c", proxy_delivery="once").proxy_delivery_for(10**6) == "once"


def test_round_delivery_publishes_no_proxy_set():
    split = tiny_split()
    manifest, frames = fedwire.build(tiny_config("fedmekt-c", proxy_delivery="round"), split)
    assert frames == [] and manifest.proxy_sha256 == ""
    manifest, frames = fedwire.build(tiny_config("fedmekt-c", proxy_delivery="once"), split)
    assert frames and manifest.proxy_sha256


@pytest.mark.parametrize("damage", ["missing", "shape", "nan", "plan"])
def test_a_client_without_the_proxy_set_refuses_knowledge_without_valid_windows(damage):
    cfg, split = tiny_config("fedmekt-c", proxy_delivery="round"), tiny_split()
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
    client = split.clients[-1]
    plan = server.plan_round(0, [c.client_id for c in split.clients])
    view = client_view(server.downstream(plan), client.modalities)
    key = window_key(client.modalities[0])
    if damage == "missing":
        del view[key]
    elif damage == "shape":
        view[key] = view[key][:-1]
    elif damage == "nan":
        view[key] = view[key].copy()
        view[key][0, 0, 0] = np.nan
    else:  # a plan for another window length: refused before any window is looked at
        plan = dataclasses.replace(plan, window=plan.window + 1)
    engine = ClientEngine(cfg, client.client_id, client.modalities, split.channels, None)
    with pytest.raises(ValueError, match="plan is for" if damage == "plan" else "proxy windows"):
        engine.train_round(plan, view, client)
