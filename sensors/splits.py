"""Federated splits: test / proxy / server-labelled / client pool, disjoint by run or subject.

Two schemes:

* ``paper`` (spec §2.2-2.4): hold out test, proxy and labelled units, then form clients the way the
  authors' ``client_idxs`` does — the pool (all pool units concatenated, N rows) is cut into
  ``n_div`` divisions; every client draws one random segment of ``len_seg = int(N*0.11 // n_div)``
  rows per division, so clients overlap and are roughly IID. Unlike the authors' code the labelled
  set is held out from the pool (B5) and the split is drawn once per seed (B1).
* ``subject``: realistic non-IID — one client per pool subject (per run for UR Fall, which has no
  subject ids), i.e. one client per person/device.

Hold-outs: UR Fall 3 fall + 4 ADL runs test, 3 + 4 proxy, 3 + 3 labelled (rest = 51-run pool);
OPPORTUNITY the paper's fixed runs (test S2/S3 ADL4-5, proxy S1/S4 ADL4-5) plus S1-ADL3 and
S4-ADL3 labelled; every other dataset by subject, ``max(1, round(0.1 * n_subjects))`` subjects each
for test, proxy and labelled (HAPT: 3/3/3 of 30, demo: 1/1/1 of 8). ``holdout=`` overrides.

Modalities: clients 0..a-1 hold only pair[0], the next b only pair[1], the last c both (paper order);
with ``missing_rate`` p each two-modality client independently loses one of its modalities (chosen
uniformly) with probability p — a device whose second sensor is absent or broken.

Labels: rows without a label stay -1 in every partition; consumers mask -1 (classifier training,
evaluation), so the labelled and test hold-outs must each have labelled rows (else one SplitError).
Rate: all recordings share one sampling rate, recorded as ``manifest["rate_hz"]`` — what run
records and model packages state. Normalisation statistics are fitted on the client pool only and applied everywhere.
Every random draw comes from generators spawned from ``seed``, so a split is reproducible bit for
bit and ``manifest`` records everything needed to check that.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np

from sensors.files import atomic_write_bytes
from sensors.errors import UserError
from sensors.datasets import DatasetInfo, builtin_info
from sensors.partition import ClientPartition, FederatedSplit, Normalizer, Partition
from sensors.preprocess import fit_normalizer, zscore_each
from sensors.recording import Recording


class SplitError(UserError, ValueError):
    """A split that cannot be drawn from these parameters: a ValueError for callers, one CLI line for users."""


SCHEMES = ("paper", "subject")
NORMALIZE = ("train", "unit", "none")  # pool statistics | per-unit z-score (paper) | raw
HOLDOUTS = ("test", "proxy", "labelled")
CLIENT_FRACTION = 0.11  # each paper client owns ~11 % of the pool (mu:324-331)
MANIFEST_VERSION = 1
DEFAULT_N_DIV = 100  # paper value for mHealth/Opp; used for custom datasets

# UR Fall: units held out per stratum (fall / adl) for test, proxy, labelled.
_UR_FALL_HOLDOUT = {"fall": (3, 3, 3), "adl": (4, 4, 3)}
_OPP_HOLDOUT = {
    "test": ("S2-ADL4", "S2-ADL5", "S3-ADL4", "S3-ADL5"),
    "proxy": ("S1-ADL4", "S1-ADL5", "S4-ADL4", "S4-ADL5"),
    "labelled": ("S1-ADL3", "S4-ADL3"),
}


def _known(dataset: str) -> DatasetInfo | None:
    """Registry facts for ``dataset``; None for recordings of a custom name (generic format)."""
    return builtin_info(dataset)


def _rate(recordings: Sequence[Recording]) -> float:
    """The one sampling rate of ``recordings``."""
    rates = sorted({float(r.rate_hz) for r in recordings})
    if len(rates) > 1:
        raise SplitError(f"recordings at different rates {rates} Hz cannot share windows; resample them to one "
                         "(resample_hz in dataset.toml, docs/sensors.md)")
    if not rates[0] > 0:
        raise SplitError(f"recording {recordings[0].unit} has no sampling rate (rate_hz = {rates[0]})")
    return rates[0]


def _check_labelled(parts: dict[str, Partition], recs: Sequence[Recording], dataset: str) -> None:
    """The server's classifier learns from the labelled hold-out and is scored on the test one: both need labels."""
    if not any((r.labels >= 0).any() for r in recs):
        raise SplitError(f"no row of dataset {dataset!r} has a label, but the server's classifier and the test need "
                         "them (a dataset of your own: label_column in dataset.toml, see docs/sensors.md, "
                         "'Generic format')")
    for h in ("labelled", "test"):
        if not (parts[h].labels >= 0).any():
            raise SplitError(f"the {h} hold-out ({', '.join(parts[h].units)}) has no labelled row; "
                             "draw another split (--seed) or label more of the data")


def _split_key(dataset: str) -> str:
    """What hold-outs are disjoint by: 'unit' (a run) or 'subject' (the default for custom data)."""
    info = _known(dataset)
    return "unit" if info is not None and info.split_by == "run" else "subject"


def _group(rec: Recording, key: str) -> str:
    return rec.unit if key == "unit" else rec.subject


def _draw_holdout(groups: list[str], dataset: str, rng: np.random.Generator,
                  reserved: Collection[str] = ()) -> dict[str, list[str]]:
    """Pick the test / proxy / labelled groups (everything else is the client pool); no ``reserved`` group is
    labelled (with none reserved, the labelled groups are simply the next ones of the seeded order)."""
    if dataset == "opportunity" and all(u in groups for us in _OPP_HOLDOUT.values() for u in us):
        return {h: list(us) for h, us in _OPP_HOLDOUT.items()}
    if dataset == "ur_fall":
        strata = _UR_FALL_HOLDOUT  # stratified by run name prefix: fall-XX / adl-XX
    else:
        n = max(1, round(0.1 * len(groups)))
        strata = {"": (n, n, n)}
    out: dict[str, list[str]] = {h: [] for h in HOLDOUTS}
    for prefix, counts in strata.items():
        members = [g for g in groups if g.startswith(prefix)]
        if len(members) <= sum(counts):
            raise SplitError(f"need more than {sum(counts)} {prefix or 'run/subject'} groups to hold out "
                             f"{counts} (test, proxy, labelled), got {len(members)}; pass holdout=")
        order = rng.permutation(members).tolist()
        for h, k in zip(HOLDOUTS, counts):
            pick = [g for g in order if h != "labelled" or g not in reserved][:k]
            if len(pick) < k:
                raise SplitError(f"need {k} {prefix or 'run/subject'} groups for {h} outside the {len(reserved)} "
                                 f"reserved ones, {len(pick)} left")
            out[h] += pick
            order = [g for g in order if g not in pick]
    return out


def holdout_groups(recordings: list[Recording], seed: int, reserved: Collection[str] = ()) -> dict[str, list[str]]:
    """The test / proxy / labelled groups (runs or subjects) ``make_split`` draws for ``seed``, without
    normalising or cutting anything: cheap enough to list every reported seed's test units."""
    dataset = recordings[0].dataset
    key = _split_key(dataset)
    groups = sorted({_group(r, key) for r in recordings})
    return _draw_holdout(groups, dataset, np.random.default_rng(np.random.SeedSequence(seed).spawn(4)[0]), reserved)


def _partition(recs: Sequence[Recording], mods: Sequence[str]) -> Partition:
    """Concatenate whole recordings; one segment (and one ``units`` entry) per recording."""
    lengths = np.array([len(r) for r in recs], dtype=np.int64)
    stops = np.cumsum(lengths)
    segments = np.stack([stops - lengths, stops], axis=1) if recs else np.zeros((0, 2), np.int64)
    data = {m: np.concatenate([r.modalities[m] for r in recs]).astype(np.float32, copy=False) for m in mods}
    labels = np.concatenate([r.labels for r in recs]).astype(np.int64, copy=False)
    return Partition(data, labels, segments, tuple(r.unit for r in recs))


def _take(pool: Partition, pieces: np.ndarray, mods: Sequence[str]) -> Partition:
    """Rows of ``pool`` at ``pieces`` [S, 2] (pool coordinates) as a new partition with those segments."""
    lengths = pieces[:, 1] - pieces[:, 0]
    idx = np.repeat(pieces[:, 0] - np.cumsum(np.r_[0, lengths[:-1]]), lengths) + np.arange(lengths.sum())
    stops = np.cumsum(lengths)
    unit_of = np.searchsorted(pool.segments[:, 1], pieces[:, 0], side="right")
    return Partition(
        {m: pool.modalities[m][idx] for m in mods},
        pool.labels[idx],
        np.stack([stops - lengths, stops], axis=1),
        tuple(pool.units[i] for i in unit_of),
    )


def _cut_at_units(starts: np.ndarray, length: int, unit_stops: np.ndarray) -> np.ndarray:
    """Segments [s, s+length) split wherever a unit boundary falls inside them -> [S, 2]."""
    out = []
    for s in starts.tolist():
        e = s + length
        inner = unit_stops[(unit_stops > s) & (unit_stops < e)].tolist()
        bounds = [s, *inner, e]
        out += [(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def _paper_pieces(pool: Partition, n_clients: int, n_div: int, fraction: float, rng: np.random.Generator):
    """client_idxs (mu:324-379): per client, one random len_seg segment in each of n_div divisions."""
    n = len(pool)
    len_div = n // n_div
    len_seg = int(n * fraction // n_div)
    if len_seg < 2 or len_div - len_seg < 1:
        raise SplitError(f"pool of {n} rows too small for {n_div} divisions (len_seg={len_seg})")
    offsets = rng.integers(0, len_div - len_seg, size=(n_clients, n_div))
    starts = np.arange(n_div, dtype=np.int64)[None, :] * len_div + offsets
    unit_stops = pool.segments[:, 1]
    return [_cut_at_units(starts[c], len_seg, unit_stops) for c in range(n_clients)], {
        "n_div": n_div, "len_div": len_div, "len_seg": len_seg, "fraction": fraction,
    }


def _assignment_counts(total: int, clients: tuple[int, int, int]) -> tuple[int, int, int]:
    """Scale the A/B/AB counts to ``total`` clients (largest remainder), for the subject scheme."""
    weights = np.asarray(clients, dtype=np.float64)
    if weights.sum() <= 0:
        raise SplitError("clients must contain a positive count")
    exact = weights / weights.sum() * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return tuple(int(c) for c in counts)


def _normalise(
    recs: list[Recording], pool_units: set[str], mods: Sequence[str], mode: str
) -> tuple[list[Recording], Normalizer | None]:
    """Apply the chosen normalisation to the pair's modalities; statistics come from pool units only."""
    if mode == "none":
        return recs, None
    if mode == "unit":
        return [_with(r, {m: zscore_each(r.modalities[m]) for m in mods}) for r in recs], None
    norm = fit_normalizer((r.modalities for r in recs if r.unit in pool_units), mods)
    return [_with(r, {m: norm.apply(m, r.modalities[m]) for m in mods}) for r in recs], norm


def _with(r: Recording, mods: dict[str, np.ndarray]) -> Recording:
    return dataclasses.replace(r, modalities=mods)


def make_split(
    recordings: list[Recording],
    pair: tuple[str, str],
    *,
    scheme: str = "paper",
    seed: int = 0,
    clients: tuple[int, int, int] = (10, 10, 10),
    missing_rate: float = 0.0,
    normalize: str = "train",
    holdout: dict[str, Sequence[str]] | None = None,
    n_div: int | None = None,
    fraction: float = CLIENT_FRACTION,
    reserved: Collection[str] = (),
) -> FederatedSplit:
    """Split ``recordings`` into test / proxy / labelled / clients (see module doc); reproducible from ``seed``.

    ``holdout`` maps "test"/"proxy"/"labelled" to explicit runs or subjects; ``n_div`` overrides the
    dataset's paper division count (UR Fall 10, others 100). ``reserved`` groups are never labelled: a
    validation split keeps the units it scores off every reported seed's test units
    (``fedmekt.experiment.validation.reported_test_groups``).
    """
    if scheme not in SCHEMES:
        raise SplitError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if normalize not in NORMALIZE:
        raise SplitError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if not 0.0 <= missing_rate <= 1.0:
        raise SplitError("missing_rate must be in [0, 1]")
    if not recordings:
        raise SplitError("no recordings to split")
    pair = (str(pair[0]), str(pair[1]))
    if pair[0] == pair[1]:
        raise SplitError("the pair needs two different modalities")
    for r in recordings:
        missing = [m for m in pair if m not in r.modalities]
        if missing:
            raise SplitError(f"recording {r.unit} lacks modalities {missing} (has {sorted(r.modalities)})")
    dataset = recordings[0].dataset
    rate = _rate(recordings)
    key = _split_key(dataset)
    _, g_clients, g_missing, g_order = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    recs = sorted(recordings, key=lambda r: r.unit)
    groups = sorted({_group(r, key) for r in recs})
    chosen = {h: list(v) for h, v in holdout.items()} if holdout else holdout_groups(recs, seed, reserved)
    taken = [g for h in HOLDOUTS for g in chosen.get(h, [])]
    unknown = set(taken) - set(groups)
    if unknown or len(taken) != len(set(taken)) or not all(chosen.get(h) for h in HOLDOUTS):
        raise SplitError(f"holdout must name distinct, existing, non-empty groups (unknown: {sorted(unknown)})")
    chosen["pool"] = [g for g in groups if g not in set(taken)]
    if not chosen["pool"]:
        raise SplitError("no runs/subjects left for the client pool")
    by_split = {h: [r for r in recs if _group(r, key) in set(gs)] for h, gs in chosen.items()}
    pool_units = {r.unit for r in by_split["pool"]}

    normed, norm = _normalise(recs, pool_units, pair, normalize)
    normed_by_unit = {r.unit: r for r in normed}
    parts = {h: _partition([normed_by_unit[r.unit] for r in rs], pair) for h, rs in by_split.items()}
    pool = parts.pop("pool")
    _check_labelled(parts, recs, dataset)

    if scheme == "paper":
        counts = tuple(int(c) for c in clients)
        divisions = n_div or (_known(dataset).n_div if _known(dataset) else DEFAULT_N_DIV)
        pieces, paper = _paper_pieces(pool, sum(counts), divisions, fraction, g_clients)
    else:  # one client per pool subject, in a seeded order so the A/B/AB roles fall on random people
        subject_of = {r.unit: r.subject for r in recs}
        order = g_order.permutation(sorted({subject_of[u] for u in pool.units})).tolist()
        counts = _assignment_counts(len(order), tuple(clients))
        pieces = [pool.segments[[subject_of[u] == g for u in pool.units]] for g in order]
        paper = None
    client_parts, dropped = _clients(pool, pieces, pair, counts, missing_rate, g_missing)

    manifest = {
        "version": MANIFEST_VERSION,
        "dataset": dataset,
        "scheme": scheme,
        "seed": int(seed),
        "pair": list(pair),
        "rate_hz": rate,
        "label_names": list(recs[0].label_names),
        "disjoint_by": key,
        "normalize": normalize,
        "groups": {h: list(gs) for h, gs in chosen.items()},
        "units": {h: [r.unit for r in rs] for h, rs in by_split.items()},
        "rows": {**{h: len(p) for h, p in parts.items()}, "pool": len(pool)},
        "paper": paper,
        "missing_rate": float(missing_rate),
        "dropped_modality": dropped,
        "clients": [{"id": c.client_id, "modalities": list(c.modalities), "rows": len(c.data),
                     "segments": _unit_coordinates(pool, segs)} for c, segs in zip(client_parts, pieces)],
        "normalizer": None if norm is None else {
            "mean": {m: v.tolist() for m, v in norm.mean.items()},
            "std": {m: v.tolist() for m, v in norm.std.items()},
        },
    }
    return FederatedSplit(dataset, pair, recs[0].label_names, parts["test"], parts["proxy"], parts["labelled"],
                          client_parts, norm, manifest)


def _clients(pool: Partition, pieces: list[np.ndarray], pair: tuple[str, str], counts: tuple[int, int, int],
             missing_rate: float, rng: np.random.Generator) -> tuple[list[ClientPartition], dict[str, str]]:
    """Client i holds pair[0] only, pair[1] only or both (paper order); each two-modality client
    loses one modality with probability ``missing_rate``. Returns the clients and who lost what."""
    held = [(pair[0],)] * counts[0] + [(pair[1],)] * counts[1] + [pair] * counts[2]
    dropped: dict[str, str] = {}
    out = []
    for i, (mods, segs) in enumerate(zip(held, pieces)):
        cid = f"c{i:03d}"
        if len(mods) == 2 and rng.random() < missing_rate:
            dropped[cid] = mods[int(rng.integers(2))]
            mods = tuple(m for m in mods if m != dropped[cid])
        out.append(ClientPartition(cid, mods, _take(pool, segs, mods)))
    return out, dropped


def _unit_coordinates(pool: Partition, segs: np.ndarray) -> list[list]:
    """Pool row ranges -> [[unit, start, stop], …] in that unit's own rows (stable across pool layouts)."""
    unit_of = np.searchsorted(pool.segments[:, 1], segs[:, 0], side="right")
    offset = pool.segments[unit_of, 0]
    return [[pool.units[u], int(a), int(b)] for u, a, b in zip(unit_of.tolist(), (segs[:, 0] - offset).tolist(),
                                                               (segs[:, 1] - offset).tolist())]


def write_manifest(split: FederatedSplit, path: Path | str) -> None:
    """Write ``split.manifest`` as JSON (atomically, so a crash never leaves half a manifest)."""
    atomic_write_bytes(Path(path), json.dumps(split.manifest, indent=1, sort_keys=True).encode())
