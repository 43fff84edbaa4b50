"""Benchmark of the learning core (issue #3), figures printed side by side in one run.

1. Wall time of the full UR Fall acce–depth FedMEKT-C reproduction: 10/10/10 clients, 9 per round,
   100 rounds, one seed, in one process, 1 torch thread (goal < 10 min on the 2-core dev machine).
2. One local training step of an A+B FedMEKT-C client (the heaviest client step), timed interleaved:
   a. ours: float32, global embeddings received (no teacher forward), KD once;
   b. the same step in float64 (dtype effect alone);
   c. the authors' formulation (``uC:202-270``): float64, the frozen global model re-encodes the proxy
      windows inside the step, KD counted twice.
   Ratios b/a and c/a (goal for c/a: >= 3x).
3. Sub-windows (= optimizer steps) per local epoch of the UR Fall clients (seed 0 split, 200 draws each)
   when the crop's partial last sub-window is clipped and trained on (the reference, ``private_epoch``)
   against dropping it (the rule before issue 10): same crop lengths and window draws.
4. Wall time of one seed's reference rows (``fedmekt.experiment.reference_rows``: raw-features, labelled-only,
   proxy-only, local-only, pooled, supervised-ceiling), which ``fedmekt reproduce`` adds once per seed, and
   the client and server steps each takes.
5. Wall time of the whole UR Fall reproduction as a user runs it: ``fedmekt reproduce --dataset ur_fall --pair
   acce-depth --seeds 5 --jobs <cores>`` (all five algorithms and every reference row, defaults; goal < 30 min
   on 2 cores), in a child process so its threads and memory are its own.

Run: ``.venv/bin/python bench/bench_reproduce.py [--rounds 100] [--steps 200] [--skip-run]
[--skip-references] [--reproduce-seeds 5] [--reproduce-jobs N]`` (``--reproduce-seeds 0`` skips 5). The machine is shared:
the load average is printed beside the figures.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from fedmekt.learn.algorithms.base import ModuleOptimizers, Projections
from fedmekt.config import FederationConfig
from fedmekt.learn.engine import build_model
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.learn.losses import kd_loss, reconstruction_loss
from fedmekt.experiment.reference_rows import reference_finals
from sensors.datasets import load_dataset
from sensors.splits import make_split
from sensors.windowing import paper_crop_length


def _ur_fall(rounds: int):
    split = make_split(load_dataset("ur_fall"), ("acce", "depth"), seed=0)
    cfg = FederationConfig(federation="bench", dataset="ur_fall", pair=("acce", "depth"), algorithm="fedmekt-c",
                           rounds=rounds, seed=0, device="cpu", threads=1)
    return split, cfg


def full_run(rounds: int) -> tuple[float, dict]:
    split, cfg = _ur_fall(rounds)
    t0 = time.perf_counter()
    result = run_inprocess(cfg, split, progress=True)
    return time.perf_counter() - t0, result.final


def walk_steps(draws: int = 200) -> tuple[float, float]:
    """Mean sub-windows per local epoch over the UR Fall clients: (clipped tail kept, tail dropped)."""
    split, cfg = _ur_fall(1)
    rng = np.random.default_rng(0)
    kept = dropped = 0
    for c in split.clients:
        longest = int((c.data.segments[:, 1] - c.data.segments[:, 0]).max())
        for _ in range(draws):
            length = paper_crop_length(len(c.data), int(rng.integers(*cfg.resolved_batch())), longest + 1)
            s = full = n = 0
            while s < length:
                w = int(rng.integers(*cfg.hyper.sub_window))
                full, n, s = full + (s + w <= length), n + 1, s + w
            kept, dropped = kept + n, dropped + max(full, 1)
    epochs = len(split.clients) * draws
    return kept / epochs, dropped / epochs


def reference_run(rounds: int) -> tuple[float, list[dict]]:
    split, cfg = _ur_fall(rounds)
    t0 = time.perf_counter()
    finals = reference_finals(cfg, split)
    return time.perf_counter() - t0, finals


def whole_reproduction(seeds: int, jobs: int) -> float:
    """Seconds of ``fedmekt reproduce`` on UR Fall acce-depth with ``seeds`` seeds, ``--jobs``, every default."""
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "fedmekt_cli", "reproduce", "--dataset", "ur_fall", "--pair",
                        "acce-depth", "--seeds", str(seeds), "--jobs", str(jobs), "--no-progress", "--out", out],
                       check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - t0


def step_timings(steps: int) -> dict[str, float]:
    """Median seconds of one A+B client step in the three formulations (interleaved to share the load)."""
    torch.set_num_threads(1)
    cfg = FederationConfig(dataset="ur_fall", pair=("acce", "depth"), device="cpu")
    h = cfg.hyper
    rng = np.random.default_rng(0)
    b, w, window = 24, 24, cfg.window                      # UR Fall: batch U[16,32), sub-window U[16,32)
    chans = {"acce": 3, "depth": 8}

    def data(dtype):
        g = np.random.default_rng(1)
        x = {m: torch.from_numpy(g.normal(size=(b, w, c))).to(dtype) for m, c in chans.items()}
        p = {m: torch.from_numpy(g.normal(size=(cfg.proxy_batch, window, c))).to(dtype) for m, c in chans.items()}
        return x, p

    def setup(dtype):
        model = build_model(cfg, chans).to(dtype)
        proj = Projections(model.rep_size, cfg.hidden, 0).to(dtype)
        return model, ModuleOptimizers(model, h.lr_local), proj

    # a/b: ours (received teacher embeddings)
    def ours(dtype):
        model, opt, proj = setup(dtype)
        x, p = data(dtype)
        with torch.no_grad():
            teacher = {m: model.encode(p[m], m) for m in chans}
        parts = [f"{k}.{m}" for k in ("encoders", "decoders") for m in chans]

        def step():
            rec = sum(reconstruction_loss(model(x[m], m), x) for m in chans)
            emb = {m: model.encode(p[m], m) for m in chans}
            kd = sum(wt * kd_loss(proj.joint(ly, [emb[m][i] for m in chans]),
                                  proj.joint(ly, [teacher[m][i] for m in chans]), h.temperature)
                     for i, (ly, wt) in enumerate((("z", h.alpha), ("h", h.beta))))
            opt.step(rec + kd, parts)
        return step

    # c: the authors' formulation (float64, teacher forward inside the step, KD twice, one Adam)
    def authors():
        model, _, proj = setup(torch.float64)
        glob = copy.deepcopy(model)
        opt = torch.optim.Adam(model.parameters(), lr=h.lr_local)
        x, p = data(torch.float64)

        def step():
            opt.zero_grad()
            emb = {m: model.encode(p[m], m) for m in chans}
            with torch.no_grad():
                emb_g = {m: glob.encode(p[m], m) for m in chans}
            kd = sum(wt * kd_loss(proj.joint(ly, [emb[m][i] for m in chans]),
                                  proj.joint(ly, [emb_g[m][i] for m in chans]), h.temperature, faithful=True)
                     for i, (ly, wt) in enumerate((("z", h.alpha), ("h", h.beta))))
            rec = sum(reconstruction_loss(model(x[m], m), x) for m in chans)
            (rec + 2 * kd).backward()
            opt.step()
        return step

    fns = {"ours_float32": ours(torch.float32), "ours_float64": ours(torch.float64), "authors_float64": authors()}
    for fn in fns.values():
        for _ in range(5):
            fn()
    times = {k: [] for k in fns}
    for _ in range(steps):
        for k in rng.permutation(list(fns)):
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--skip-run", action="store_true", help="no full FedMEKT-C run")
    ap.add_argument("--skip-references", action="store_true", help="no reference rows")
    ap.add_argument("--reproduce-seeds", type=int, default=5, help="seeds of the whole reproduction (0: skip it)")
    ap.add_argument("--reproduce-jobs", type=int, default=os.cpu_count(),
                    help="its --jobs (default: one per core, as a user with this machine runs it)")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, load average {os.getloadavg()}")
    t = step_timings(args.steps)
    a = t["ours_float32"]
    print(f"A+B client step, median of {args.steps}: ours float32 {a * 1e3:.2f} ms | same step float64 "
          f"{t['ours_float64'] * 1e3:.2f} ms ({t['ours_float64'] / a:.2f}x) | authors' float64 formulation "
          f"{t['authors_float64'] * 1e3:.2f} ms ({t['authors_float64'] / a:.2f}x)")
    if not args.skip_run:
        wall, final = full_run(args.rounds)
        print(f"UR Fall acce-depth FedMEKT-C, 10/10/10 clients, 9/round, {args.rounds} rounds, seed 0, 1 thread: "
              f"wall {wall:.1f} s ({wall / 60:.2f} min; goal < 10 min); final probe weighted F1 acce "
              f"{final['probe_f1_weighted_acce']:.4f}")
    kept, dropped = walk_steps()
    print(f"UR Fall client local epoch: {kept:.2f} sub-windows with the clipped tail (reference), {dropped:.2f} "
          f"when it is dropped ({1 - dropped / kept:.0%} fewer steps)")
    if not args.skip_references:
        wall, finals = reference_run(args.rounds)
        print(f"reference rows of one seed ({args.rounds} rounds' local steps): wall {wall:.1f} s; "
              + "; ".join(f"{f['variant']} {f['wall_s']:.1f} s, {f['local_steps']} client + {f['server_steps']} "
                          f"server steps, probe weighted F1 acce {f['probe_f1_weighted_acce']:.4f}" for f in finals))
    if args.reproduce_seeds:
        wall = whole_reproduction(args.reproduce_seeds, args.reproduce_jobs)
        print(f"fedmekt reproduce --dataset ur_fall --pair acce-depth --seeds {args.reproduce_seeds} --jobs "
              f"{args.reproduce_jobs} (all algorithms and reference rows): wall {wall / 60:.1f} min (goal < 30 min "
              f"on 2 cores)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
