"""Bounded rounds: ``hyper.local_step_budget`` / ``hyper.server_walk_step_budget`` cap the steps a round takes,
deterministically, and the default leaves the small datasets' reference schedule bit-identical."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmekt.learn.algorithms.base import epoch_steps, private_epoch
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import ClientEngine, ServerEngine, client_view
from fedmekt.errors import UserError
from fedmekt.experiment.in_process import run_inprocess
from sensors.datasets import load_dataset
from sensors.partition import Partition
from sensors.splits import make_split
from sensors.windowing import gather_windows, paper_crop_length, random_crops, window_starts
from tests.core_support import tiny_config, tiny_split

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def split():
    return tiny_split()


def _with_hyper(cfg: FederationConfig, **hyper) -> FederationConfig:
    out = replace(cfg, hyper=replace(cfg.hyper, **hyper))
    out.validate()
    return out


def _big_partition(rows: int = 20_000, seed: int = 0) -> Partition:
    """Two modalities of random rows whose channel 0 is the row index (to see which rows a crop took)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(rows, dtype=np.float32)[:, None]
    a = np.concatenate([idx, rng.normal(size=(rows, 2)).astype(np.float32)], 1)
    b = np.concatenate([idx, rng.normal(size=(rows, 1)).astype(np.float32)], 1)
    return Partition({"a": a, "b": b}, np.zeros(rows, np.int64), np.array([[0, rows // 2], [rows // 2, rows]]),
                     ("u0", "u1"))


def _walk(cfg, part, seed, max_steps):
    return list(private_epoch(part, ("a", "b"), cfg, np.random.default_rng(seed), CPU, max_steps))


def test_a_budget_caps_the_walk_at_exactly_its_steps_and_bounds_the_crop():
    cfg, part = tiny_config(), _big_partition()
    free = _walk(cfg, part, 0, 0)
    capped = _walk(cfg, part, 0, 7)
    assert len(free) > 100 and len(capped) == 7
    assert sum(xs["a"].shape[1] for xs, _ in capped) <= 7 * (cfg.hyper.sub_window[1] - 1)
    walked = torch.cat([xs["a"][..., 0] for xs, _ in capped], dim=1)   # consecutive rows of each crop
    assert torch.equal(walked - walked[:, :1], torch.arange(walked.shape[1], dtype=torch.float32).expand_as(walked))


def test_a_capped_walk_samples_crops_across_the_whole_partition_and_is_seeded():
    cfg, part = tiny_config(), _big_partition()
    starts = lambda steps: sorted(steps[0][0]["a"][:, 0, 0].tolist())  # noqa: E731
    a, b, c = _walk(cfg, part, 3, 2), _walk(cfg, part, 3, 2), _walk(cfg, part, 4, 2)
    assert starts(a) == starts(b) and starts(a) != starts(c)
    assert all(torch.equal(x["a"], y["a"]) for (x, _), (y, _) in zip(a, b))
    seen = np.concatenate([starts(_walk(cfg, part, s, 2)) for s in range(20)])
    assert seen.min() < len(part) / 4 and seen.max() > 3 * len(part) / 4   # not only the newest rows


@pytest.mark.parametrize("batch, length", [(5, 30), (40, 60), (300, 10)])
def test_crop_starts_are_drawn_as_among_every_window_start_without_listing_them(batch, length):
    """random_crops no longer builds the 8-bytes-a-row start list; the draw is the one it would make from it."""
    segments = np.array([[0, 50], [50, 55], [55, 200], [200, 262]])
    x = np.arange(262, dtype=np.float32)[:, None]
    part = Partition({"a": x}, np.arange(262, dtype=np.int64), segments)
    starts = window_starts(part, length, 1)
    for seed in range(5):
        expected = np.sort(np.random.default_rng(seed).choice(starts, size=batch, replace=starts.size < batch))
        data, labels = random_crops(part, batch, length, np.random.default_rng(seed))
        np.testing.assert_array_equal(data["a"], gather_windows(x, expected, length))
        np.testing.assert_array_equal(labels, gather_windows(part.labels, expected, length))


def test_the_per_round_budget_is_shared_by_the_local_epochs():
    assert epoch_steps(0, 2) == 0 and epoch_steps(32, 2) == 16 and epoch_steps(5, 2) == 2


def _counting(optim):
    """Count the optimizer steps a round takes (the real ModuleOptimizers still steps)."""
    calls = []
    step = optim.step

    def counted(loss, names):
        calls.append(tuple(names))
        return step(loss, names)

    optim.step = counted
    return calls


@pytest.mark.parametrize("algorithm", ["fedmekt-c", "mmfedavg"])
def test_a_client_round_takes_at_most_the_budget_of_steps(split, algorithm):
    cfg = _with_hyper(tiny_config(algorithm), local_epochs=2, local_step_budget=6)
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = server.plan_round(0, [c.client_id for c in split.clients])
    down = server.downstream(plan)
    pair = next(c for c in split.clients if len(c.modalities) == 2)
    data = _big_partition(800)   # channels as the tiny split's (a 3, b 2); crops of ~160 rows
    engine = ClientEngine(cfg, pair.client_id, pair.modalities, split.channels, split.proxy)
    calls = _counting(engine.party.optim)
    engine.train_round(plan, client_view(down, pair.modalities), data)
    per_window = 1 if algorithm == "fedmekt-c" else 2   # mm-FedAvg: one step per modality of an A+B client
    assert len(calls) == 6 * per_window

    free = ClientEngine(_with_hyper(cfg, local_step_budget=0), pair.client_id, pair.modalities, split.channels,
                        split.proxy)
    free_calls = _counting(free.party.optim)
    free.train_round(plan, client_view(down, pair.modalities), data)
    assert len(free_calls) > 4 * len(calls)


def test_the_server_walk_takes_at_most_its_budget(split):
    base = _with_hyper(tiny_config("fedmekt-c"), global_epochs=2)

    def server_steps(cfg):
        server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
        plan = server.plan_round(0, [c.client_id for c in split.clients])
        means = server.downstream(plan)   # the global's own embeddings stand in for the clients' mean
        calls = _counting(server.party.optim)
        server.algorithm.server_update(server.party, means, server._proxy(plan), np.random.default_rng(0), plan.round)
        return len(calls)

    distil = server_steps(replace(base, server_proxy_walk=False))
    assert server_steps(_with_hyper(base, server_walk_step_budget=2)) == distil + 2
    assert server_steps(_with_hyper(base, server_walk_step_budget=0)) > distil + 2


def test_capped_runs_are_bit_identical_for_a_seed_and_differ_from_the_uncapped_schedule(split):
    cfg = _with_hyper(tiny_config("fedmekt-c"), local_step_budget=1, server_walk_step_budget=1)
    a, b = run_inprocess(cfg, split, progress=False), run_inprocess(cfg, split, progress=False)
    free = run_inprocess(_with_hyper(cfg, local_step_budget=0, server_walk_step_budget=0), split, progress=False)
    for k in a.model_state:
        np.testing.assert_array_equal(a.model_state[k], b.model_state[k])
    assert any(not np.array_equal(a.model_state[k], free.model_state[k]) for k in a.model_state)


def test_the_default_budget_leaves_a_small_federation_bit_identical(split):
    cfg = tiny_config("fedmekt-c")
    assert cfg.hyper.local_step_budget > 0 and cfg.hyper.server_walk_step_budget > 0
    default = run_inprocess(cfg, split, progress=False)
    free = run_inprocess(_with_hyper(cfg, local_step_budget=0, server_walk_step_budget=0), split, progress=False)
    for k in default.model_state:
        np.testing.assert_array_equal(default.model_state[k], free.model_state[k])


def _longest_walk(part: Partition, cfg: FederationConfig) -> int:
    """Most rows an uncapped epoch's crop can have (smallest batch), as ``private_epoch`` computes it."""
    longest = int((part.segments[:, 1] - part.segments[:, 0]).max())
    return paper_crop_length(len(part), cfg.resolved_batch()[0], longest + 1)


def test_the_default_budget_never_binds_on_the_bundled_demo():
    """A crop of at most k × (shortest sub-window) rows can't take more than k steps: the schedule is unchanged."""
    cfg = FederationConfig()
    recordings = load_dataset("demo")
    h = cfg.hyper
    for seed in (0, 1):
        demo = make_split(recordings, cfg.pair, seed=seed, clients=cfg.clients)
        local = epoch_steps(h.local_step_budget, h.local_epochs) * h.sub_window[0]
        walk = epoch_steps(h.server_walk_step_budget, h.global_epochs) * h.sub_window[0]
        assert max(_longest_walk(c.data, cfg) for c in demo.clients) <= local
        assert _longest_walk(demo.proxy, cfg) <= walk


@pytest.mark.parametrize("dataset, pair", [("demo", ("acce", "gyro")), ("ur_fall", ("acce", "depth")),
                                           ("hapt", ("acce", "gyro"))])
def test_the_default_classifier_budget_never_binds_on_the_datasets_we_ship_or_read(dataset, pair, request):
    """The classifier's labelled walk keeps the reference schedule on the paper's and the demo's data."""
    data = None if dataset == "demo" else request.getfixturevalue("data_dir")
    cfg = FederationConfig(dataset=dataset, pair=pair)
    cap = epoch_steps(cfg.hyper.classifier_step_budget, cfg.hyper.classifier_epochs) * cfg.hyper.sub_window[0]
    split = make_split(load_dataset(dataset, data), pair, seed=0, clients=cfg.clients)
    assert _longest_walk(split.labelled, cfg) <= cap


def test_the_classifier_walk_takes_at_most_its_budget(split):
    from fedmekt.learn.evaluation import train_classifier_round
    from fedmekt.learn.model import LinearHead

    def steps(budget: int) -> int:
        cfg = _with_hyper(tiny_config("fedmekt-c"), classifier_epochs=1, classifier_step_budget=budget,
                          batch=(2, 3))
        server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
        head = LinearHead(server.model.rep_size, len(split.label_names))
        opt = torch.optim.SGD(head.parameters(), lr=0.1)
        calls = []
        opt.step = lambda *a, **k: calls.append(1)
        train_classifier_round(server.model, head, opt, split.labelled, cfg, np.random.default_rng(0), server.device)
        return len(calls)

    assert steps(2) == 2 * len(tiny_config("fedmekt-c").label_modalities)
    assert steps(0) > steps(2)


@pytest.mark.parametrize("key, value, needle", [
    ("local_step_budget", -1, "hyper.local_step_budget must be 0 (unbounded) or at least local_epochs (2), got -1"),
    ("local_step_budget", 1, "at least local_epochs (2), got 1"),
    ("server_walk_step_budget", 1, "hyper.server_walk_step_budget must be 0 (unbounded) or at least global_epochs"),
    ("local_step_budget", "many", "config key hyper.local_step_budget must be an integer, got 'many'"),
])
def test_bad_budgets_are_one_line_errors(key, value, needle):
    with pytest.raises(UserError) as err:
        FederationConfig.from_dict({"hyper": {key: value}})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_reproduce_and_simulate_flags_set_the_budgets():
    from fedmekt_cli.main import build_parser
    from fedmekt_cli.reproduce import build_configs

    args = build_parser().parse_args(["reproduce", "--dataset", "demo", "--algorithms", "fedmekt-c", "--seeds", "1",
                                      "--local-step-budget", "8", "--server-walk-step-budget", "0", "--kd", "mse"])
    (cfg,) = build_configs(args)
    assert (cfg.hyper.local_step_budget, cfg.hyper.server_walk_step_budget, cfg.hyper.kd) == (8, 0, "mse")
    sim = build_parser().parse_args(["simulate", "--local-step-budget", "4"])
    assert sim.local_step_budget == 4


@pytest.mark.parametrize("flag", ["--local-step-budget", "--server-walk-step-budget"])
def test_a_bad_budget_flag_is_one_line_exit_2(flag, tmp_path, capsys):
    from fedmekt_cli.main import main

    assert main(["reproduce", "--dataset", "demo", flag, "1", "--rounds", "1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"hyper.{flag[2:].replace('-', '_')} must be 0 (unbounded)" in err[0]
