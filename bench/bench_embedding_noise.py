"""F1 cost of Gaussian noise on uploaded embeddings (``--embedding-noise SIGMA``, issue #6).

Each client adds N(0, SIGMA^2) to every value it uploads (FedMEKT's proxy-set embeddings z and h),
drawn from a generator seeded by (seed, client, round) so runs stay reproducible: the engine's own
``FederationConfig.embedding_noise``, applied at the end of ``ClientEngine.train_round``.

Runs UR Fall acce-depth FedMEKT-C in one process for every SIGMA and seed and prints the final
linear-probe F1 (weighted) per test modality, side by side, with the change against SIGMA = 0 and
the seed-to-seed spread at SIGMA = 0. Usage::

    .venv/bin/python bench/bench_embedding_noise.py [--rounds 30] [--seeds 2] [--sigmas 0,0.1,0.3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fedmekt.config import FederationConfig
from fedmekt.learn.engine import build_model
from fedmekt.experiment.in_process import RunResult, run_inprocess
from sensors.datasets import load_dataset
from sensors.splits import make_split


def embedding_rms(result: RunResult, split) -> float:
    """RMS of the final global encoder's z and h on the proxy set: the scale SIGMA is compared with."""
    model = build_model(result.config, split.channels)
    model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(v) for k, v in result.model_state.items()
                           if k.startswith("autoencoder.")})
    with torch.no_grad():
        values = [t.numpy().ravel() for m in result.config.pair
                  for t in model.encode(torch.from_numpy(split.proxy.modalities[m][None]), m)]
    return float(np.sqrt(np.mean(np.concatenate(values) ** 2)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--sigmas", default="0,0.1,0.3")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    recordings = load_dataset("ur_fall")
    results: dict[tuple[float, int], dict[str, float]] = {}
    rms: list[float] = []
    for seed in range(args.seeds):
        split = make_split(recordings, ("acce", "depth"), seed=seed)
        for sigma in sigmas:
            cfg = FederationConfig(federation="noise", dataset="ur_fall", pair=("acce", "depth"), algorithm="fedmekt-c",
                                   rounds=args.rounds, seed=seed, device="auto", threads=args.threads,
                                   embedding_noise=sigma)
            t0 = time.perf_counter()
            result = run_inprocess(cfg, split, progress=False)
            final = result.final
            if sigma == 0:
                rms.append(embedding_rms(result, split))
            results[(sigma, seed)] = {m: final[f"probe_f1_weighted_{m}"] for m in cfg.pair}
            print(f"sigma {sigma:<5g} seed {seed}: " + ", ".join(f"F1 {m} {v:.3f}" for m, v in results[(sigma, seed)].items())
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\nUR Fall acce-depth FedMEKT-C (kd={cfg.hyper.kd}), {args.rounds} rounds, {args.seeds} seed(s); final probe "
          f"F1 (weighted), mean over seeds, change vs sigma 0; RMS of the clean global embeddings of the proxy set "
          f"{np.mean(rms) if rms else float('nan'):.3f}")
    for m in ("acce", "depth"):
        base = np.array([results[(sigmas[0], s)][m] for s in range(args.seeds)])
        print(f"  test on {m}: seed-to-seed spread at sigma {sigmas[0]:g}: {base.max() - base.min():.3f}")
        for sigma in sigmas:
            vals = np.array([results[(sigma, s)][m] for s in range(args.seeds)])
            print(f"    sigma {sigma:<5g} F1 {vals.mean():.3f}  change {np.mean(vals - base):+.3f}")


if __name__ == "__main__":
    main()
