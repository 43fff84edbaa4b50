"""The local "epoch" walk (spec §2.6): consecutive sub-windows cover the whole crop, the last one clipped."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmekt.learn.algorithms.base import private_epoch
from fedmekt.errors import UserError
from sensors.partition import Partition
from tests.core_support import tiny_config


def _ramp(rows: int) -> Partition:
    """One segment whose value at row i is i, so a window shows exactly which rows it covers."""
    x = np.arange(rows, dtype=np.float32)[:, None]
    return Partition({"a": x}, np.arange(rows, dtype=np.int64), np.array([[0, rows]]), ("u0",))


def _cfg(sub_window):
    cfg = tiny_config()
    return replace(cfg, hyper=replace(cfg.hyper, batch=(2, 3), sub_window=sub_window))


def _walk(rows: int, sub_window, seed: int = 0):
    return list(private_epoch(_ramp(rows), ("a",), _cfg(sub_window), np.random.default_rng(seed), torch.device("cpu")))


def test_crop_not_divisible_by_the_window_trains_on_the_clipped_tail():
    steps = _walk(46, (5, 6))           # B = 2 crops of 46 // 2 = 23 rows, w = 5 always: 5+5+5+5+3
    assert [xs["a"].shape[1] for xs, _ in steps] == [5, 5, 5, 5, 3]
    for xs, ys in steps:
        assert xs["a"].shape[0] == 2 and torch.equal(xs["a"][..., 0].long(), ys)


def test_crop_shorter_than_the_window_is_one_clipped_step():
    steps = _walk(6, (5, 6))            # crops of 3 rows
    assert len(steps) == 1 and steps[0][0]["a"].shape == (2, 3, 1)


@pytest.mark.parametrize("seed", range(4))
def test_random_sub_windows_cover_every_row_of_each_crop_once_in_order(seed):
    steps = _walk(101, (4, 8), seed)    # crops of 50 rows
    lengths = [xs["a"].shape[1] for xs, _ in steps]
    assert sum(lengths) == 50 and all(4 <= n < 8 for n in lengths[:-1]) and 1 <= lengths[-1] < 8
    walked = torch.cat([xs["a"][..., 0] for xs, _ in steps], dim=1)
    assert torch.equal(walked - walked[:, :1], torch.arange(50, dtype=torch.float32).expand(2, -1))


def test_sub_window_must_be_a_non_empty_range_of_positive_lengths():
    for bad in ((0, 4), (5, 5)):
        with pytest.raises(UserError):
            replace(tiny_config(), hyper=replace(tiny_config().hyper, sub_window=bad)).validate()
