"""Total bytes over a run for communication profiles, from the message shapes alone (no training).

Every round's plan (the seeded client selection) is drawn exactly as the run draws it, and each selected
client's downstream view and upload are sized by the real encoder (``fedmekt.experiment.accounting``) from zeros of
the right shapes; FedMEKT adds the one-off proxy distribution. The totals equal the runner's
``bytes_up + bytes_down`` summed over rounds plus ``bytes_proxy_once`` (what ``fedmekt reproduce`` reports),
so profiles can be compared with mmFedAvg before a run is spent on them (docs/fedmekt-c-selection.md).

    .venv/bin/python scripts/fedmekt_c_bytes.py [--dataset ur_fall] [--seeds 0,1,2,3,4] [--rounds 100]
"""

from __future__ import annotations

import argparse

import numpy as np

PROFILES = {  # name -> config overrides
    "mmfedavg (float32)": {"algorithm": "mmfedavg", "wire_dtype": "float32"},
    "mmfedavg (float16)": {"algorithm": "mmfedavg", "wire_dtype": "float16"},
    "fedmekt-c rep+hidden float32": {"layers": "rep+hidden", "wire_dtype": "float32"},
    "fedmekt-c rep+hidden float16": {"layers": "rep+hidden", "wire_dtype": "float16"},
    "fedmekt-c rep+hidden float16 W12": {"layers": "rep+hidden", "wire_dtype": "float16", "proxy_windows": 12},
    "fedmekt-c rep float32": {"layers": "rep", "wire_dtype": "float32"},
    "fedmekt-c rep float32, proxy set once": {"layers": "rep", "wire_dtype": "float32", "proxy_delivery": "once"},
    "fedmekt-c rep float32, Π_t per round": {"layers": "rep", "wire_dtype": "float32", "proxy_delivery": "round"},
    "fedmekt-c rep float16": {"layers": "rep", "wire_dtype": "float16"},
    "fedmekt-c rep float32 W12": {"layers": "rep", "wire_dtype": "float32", "proxy_windows": 12},
    "fedmekt-c rep int8": {"layers": "rep", "wire_dtype": "int8"},
}


def run_bytes(cfg, split) -> int:
    """Bytes of ``cfg``'s run on ``split``: every round's selected clients' views and uploads, plus the proxy once."""
    import torch

    from fedmekt.experiment.accounting import message_bytes, proxy_once_bytes
    from fedmekt.learn.algorithms import get_algorithm
    from fedmekt.learn.algorithms.base import Party
    from fedmekt.learn.engine import ServerEngine, build_model, window_key

    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
    algorithm = get_algorithm(cfg.algorithm)
    party = Party(cfg, build_model(cfg, split.channels), None, None, torch.device("cpu"), tuple(cfg.pair))
    mods = {c.client_id: c.modalities for c in split.clients}
    sizes: dict[tuple[str, ...], int] = {}
    for m in set(mods.values()):
        spec = algorithm.upload_spec(party, m, cfg.proxy_windows)
        zeros = {k: np.zeros(shape, np.float32) for k, shape in spec.items()}
        view = dict(zeros)
        if server.proxy_delivery == "round":
            view.update({window_key(x): np.zeros((cfg.proxy_windows, cfg.window, split.channels[x]), np.float32)
                         for x in m})
        sizes[m] = message_bytes(view, cfg.wire_format, kind="global") + message_bytes(zeros, cfg.wire_format)
    total = sum(sizes[mods[c]] for r in range(cfg.rounds) for c in server.plan_round(r, sorted(mods)).selected)
    return total + proxy_once_bytes(cfg, split.proxy, len(split.clients))


def main() -> None:
    from fedmekt.config import FederationConfig
    from sensors.datasets import dataset_info, load_dataset
    from sensors.splits import make_split

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ur_fall")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    recordings, pair = load_dataset(args.dataset), dataset_info(args.dataset).default_pair
    totals: dict[str, list[int]] = {p: [] for p in PROFILES}
    for seed in (int(s) for s in args.seeds.split(",")):
        split = make_split(recordings, pair, seed=seed)
        for name, over in PROFILES.items():
            cfg = FederationConfig(**{"federation": "bytes", "dataset": args.dataset, "pair": pair,
                                      "rounds": args.rounds, "seed": seed, "device": "cpu", **over})
            totals[name].append(run_bytes(cfg, split))
    ref = np.mean(totals["mmfedavg (float32)"])
    print(f"{args.dataset} {'-'.join(pair)}, {args.rounds} rounds, seeds {args.seeds}: MiB over the run "
          f"(mean over seeds), and the ratio to mmFedAvg float32")
    for name, values in totals.items():
        print(f"{name:34s} {np.mean(values) / 2**20:8.2f} MiB  {np.mean(values) / ref:6.3f}×")


if __name__ == "__main__":
    main()
