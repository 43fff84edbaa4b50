"""Bounded store reads: a training round reads only its crops' rows from the SQLite store (``open_partition``),
bit-identical to the whole read, a snapshot while the store keeps growing, and flat in memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edge_client.training import LocalTrainer
from fedmekt.learn.engine import ClientEngine, ServerEngine, client_view
from fedmekt.config import Hyper
from sensors.partition import Normalizer, Partition
from sensors.recording import SampleBatch
from sensors.store import SampleStore
from sensors.windowing import random_crops
from tests.core_support import tiny_config, tiny_split

CHANNELS = {"a": 3, "b": 2}


def _fill(store: SampleStore, rows: int, chunk: int = 700, start: int = 0) -> None:
    """Raw rows in chunks of ``chunk``, three units (a unit change is a segment), a time gap in the second."""
    for a in range(start, start + rows, chunk):
        n = min(chunk, start + rows - a)
        i = np.arange(a, a + n)
        rng = np.random.default_rng(a)
        data = {m: (rng.normal(size=(n, c)) * 3 + 1).astype(np.float32) for m, c in CHANNELS.items()}
        data["a"][:, 0] = i
        t = i / 100.0 + (5.0 if a >= rows // 2 else 0.0)
        store.append(SampleBatch(t, data, rng.integers(-1, 3, n), f"u{3 * a // max(rows, 1)}"))


NORMALIZER = Normalizer({"a": np.array([0.5, 1.0, -1.0]), "b": np.array([2.0, 0.0])},
                        {"a": np.array([3.0, 2.5, 0.7]), "b": np.array([1.5, 4.0])})


def test_open_partition_reads_bit_identically_what_read_partition_reads(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", channels=CHANNELS) as store:
        _fill(store, 10_000)
        whole = store.read_partition(max_gap_s=1.0)
        rng = np.random.default_rng(0)
        with store.open_partition(("b", "a"), max_gap_s=1.0, transform=NORMALIZER.apply) as lazy:
            assert len(lazy) == len(whole) == 10_000
            assert lazy.units == whole.units == ("u0", "u1", "u1", "u2")  # three units, one time gap
            np.testing.assert_array_equal(lazy.segments, whole.segments)
            idx = rng.integers(0, len(whole), size=(7, 50))
            idx[0] = np.arange(650, 700)  # a run ending at a chunk end
            idx[1] = np.arange(680, 730)  # one crossing a chunk boundary
            for m in ("a", "b"):
                got = lazy.modalities[m][idx]
                assert got.shape == (7, 50, CHANNELS[m]) and got.dtype == np.float32
                assert got.tobytes() == NORMALIZER.apply(m, whole.modalities[m])[idx].tobytes()
            assert lazy.labels[idx].tobytes() == whole.labels[idx].tobytes()
            with pytest.raises(IndexError):
                lazy.labels[np.array([len(whole)])]
            crops, labels = random_crops(lazy, 9, 40, np.random.default_rng(3))
            ref, ref_labels = random_crops(Partition({m: NORMALIZER.apply(m, whole.modalities[m]) for m in ("b", "a")},
                                                     whole.labels, whole.segments), 9, 40, np.random.default_rng(3))
            assert all(crops[m].tobytes() == ref[m].tobytes() for m in ("a", "b"))
            assert labels.tobytes() == ref_labels.tobytes()


def test_open_partition_is_a_snapshot_while_the_store_grows_and_trims(tmp_path):
    with SampleStore(tmp_path / "s.sqlite", max_samples=5_000, channels=CHANNELS) as store:
        with store.open_partition() as empty:
            assert len(empty) == 0
        _fill(store, 5_000)
        before = store.read_partition()
        with store.open_partition() as lazy:
            _fill(store, 1_500, start=5_000)  # retention drops (and trims) the oldest chunks under the snapshot
            assert store.read_partition().modalities["a"][0, 0] == 1_500
            idx = np.arange(len(before))[None]
            assert lazy.modalities["a"][idx].tobytes() == before.modalities["a"][idx].tobytes()
            assert lazy.labels[idx].tobytes() == before.labels[idx].tobytes()
        with store.open_partition() as after:
            assert after.modalities["a"][np.array([0])][0, 0] == 1_500


def test_a_round_reads_its_crops_not_the_store(tmp_path):
    """The numpy memory of taking a round's crops stays far below the store's size (read_partition's)."""
    with SampleStore(tmp_path / "s.sqlite", channels=CHANNELS) as store:
        _fill(store, 300_000, chunk=10_000)  # 6 MiB of samples
        tracemalloc.start()
        store.read_partition()
        whole = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        with store.open_partition() as lazy:
            random_crops(lazy, 16, 200, np.random.default_rng(0))
        lazy_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert whole > 6_000_000 and lazy_peak < 1_000_000


@pytest.mark.parametrize(("budget", "rows"), [(32, 4_000), (0, 600)])  # capped crops; the reference's whole walk
def test_local_trainer_trains_as_on_the_whole_read_partition(tmp_path, budget, rows):
    """Same seed, same crops, same uploads and weights as the whole-read path (normalised raw samples)."""
    split = tiny_split()
    cfg = tiny_config(hyper=Hyper(batch=(4, 6), sub_window=(4, 8), classifier_epochs=1, local_epochs=2,
                                  global_epochs=1, probe_max_iter=20, local_step_budget=budget))
    channels = {"a": 3, "b": 2}
    assert split.channels == channels
    mods = ("a", "b")
    server = ServerEngine(cfg, channels, split.label_names, split.proxy, split.labelled)
    with SampleStore(tmp_path / "s.sqlite", channels=CHANNELS) as store:
        _fill(store, rows)
        trainer = LocalTrainer(cfg, "c0", mods, channels, split.proxy, store, tmp_path / "state", NORMALIZER)
        reference = ClientEngine(cfg, "c0", mods, channels, split.proxy)
        whole = store.read_partition(mods)
        private = Partition({m: NORMALIZER.apply(m, x) for m, x in whole.modalities.items()}, whole.labels,
                            whole.segments, whole.units)
        for round_ in range(2):
            plan = server.plan_round(round_, ["c0"])
            down = client_view(server.downstream(plan), mods)
            got = trainer.train(plan, down)
            want = reference.train_round(plan, down, private)
            assert sorted(got) == sorted(want)
            assert all(got[k].tobytes() == want[k].tobytes() for k in want)
            trainer.persist()  # what a restarted client re-sends: the stored copy, read back by a fresh trainer
            cached = LocalTrainer(cfg, "c0", mods, channels, split.proxy, store, tmp_path / "state",
                                  NORMALIZER).cached_upload(round_)
            assert sorted(cached) == sorted(got) and all(np.array_equal(cached[k], got[k]) for k in got)
    state, ref_state = trainer.engine.state_dict(), reference.state_dict()
    assert sorted(state) == sorted(ref_state)
    assert all(np.array_equal(state[k], ref_state[k]) for k in ref_state)
