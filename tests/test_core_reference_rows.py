"""Reference rows on a tiny federation: same split and probe, the federation's local steps, nothing exchanged."""

from __future__ import annotations

import pytest

from fedmekt.engine import ClientEngine, ServerEngine, client_view
from fedmekt.reference_rows import REFERENCES, optimizer_steps, reference_finals
from tests.core_support import tiny_config, tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()


@pytest.fixture(scope="module")
def finals(split):
    return {f["variant"]: f for f in reference_finals(tiny_config("fedmekt-c", rounds=3), split)}


def _federated_client_steps(cfg, split) -> int:
    """Optimizer steps all clients of a real mmFedAvg federation take (the budget the references match)."""
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    clients = {c.client_id: (c, ClientEngine(cfg, c.client_id, c.modalities, split.channels, None))
               for c in split.clients}
    for rnd in range(cfg.rounds):
        plan = server.plan_round(rnd, sorted(clients))
        down = server.downstream(plan)
        server.begin_round(plan)
        for cid in plan.selected:
            c, engine = clients[cid]
            server.absorb(cid, c.modalities, engine.train_round(plan, client_view(down, c.modalities), c.data))
        server.finish_round(plan)
    return sum(optimizer_steps(e.party) for _, e in clients.values())


def test_three_named_rows_with_probe_metrics_and_the_same_floor(finals):
    assert sorted(finals) == sorted(REFERENCES)
    floors = {f["majority_f1_weighted"] for f in finals.values()}
    assert len(floors) == 1
    for f in finals.values():
        assert f["reference"] is True and f["run"] == f"{f['variant']}-seed0" and f["rounds"] == 3
        for m in ("a", "b"):
            assert 0.0 <= f[f"probe_f1_weighted_{m}"] <= 1.0


def test_local_only_and_centralized_take_exactly_the_federations_local_steps(split, finals):
    budget = _federated_client_steps(tiny_config("mmfedavg", rounds=3), split)
    assert budget > 0
    assert finals["local-only"]["local_steps"] == finals["centralized"]["local_steps"] == budget
    assert finals["raw-features"]["local_steps"] == 0


def test_raw_features_row_is_the_probe_on_unencoded_features(split, finals):
    # modality "a" carries the label as a channel (core_support): a linear probe on raw rows is nearly perfect
    assert finals["raw-features"]["probe_f1_weighted_a"] > 0.9
    # it trains no encoder, so rounds and algorithm do not change it
    other = {f["variant"]: f for f in reference_finals(tiny_config("mmmoon", rounds=1), split)}["raw-features"]
    for m in ("a", "b"):
        assert other[f"probe_f1_weighted_{m}"] == finals["raw-features"][f"probe_f1_weighted_{m}"]


def test_local_only_averages_over_the_clients_holding_each_modality(finals):
    assert finals["local-only"]["clients_probed_a"] == 4 and finals["local-only"]["clients_probed_b"] == 4


def test_reference_rows_are_deterministic(split, finals):
    again = {f["variant"]: f for f in reference_finals(tiny_config("fedmekt-c", rounds=3), split)}
    strip = lambda f: {k: v for k, v in f.items() if k != "wall_s"}  # noqa: E731
    assert strip(again["centralized"]) == strip(finals["centralized"])
    assert strip(again["local-only"]) == strip(finals["local-only"])
