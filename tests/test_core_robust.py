"""Upload magnitude bounds and the robust means (fedmekt/learn/robust.py) on hand-made uploads."""

from __future__ import annotations

import numpy as np
import pytest

from fedmekt.learn import robust
from fedmekt.learn.streaming import StreamingMean


def test_magnitude_rejects_huge_and_nonfinite_uploads_and_accepts_honest_ones():
    ref = robust.reference({"emb/acce/z": np.full((4, 3), 0.2, np.float32)})
    assert ref == {"emb/acce/z": robust.REJECT_FLOOR}  # a small reference is floored (the reject bound only)
    honest = {"emb/acce/z": np.full((4, 3), 0.7, np.float32)}
    robust.check_magnitude(honest, ref, "c0")
    with pytest.raises(ValueError, match="beyond 100x"):
        robust.check_magnitude({"emb/acce/z": np.full((4, 3), 3e38, np.float32)}, ref, "c1")
    bad = np.zeros((4, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        robust.check_magnitude({"emb/acce/z": bad}, ref, "c2")


def test_trimmed_mean_drops_the_extremes_per_coordinate_and_equals_the_mean_without_trimming():
    values = [np.array([1.0, 10.0]), np.array([2.0, 20.0]), np.array([3.0, 30.0]), np.array([4.0, 40.0]),
              np.array([1000.0, -1000.0])]
    trimmed, plain = robust.TrimmedMean(0.2), StreamingMean()
    for v in values:
        trimmed.add("k", v, 1.0)
        plain.add("k", v, 1.0)
    # per coordinate the lowest and the highest of 5 are dropped
    np.testing.assert_allclose(trimmed.mean()["k"], [3.0, 20.0])
    assert trimmed.count("k") == 5 and trimmed.keys() == ["k"]
    few = robust.TrimmedMean(0.2)  # fewer than 5 uploads: nothing to trim, the clipped mean (nothing to clip here)
    for v, w in zip(values[:3], (1.0, 2.0, 1.0)):
        few.add("k", v, w)
    np.testing.assert_allclose(few.mean()["k"], [2.0, 20.0])


# --- one device of four: the strategies of the attack on small federations (issue 21, section 4) -------------
SHAPE = (16, 32)


def _round(seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """The round's global knowledge and three honest uploads scattered around it (RMS 0.3, spread 0.1)."""
    rng = np.random.default_rng(seed)
    glob = rng.normal(0, 0.3, SHAPE).astype(np.float32)
    return glob, [(glob + rng.normal(0, 0.1, SHAPE)).astype(np.float32) for _ in range(3)]


def _largest_allowed(direction: np.ndarray, ref: float) -> np.ndarray:
    """``direction`` scaled to just inside the reject bound: the most an attacker can send."""
    return (direction * (0.99 * robust.REJECT_FACTOR * ref / robust.rms(direction))).astype(np.float32)


def _attacks(glob: np.ndarray, own: np.ndarray) -> dict[str, np.ndarray]:
    ref = robust.reference({"k": glob})["k"]
    peak = np.zeros(SHAPE, np.float32)
    peak[3, 7] = 1.0
    return {"flipped": _largest_allowed(-own, ref), "peak": _largest_allowed(peak, ref),
            "negated global": _largest_allowed(-glob, ref)}


def _aggregate(mode: str, uploads: list[np.ndarray]) -> np.ndarray:
    acc = robust.make_mean(mode)
    for u in uploads:
        acc.add("k", u, 1.0)
    return acc.mean()["k"]


@pytest.mark.parametrize("mode", ["clip", "trimmed"])
@pytest.mark.parametrize("strategy", ["flipped", "peak", "negated global"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_device_of_four_moves_the_aggregate_within_the_honest_spread(mode, strategy, seed):
    glob, honest = _round(seed)
    attack = _attacks(glob, honest[0] * 1.1)[strategy]
    robust.check_magnitude({"k": attack}, robust.reference({"k": glob}), "attacker")   # it is let through
    target = np.mean(honest, axis=0)
    spread = float(np.median([robust.rms(h - target) for h in honest]))   # the honest uploads' own spread
    moved = robust.rms(_aggregate(mode, honest + [attack]) - target)
    assert moved <= robust.CLIP_FACTOR / 4 * 2 * spread, f"{mode} / {strategy}: moved {moved:.3g}, spread {spread:.3g}"
    assert robust.rms(_aggregate("none", honest + [attack]) - target) > 50 * spread   # what the plain mean lets through


@pytest.mark.parametrize("mode", ["clip", "trimmed"])
def test_robust_means_do_not_depend_on_arrival_order_and_leave_honest_rounds_as_the_mean(mode):
    glob, honest = _round(3)
    uploads = honest + [_attacks(glob, honest[0])["peak"]]
    first = _aggregate(mode, uploads)
    assert all(np.array_equal(first, _aggregate(mode, [uploads[i] for i in order]))
               for order in ([3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]))
    np.testing.assert_allclose(_aggregate(mode, honest), np.mean(honest, axis=0), rtol=0, atol=1e-6)
