"""F1 cost of Gaussian noise on uploaded embeddings (the optional ``--embedding-noise SIGMA`` of issue #6).

Each client adds N(0, SIGMA^2) to every value it uploads (FedMEKT's proxy-set embeddings z and h),
drawn from a generator seeded by (seed, client, round) so runs stay reproducible. The engine does
not have this option yet; until it does, this bench adds the noise with a ``ClientEngine``
subclass swapped into the in-process runner, which is exactly what the proposed engine change
does (``FederationConfig.embedding_noise`` applied at the end of ``ClientEngine.train_round``).

Runs UR Fall acce-depth FedMEKT-C in one process for every SIGMA and seed and prints the final
linear-probe F1 (weighted) per test modality, side by side, with the change against SIGMA = 0 and
the seed-to-seed spread at SIGMA = 0. Usage::

    .venv/bin/python bench/bench_embedding_noise.py [--rounds 30] [--seeds 2] [--sigmas 0,0.1,0.3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fedmekt.federation as federation
from fedmekt.config import FederationConfig
from fedmekt.engine import ClientEngine, client_key, rng_for
from sensors.datasets import load_dataset
from sensors.splits import make_split

NOISE_PURPOSE = 26  # next free purpose word after the engine's own (_CLIENT = 25)
UPLOAD_RMS: list[float] = []  # RMS of the clean uploads: the scale SIGMA is compared with


def noisy_engine(sigma: float) -> type[ClientEngine]:
    class NoisyClientEngine(ClientEngine):
        def train_round(self, plan, downstream, private):
            upload = super().train_round(plan, downstream, private)
            UPLOAD_RMS.append(float(np.sqrt(np.mean(np.concatenate([v.ravel() for v in upload.values()]) ** 2))))
            if sigma <= 0:
                return upload
            rng = rng_for(self.cfg.seed, NOISE_PURPOSE, client_key(self.client_id), plan.round)
            return {k: (v + rng.normal(0.0, sigma, v.shape)).astype(np.float32) for k, v in upload.items()}

    return NoisyClientEngine


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
    for seed in range(args.seeds):
        split = make_split(recordings, ("acce", "depth"), seed=seed)
        for sigma in sigmas:
            cfg = FederationConfig(federation="noise", dataset="ur_fall", pair=("acce", "depth"), algorithm="fedmekt-c",
                                   rounds=args.rounds, seed=seed, device="auto", threads=args.threads)
            federation.ClientEngine = noisy_engine(sigma)
            t0 = time.perf_counter()
            final = federation.run_inprocess(cfg, split, progress=False).final
            results[(sigma, seed)] = {m: final[f"probe_f1_weighted_{m}"] for m in cfg.pair}
            print(f"sigma {sigma:<5g} seed {seed}: " + ", ".join(f"F1 {m} {v:.3f}" for m, v in results[(sigma, seed)].items())
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    federation.ClientEngine = ClientEngine
    print(f"\nUR Fall acce-depth FedMEKT-C, {args.rounds} rounds, {args.seeds} seed(s); final probe F1 (weighted), "
          f"mean over seeds, change vs sigma 0; RMS of a clean upload {np.mean(UPLOAD_RMS):.3f}")
    for m in ("acce", "depth"):
        base = np.array([results[(sigmas[0], s)][m] for s in range(args.seeds)])
        print(f"  test on {m}: seed-to-seed spread at sigma {sigmas[0]:g}: {base.max() - base.min():.3f}")
        for sigma in sigmas:
            vals = np.array([results[(sigma, s)][m] for s in range(args.seeds)])
            print(f"    sigma {sigma:<5g} F1 {vals.mean():.3f}  change {np.mean(vals - base):+.3f}")


if __name__ == "__main__":
    main()
