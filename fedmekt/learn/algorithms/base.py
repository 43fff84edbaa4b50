"""What every algorithm step works on: a party (model + per-module optimizers), data batches, key names.

Algorithms are written as client-side and server-side steps with no I/O (``fedmekt.learn.engine`` owns the
state and the wire). Shared decisions documented here once:

* Freezing (O5/O6): one Adam per sub-module (``encoders.<m>``, ``decoders.<m>``); every step clears all
  gradients and steps exactly the sub-modules it names, so nothing accumulates between the two sequential
  steps of an A+B client and "frozen" parts never move by momentum.
* Randomness: a step receives a ``numpy.random.Generator``; it never touches global RNGs.
* Bounded rounds: ``private_epoch(..., max_steps=k)`` walks at most k sub-windows, so a round's cost stops
  growing with the partition (``hyper.local_step_budget``, ``hyper.server_walk_step_budget``). A capped epoch
  still draws its crops uniformly over the whole partition (see ``private_epoch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmekt.concurrency import seeded_torch
from fedmekt.config import FederationConfig
from fedmekt.learn.losses import alignment_loss
from fedmekt.learn.model import SplitAutoencoder
from fedmekt.learn.robust import RoundUploads
from fedmekt.learn.streaming import StreamingMean
from sensors.partition import Partition
from sensors.windowing import gather_windows, paper_crop_length, random_crops

Tensors = dict[str, np.ndarray]


def emb_key(modality: str, layer: str) -> str:
    """Wire name of an embedding: ``emb/<modality>/z`` (representation) or ``emb/<modality>/h`` (hidden)."""
    return f"emb/{modality}/{layer}"


def param_key(name: str) -> str:
    """Wire name of a parameter: ``param/<state_dict key>``."""
    return f"param/{name}"


def exchanged_layers(cfg: FederationConfig) -> tuple[str, ...]:
    return ("z", "h") if cfg.layers == "rep+hidden" else ("z",)


def enc(m: str) -> str:
    return f"encoders.{m}"


def dec(m: str) -> str:
    return f"decoders.{m}"


class ModuleOptimizers:
    """One Adam per encoder/decoder so each step updates exactly the parts it names (fixes O5/O6)."""

    def __init__(self, model: SplitAutoencoder, lr: float) -> None:
        self.optimizers = {
            f"{kind}.{m}": torch.optim.Adam(getattr(model, kind)[m].parameters(), lr=lr)
            for kind in ("encoders", "decoders")
            for m in model.modalities
        }

    def step(self, loss: torch.Tensor, names: list[str] | tuple[str, ...]) -> float:
        """Clear every gradient, backpropagate ``loss``, step the named sub-modules only."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for name in names:
            self.optimizers[name].step()
        return float(loss.detach())

    def state_arrays(self, prefix: str) -> Tensors:
        return {f"{prefix}{name}/{k}": v for name, opt in self.optimizers.items() for k, v in optimizer_arrays(opt).items()}

    def load_state_arrays(self, state: Tensors, prefix: str) -> None:
        for name, opt in self.optimizers.items():
            p = f"{prefix}{name}/"
            load_optimizer_arrays(opt, {k[len(p):]: v for k, v in state.items() if k.startswith(p)})


def optimizer_arrays(opt: torch.optim.Optimizer) -> Tensors:
    """Adam state as flat named arrays ("<param index>/<field>"), safetensors-able."""
    out = {}
    for idx, fields in opt.state_dict()["state"].items():
        for name, value in fields.items():
            out[f"{idx}/{name}"] = value.detach().cpu().numpy().astype(np.float32).reshape(value.shape)
    return out


def load_optimizer_arrays(opt: torch.optim.Optimizer, arrays: Tensors) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = torch.from_numpy(np.array(value, dtype=np.float32))
    current = opt.state_dict()
    opt.load_state_dict({"state": state, "param_groups": current["param_groups"]})


class Projections(nn.Module):
    """FedMEKT-C's fixed random projections ``Dense`` (r×r) and ``Dense1`` (hidden×hidden) (O4).

    Built from the federation seed so every party reconstructs the same matrices without sending them;
    never trained (no optimizer owns them, ``requires_grad`` is off).
    """

    def __init__(self, rep_size: int, hidden: int, seed: int) -> None:
        super().__init__()
        with seeded_torch(seed):
            self.rep = nn.Linear(rep_size, rep_size)
            self.hidden = nn.Linear(hidden, hidden)
        self.requires_grad_(False)

    def joint(self, layer: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """Project the modalities' embeddings stacked along the batch axis (the "joint" embedding)."""
        return (self.rep if layer == "z" else self.hidden)(torch.cat(parts, dim=0))


@dataclass
class Party:
    """What a training step may touch on one side of the federation."""

    cfg: FederationConfig
    model: SplitAutoencoder
    optim: ModuleOptimizers
    projections: Projections
    device: torch.device
    modalities: tuple[str, ...]   # held modalities (the server holds the whole pair)
    unlabelled: Partition | None = None  # server: inputs it holds besides the proxy (the labelled set, whose
                                         # labels the autoencoder never reads); walked with server_walk_labelled


def inputs_only(parts: list[Partition], modalities) -> Partition:
    """The partitions' rows stacked (segments offset, units kept), labels replaced by -1: input to a walk."""
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    return Partition({m: np.concatenate([p.modalities[m] for p in parts]) for m in modalities},
                     np.full(sum(len(p) for p in parts), -1, dtype=np.int64),
                     np.concatenate([np.asarray(p.segments, dtype=np.int64).reshape(-1, 2) + o
                                     for p, o in zip(parts, offsets)]),
                     tuple(u for p in parts for u in p.units))


class ProxyWindows:
    """The round's proxy windows Π_t as tensors {m: [W, window, C]} — identical for every party.

    ``source`` is the proxy set they were cut from (the server's walk needs it); None for windows that came
    over the wire (``proxy_delivery`` "round").
    """

    def __init__(self, x: dict[str, np.ndarray], starts: np.ndarray, device: torch.device,
                 source: Partition | None = None) -> None:
        self.source = source
        self.starts = np.asarray(starts, dtype=np.int64)
        self.x = {m: torch.from_numpy(np.ascontiguousarray(v)).to(device) for m, v in x.items()}

    @classmethod
    def cut(cls, proxy: Partition, starts: np.ndarray, window: int, modalities, device: torch.device) -> "ProxyWindows":
        """Π_t cut from a proxy set this party holds."""
        starts = np.asarray(starts, dtype=np.int64)
        return cls({m: gather_windows(proxy.modalities[m], starts, window) for m in modalities}, starts, device, proxy)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def epoch(self, rng: np.random.Generator, batch: int) -> Iterator[np.ndarray]:
        """Index minibatches covering every window once, in a seeded order."""
        order = rng.permutation(len(self))
        for s in range(0, len(order), batch):
            yield order[s : s + batch]

    def cycle(self, rng: np.random.Generator, batch: int) -> Iterator[np.ndarray]:
        """Endless minibatches (a fresh seeded permutation after each pass): lock-step with private windows."""
        while True:
            yield from self.epoch(rng, batch)


def epoch_steps(budget: int, epochs: int) -> int:
    """Per-epoch share of a per-round step budget (0 = unbounded); config validation keeps it >= 1."""
    return budget // epochs if budget else 0


def private_epoch(part: Partition, modalities, cfg: FederationConfig, rng: np.random.Generator, device: torch.device,
                  max_steps: int = 0) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """One local "epoch" of the reference (spec §2.6): one batch of random crops walked in random sub-windows.

    B ~ U[batch), crop length = rows // B capped by the longest segment, sub-window w ~ U[sub_window) per step.
    As the reference slices ``x[:, s:s + w]``, the last sub-window is clipped at the crop's end and trained on
    (it may be a single step: an LSTM takes any length >= 1; a crop shorter than w is one clipped window).
    Yields ({m: [B, w', C]} float32 on ``device``, labels [B, w'] int64), 1 <= w' <= w.

    ``max_steps`` k > 0 bounds the walk: the crop is at most k × (longest sub-window) rows and the walk stops
    after k steps, so cost and memory no longer grow with the partition. Nothing changes when the crop is at
    most k × (shortest sub-window) rows (the walk can't exceed k steps), which is why a budget above a small
    dataset's walk leaves its schedule bit-identical. A capped epoch trains on the same kind of rows as the
    reference — B crops whose starts are drawn uniformly over the whole partition, fresh for every
    (seed, round, client) — rather than on the newest rows: it stays an unbiased sample of the partition,
    so over rounds every row is visited (a fixed newest tail would be the last subjects of a dataset
    partition, and on a gateway the store's retention already makes the partition a recent window).
    """
    lo, hi = cfg.resolved_batch()
    batch = int(rng.integers(lo, hi))
    longest = int((part.segments[:, 1] - part.segments[:, 0]).max())
    length = paper_crop_length(len(part), batch, longest + 1)
    if max_steps:
        length = min(length, max_steps * (cfg.hyper.sub_window[1] - 1))
    crops, labels = random_crops(part, batch, length, rng)
    xs = {m: torch.from_numpy(np.ascontiguousarray(crops[m])).to(device) for m in modalities}
    ys = torch.from_numpy(np.ascontiguousarray(labels)).to(device)
    s = steps = 0
    while s < length and (not max_steps or steps < max_steps):
        e = min(s + int(rng.integers(*cfg.hyper.sub_window)), length)
        yield {m: x[:, s:e] for m, x in xs.items()}, ys[:, s:e]
        s, steps = e, steps + 1


def masked(xs: dict[str, torch.Tensor], ratio: float, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """A client's private inputs with ``ratio`` of each window's time steps zeroed (every modality of a step
    alike; inputs are z-scored, so 0 is the mean): the encoder must infer what it cannot see, which the
    reconstruction of the unmasked window then scores. ``ratio`` 0 returns ``xs`` and draws nothing, so the
    default schedule's random streams are untouched."""
    if not ratio:
        return xs
    first = next(iter(xs.values()))
    keep = torch.from_numpy(rng.random(first.shape[:2]) >= ratio).to(first.device, first.dtype).unsqueeze(-1)
    return {m: x * keep for m, x in xs.items()}


def reconstruct(model: SplitAutoencoder, x: torch.Tensor, modality: str, outputs) -> dict[str, torch.Tensor]:
    """``model(x, modality)`` restricted to the decoders in ``outputs`` (a unimodal client needs one)."""
    z, _ = model.encode(x, modality)
    seed = z[:, -1:, :].expand(-1, z.shape[1], -1)
    return {m: model.decoders[m](seed)[0] for m in outputs}


def cross_modal_alignment(party: Party, x: dict[str, torch.Tensor],
                           z: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``hyper.align``'s term between the first two modalities' representations of the aligned windows ``x``.

    ``z`` passes representations already computed on ``x``; zero when off or with one modality. Every algorithm
    that trains A+B clients adds it the same way, so a comparison under it stays fair (issue 19 §2d).
    """
    h = party.cfg.hyper
    if h.align == "none" or len(x) < 2:
        return torch.zeros((), device=party.device)
    z = z or {}
    za, zb = (z[m] if m in z else party.model.encode(x[m], m)[0] for m in list(x)[:2])
    return h.align_weight * alignment_loss(za, zb, h.align, h.align_tau)


def check_tensors(got: Tensors, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """Reject a message whose names or shapes differ from what this round needs (untrusted input)."""
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    if missing or extra:
        raise ValueError(f"{what}: missing {missing[:3]} unexpected {extra[:3]}")
    for k, shape in expected.items():
        arr = got[k]
        if not isinstance(arr, np.ndarray):
            raise ValueError(f"{what}: {k} is a {type(arr).__name__}, not an array")
        if tuple(arr.shape) != tuple(shape) or arr.dtype != np.float32:
            raise ValueError(f"{what}: {k} has {arr.dtype}{tuple(arr.shape)}, expected float32{tuple(shape)}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: {k} contains NaN or inf")


def to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


class Algorithm:
    """Client-side and server-side steps of one algorithm; no I/O, no state of its own."""

    name = ""
    width_sliced = False   # HeteroFL: each narrower device class trains and deploys a slice of the global model
    aligns = True          # hyper.align acts: its A+B parties train both encoders together (not FedMEKT-S)

    def downstream(self, server: Party, proxy: ProxyWindows | None) -> Tensors:
        """Knowledge the server sends this round (every key; ``engine.client_view`` filters per client)."""
        raise NotImplementedError

    def upload_spec(self, party: Party, modalities: tuple[str, ...], n_windows: int) -> dict[str, tuple[int, ...]]:
        """Names and shapes of a valid upload from a client holding ``modalities``."""
        raise NotImplementedError

    def class_spec(self, spec: dict[str, tuple[int, ...]], hidden: int) -> dict[str, tuple[int, ...]]:
        """``spec`` (:meth:`upload_spec` of the server) for a client of hidden width ``hidden``: the same for every
        algorithm but HeteroFL, since embeddings have one shape whatever the width."""
        return spec

    def teacher_basis(self, server: Party, proxy: ProxyWindows | None, down: Tensors) -> Tensors:
        """The server's own embeddings a teacher view may fit to (``knowledge`` below); default: the downstream."""
        return dict(down)

    def teacher_view(self, server: Party, upload: Tensors, knowledge: Tensors) -> Tensors:
        """What of a validated upload the server averages (default: the upload itself); ``knowledge`` is the
        server's own downstream of the round."""
        return upload

    def aggregate(self, server: Party, acc: StreamingMean | RoundUploads) -> Tensors:
        """The per-key client means the server update reads, from the round's accumulator."""
        return acc.mean()

    def client_weight(self, cfg: FederationConfig, modalities: tuple[str, ...]) -> float:
        """Weight of a client's upload in the server's streaming mean."""
        return 1.0

    def client_train(self, client: Party, down: Tensors, private: Partition, proxy: ProxyWindows | None,
                     rng: np.random.Generator) -> Tensors:
        """Local training from the received knowledge; returns the upload."""
        raise NotImplementedError

    def server_update(self, server: Party, means: Tensors, proxy: ProxyWindows | None,
                      rng: np.random.Generator, round_: int) -> dict[str, float]:
        """Update the global autoencoder from the per-key client means in round ``round_``; returns loss metrics."""
        raise NotImplementedError
