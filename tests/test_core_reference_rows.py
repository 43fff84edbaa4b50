"""Reference rows on a tiny federation: same split and probe, the documented steps, nothing exchanged."""

from __future__ import annotations

import pytest

from fedmekt.learn.engine import ClientEngine, ServerEngine, client_view
from fedmekt.experiment.reference_rows import REFERENCES, optimizer_steps, reference_finals, server_optimizer_steps
from tests.core_support import tiny_config, tiny_split


@pytest.fixture(scope="module")
def split():
    return tiny_split()


@pytest.fixture(scope="module")
def finals(split):
    return {f["variant"]: f for f in reference_finals(tiny_config("fedmekt-c", rounds=3), split)}


def _federated_steps(cfg, split) -> tuple[int, int]:
    """(client, server) optimizer steps of a real federation of ``cfg`` (the budgets the references match)."""
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    clients = {c.client_id: (c, ClientEngine(cfg, c.client_id, c.modalities, split.channels, split.proxy))
               for c in split.clients}
    for rnd in range(cfg.rounds):
        plan = server.plan_round(rnd, sorted(clients))
        down = server.downstream(plan)
        server.begin_round(plan)
        for cid in plan.selected:
            c, engine = clients[cid]
            server.absorb(cid, c.modalities, engine.train_round(plan, client_view(down, c.modalities), c.data))
        server.finish_round(plan)
    server_steps = server_optimizer_steps(server.party) if cfg.algorithm == "fedmekt-c" else 0
    return sum(optimizer_steps(e.party) for _, e in clients.values()), server_steps


def test_every_named_row_with_probe_metrics_and_the_same_floor(finals):
    assert sorted(finals) == sorted(REFERENCES)
    floors = {f["majority_f1_weighted"] for f in finals.values()}
    assert len(floors) == 1
    for f in finals.values():
        assert f["reference"] is True and f["run"] == f"{f['variant']}-seed0" and f["rounds"] == 3
        for m in ("a", "b"):
            assert 0.0 <= f[f"probe_f1_weighted_{m}"] <= 1.0


def test_each_row_takes_the_documented_steps(split, finals):
    client_budget, _ = _federated_steps(tiny_config("mmfedavg", rounds=3), split)
    _, server_budget = _federated_steps(tiny_config("fedmekt-c", rounds=3), split)
    assert client_budget > 0 and server_budget > 0
    # the federation's client steps, FedMEKT-C's server steps, or both
    assert finals["local-only"]["local_steps"] == finals["pooled"]["local_steps"] == client_budget
    assert finals["proxy-only"]["server_steps"] == finals["pooled"]["server_steps"] == server_budget
    assert finals["proxy-only"]["local_steps"] == finals["local-only"]["server_steps"] == 0
    # the classifier's walk of the labelled set, end to end; the ceiling adds the clients' walks with labels
    labelled = finals["labelled-only"]["server_steps"]
    assert labelled > 0 and finals["labelled-only"]["local_steps"] == 0
    assert finals["supervised-ceiling"]["server_steps"] == labelled
    assert 0 < finals["supervised-ceiling"]["local_steps"] <= client_budget
    assert finals["raw-features"]["local_steps"] == finals["raw-features"]["server_steps"] == 0


def test_supervised_ceiling_learns_from_the_clients_labels(split):
    # both modalities carry the activity (core_support): 10 rounds of supervised steps on every client's labels
    # separate the classes on each, where the floor predicts one class everywhere
    ceiling = {f["variant"]: f for f in reference_finals(tiny_config("fedmekt-c", rounds=10), split)}["supervised-ceiling"]
    assert ceiling["probe_f1_weighted_a"] > 0.9 and ceiling["probe_f1_weighted_b"] > 0.8
    assert ceiling["majority_f1_weighted"] < 0.2


def test_every_row_is_probed_per_modality_on_its_own_features(split, finals):
    # one probe definition: a head per test modality (its training loss is reported per modality); local-only
    # is the mean of its clients' probes, each of the same kind (test below)
    for f in (f for name, f in finals.items() if name != "local-only"):
        assert all(f"probe_train_loss_{m}" in f for m in ("a", "b")), f["variant"]


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
    for name in REFERENCES:
        assert strip(again[name]) == strip(finals[name]), name


def test_a_subset_of_rows_is_the_same_rows_alone(split, finals):
    """``reproduce --references labelled-only`` computes that row alone, with the figures of the full set."""
    from fedmekt_cli.reproduce import reference_names

    assert reference_names("") == REFERENCES
    (alone,) = reference_finals(tiny_config("fedmekt-c", rounds=3), split, reference_names("labelled-only"))
    full = finals["labelled-only"]
    assert alone["variant"] == "labelled-only"
    assert {k: v for k, v in alone.items() if k != "wall_s"} == {k: v for k, v in full.items() if k != "wall_s"}
    with pytest.raises(ValueError, match="unknown reference rows"):
        reference_finals(tiny_config("fedmekt-c", rounds=3), split, ("labeled-only",))
