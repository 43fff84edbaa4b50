"""Validation protocol for choosing defaults (docs/fedmekt-c-selection.md): no test unit, paired, with power.

* Selection seeds are disjoint from the reported ones: reported 0..4, selection 100 and up; and a selection
  split's labelled units (the only units it scores) are none of the reported seeds' test units
  (``reported_test_groups``, passed to ``make_split(reserved=…)``).
* The score of a run is a cross-validated linear probe by unit over the server's labelled units (never test
  units): leave-one-unit-out, or k folds of whole units. The encoders never see a label, and with today's
  training no labelled input either, so one federated run per seed serves every fold.
* A candidate is compared with the current default as paired per-seed differences (same split, same seed),
  and adopted only when the 95 % t-interval of the difference lies wholly above zero.

No I/O: the selection script (``scripts/select_fedmekt_c.py``) runs the federations and prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedmekt.config import FederationConfig
from fedmekt.errors import UserError
from fedmekt.learn.evaluation import linear_probe
from fedmekt.learn.model import SplitAutoencoder
from fedmekt.experiment.statistics import PairedDifference, paired_difference
from sensors.partition import Partition
from sensors.recording import Recording
from sensors.splits import holdout_groups

REPORTED_SEEDS = tuple(range(5))   # what ``fedmekt reproduce`` reports (its default --seeds 5)
SELECTION_SEED_FLOOR = 100         # selection seeds start here, so no reported split is ever tuned on


def reported_test_groups(recordings: Sequence[Recording]) -> set[str]:
    """Every group (run or subject) that some reported seed tests on: never a selection split's labelled unit."""
    return {g for seed in REPORTED_SEEDS for g in holdout_groups(list(recordings), seed)["test"]}


def check_selection_seeds(seeds: Iterable[int]) -> tuple[int, ...]:
    """The seeds, or UserError when one could coincide with a reported seed's split."""
    seeds = tuple(int(s) for s in seeds)
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"selection seeds must be distinct and non-empty, got {list(seeds)}")
    low = [s for s in seeds if s < SELECTION_SEED_FLOOR]
    if low:
        raise UserError(f"selection seeds must be >= {SELECTION_SEED_FLOOR} (reported seeds are "
                        f"{REPORTED_SEEDS[0]}..{REPORTED_SEEDS[-1]}), got {low}")
    return seeds


def unit_folds(n_units: int, k: int = 0, seed: int = 0) -> list[list[int]]:
    """Held-out unit indices per fold: leave-one-unit-out for ``k`` = 0 (or k >= n), else k seeded folds of units."""
    if n_units < 2:
        raise ValueError(f"cross-validation by unit needs at least 2 units, got {n_units}")
    if k < 0 or k == 1:
        raise ValueError(f"k must be 0 (leave one unit out) or >= 2, got {k}")
    if k == 0 or k >= n_units:
        return [[i] for i in range(n_units)]
    order = np.random.default_rng([seed, 78]).permutation(n_units)
    return [sorted(int(i) for i in order[f::k]) for f in range(k)]


def units_subset(part: Partition, keep: Sequence[int]) -> Partition:
    """Partition made of the segments (= units) at ``keep``."""
    keep = list(keep)
    segs = part.segments[keep]
    rows = np.concatenate([np.arange(a, b) for a, b in segs])
    lengths = segs[:, 1] - segs[:, 0]
    stops = np.cumsum(lengths)
    return Partition({m: x[rows] for m, x in part.modalities.items()}, part.labels[rows],
                     np.stack([stops - lengths, stops], 1).astype(np.int64), tuple(part.units[i] for i in keep))


def cv_probe(model: SplitAutoencoder, labelled: Partition, cfg: FederationConfig, n_classes: int,
             folds: list[list[int]], device: torch.device, seed: int = 0) -> dict[str, float]:
    """Mean over folds of the held-out units' probe weighted F1 per modality (head fitted on the other units)."""
    scores: dict[str, list[float]] = {m: [] for m in cfg.pair}
    for held in folds:
        rest = [i for i in range(len(labelled.units)) if i not in held]
        out = linear_probe(model, units_subset(labelled, rest), units_subset(labelled, held), cfg, n_classes,
                           device, seed)
        for m in scores:
            scores[m].append(out[f"probe_f1_weighted_{m}"])
    return {m: float(np.nanmean(v)) for m, v in scores.items()}


@dataclass(frozen=True)
class Decision:
    """A candidate against the default: the paired difference of the score and whether to adopt it."""

    difference: PairedDifference
    adopt: bool

    def text(self) -> str:
        return f"{self.difference.text()} → {'ADOPT' if self.adopt else 'keep the default'}"


def decide(candidate: Mapping[int, float], default: Mapping[int, float]) -> Decision:
    """Adopt only when the paired 95 % interval over selection seeds of (candidate − default) is above zero."""
    diff = paired_difference(candidate, default)
    return Decision(diff, diff.above_zero)


def smallest_detectable(per_seed_differences: Sequence[float], n: int) -> float:
    """Half-width of the 95 % interval with ``n`` seeds at the observed spread of the differences.

    A true gain smaller than this would not be adopted even when real: the protocol's resolution.
    """
    from scipy import stats

    d = np.asarray(per_seed_differences, dtype=np.float64)
    if d.size < 2 or n < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
