"""How a gateway acts on round announcements as they arrive (EdgeAgent fed the messages directly): a late copy
of an older round's announcement is not a restart of the federation, a restarted aggregator's is, and a
request to re-send counts only when it came after the upload went."""

from __future__ import annotations

import time

import pytest

from edge_client.agent import AgentOptions, EdgeAgent
from fedmekt.learn.engine import RoundPlan
from fedmekt.transport.mqtt import Message
from fedmekt.wire import manifest as fedwire
from sensors.store import SampleStore
from tests.core_support import tiny_config, tiny_split

RUN = "1700000000000-0a0b0c0d"


@pytest.fixture
def agent(tmp_path):
    cfg, split = tiny_config("mmfedavg", federation="t"), tiny_split()
    with SampleStore(tmp_path / "store.sqlite", channels=split.channels) as store:
        agent = EdgeAgent("mqtt://127.0.0.1:1", AgentOptions("c000", "t", store, tmp_path / "state"))
        agent._on_manifest(fedwire.build(cfg, split, run=RUN)[0].to_bytes())
        assert agent.trainer is not None
        yield agent


def _announce(agent: EdgeAgent, round_: int, nonce: str, asked_at: float | None = None) -> None:
    plan = RoundPlan(round_, ("c000",), (), 8, "mmfedavg")
    ann = fedwire.Announcement("t", plan.to_json(), 60.0, run=RUN, nonce=nonce, global_sha256="0" * 64).to_bytes()
    received = time.monotonic() if asked_at is None else asked_at
    agent._on_announcement(ann, Message("fedmekt/t/rounds", ann, False, received), asked=asked_at is not None)


def test_a_late_copy_of_an_older_round_is_ignored_a_restart_is_not(agent):
    _announce(agent, 0, "a0")
    _announce(agent, 1, "a1")
    _announce(agent, 0, "a0")  # reordered, or asked for just as round 0 closed
    assert (agent._plan.round, agent._plan_ann.nonce) == (1, "a1")  # no restart: the local model is kept
    _announce(agent, 0, "b0")  # a restarted aggregator announces round 0 afresh
    assert (agent._plan.round, agent._plan_ann.nonce) == (0, "b0")


def test_a_request_to_resend_counts_only_after_the_upload_went(agent):
    agent._answered, agent._answered_at, agent._plan = "a1", time.monotonic(), None
    _announce(agent, 1, "a1")  # a copy of the announcement answered: nothing to do
    assert agent._plan is None
    _announce(agent, 1, "a1", asked_at=agent._answered_at - 1.0)  # asked while we were still training
    assert agent._plan is None
    _announce(agent, 1, "a1", asked_at=time.monotonic())  # asked after: the kept upload goes again
    assert agent._plan is not None and agent._plan.round == 1 and agent._answered == ""
