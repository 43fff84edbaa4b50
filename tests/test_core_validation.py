"""The selection protocol (fedmekt.experiment.validation): disjoint seeds, folds by unit, the paired adoption rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmekt.learn.engine import build_model
from fedmekt.errors import UserError
from fedmekt.experiment.validation import check_selection_seeds, cv_probe, decide, smallest_detectable, unit_folds, units_subset
from sensors.partition import Partition
from tests.core_support import synthetic_recordings, tiny_config


def test_selection_seeds_never_touch_the_reported_ones():
    assert check_selection_seeds([100, 104, 101]) == (100, 104, 101)
    for bad in ([4, 100], [99], [], [100, 100]):
        with pytest.raises(UserError):
            check_selection_seeds(bad)


def test_folds_hold_out_every_unit_exactly_once():
    assert unit_folds(4) == [[0], [1], [2], [3]]
    folds = unit_folds(7, k=3, seed=5)
    assert len(folds) == 3 and sorted(i for f in folds for i in f) == list(range(7))
    assert unit_folds(7, k=3, seed=5) == folds and unit_folds(3, k=5) == [[0], [1], [2]]
    for n, k in ((1, 0), (4, 1), (4, -2)):
        with pytest.raises(ValueError):
            unit_folds(n, k)


def test_adopt_only_when_the_paired_interval_is_above_zero():
    default = {100: 0.50, 101: 0.70, 102: 0.55, 103: 0.65, 104: 0.60}
    steady = {s: v + 0.02 + 0.002 * (s % 2) for s, v in default.items()}     # small gain on every split
    noisy = {100: 0.60, 101: 0.62, 102: 0.65, 103: 0.57, 104: 0.66}         # higher mean level, no paired gain
    assert decide(steady, default).adopt
    d = decide(noisy, default)
    assert d.difference.mean > 0 and not d.adopt and "keep the default" in d.text()
    assert not decide({100: 0.9}, {100: 0.1}).adopt          # one seed is never evidence


def test_resolution_shrinks_with_more_seeds():
    diffs = [0.05, -0.03, 0.02, 0.00, 0.04]
    assert smallest_detectable(diffs, 5) > smallest_detectable(diffs, 20) > 0
    assert np.isnan(smallest_detectable([0.1], 1))


def test_cv_probe_scores_every_held_out_unit_with_a_head_fitted_on_the_others():
    recs = synthetic_recordings(n_subjects=4, rows=120)
    stops = np.cumsum([len(r) for r in recs])
    part = Partition({m: np.concatenate([r.modalities[m] for r in recs]) for m in ("a", "b")},
                     np.concatenate([r.labels for r in recs]), np.stack([stops - 120, stops], 1),
                     tuple(r.unit for r in recs))
    assert units_subset(part, [2]).units == (recs[2].unit,) and len(units_subset(part, [0, 3])) == 240
    cfg = tiny_config()
    model = build_model(cfg, {"a": 3, "b": 2})
    scores = cv_probe(model, part, cfg, 3, unit_folds(4), torch.device("cpu"))
    assert set(scores) == {"a", "b"} and all(0.0 <= v <= 1.0 for v in scores.values())


def test_selection_splits_score_no_reported_test_unit(data_dir):
    from fedmekt.experiment.validation import reported_test_groups
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    recs = load_dataset("ur_fall", data_dir)
    reported = reported_test_groups(recs)
    assert set(make_split(recs, ("acce", "depth"), seed=0).test.units) <= reported and len(reported) > 7
    for seed in (100, 101, 103):   # each of these draws 2-3 reported test units as labelled without the rule
        plain = make_split(recs, ("acce", "depth"), seed=seed)
        assert reported & set(plain.labelled.units)
        assert not reported & set(make_split(recs, ("acce", "depth"), seed=seed, reserved=reported).labelled.units)
