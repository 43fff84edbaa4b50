"""A mixed-fleet run's per-class models distilled again from its saved global model, with another budget.

    .venv/bin/python scripts/fleet_redistil.py runs/fleet-mixed --class-distil-steps 480

The per-class students depend only on the run's final global model, its split (rebuilt from the seed) and
the seeded draws, so this prints, per run of the folder, exactly what ``fedmekt reproduce`` would have
recorded (``class_<c>_deployed_…`` in final.jsonl) with ``hyper.class_distil_steps`` set to the given
budget, and each student's z error against the global encoder on the labelled inputs: one JSON line per run,
for scripts/fleet_compare.py (``--mixed-classes``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def z_errors(server, cfg) -> dict[str, float]:
    """``z_mse_<c>_<m>``: each narrower class's mean squared z error against the global encoder on the labelled
    set's inputs (what its distillation minimises, on data the server holds; no labels, no test data), and
    ``z_var_<m>``, the global z's variance there (the scale of that error)."""
    import torch

    from fedmekt.learn.evaluation import chunk_bounds, encode_rows

    lab = server.labelled
    bounds = chunk_bounds(lab.segments, cfg.eval_chunk)
    out = {}
    for m in cfg.pair:
        teacher = encode_rows(server.model, lab.modalities[m], m, bounds, server.device)
        out[f"z_var_{m}"] = float(teacher.var())
        for name, cm in server.class_models().items():
            if cm.model is not server.model:
                student = encode_rows(cm.model, lab.modalities[m], m, bounds, server.device)
                out[f"z_mse_{name}_{m}"] = float(torch.mean((student - teacher) ** 2))
    return out


def main() -> int:
    from export.run_model import load_run_model
    from fedmekt.config import FederationConfig
    from fedmekt.learn.engine import ServerEngine
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a reproduce folder of a mixed fleet (its runs/*/ hold the models)")
    ap.add_argument("--class-distil-steps", type=int, required=True)
    ap.add_argument("--data-dir", type=Path, default=None)
    args = ap.parse_args()
    for run in sorted(p.parent for p in args.folder.glob("runs/*/run.json")):
        saved = load_run_model(run)
        cfg = FederationConfig.from_dict(saved.info.extra["config"])
        cfg = dataclasses.replace(cfg, hyper=dataclasses.replace(cfg.hyper, class_distil_steps=args.class_distil_steps))
        split = make_split(load_dataset(cfg.dataset, args.data_dir), cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                           clients=cfg.clients)
        server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test,
                              normalizer=split.normalizer)
        server.model.load_state_dict(saved.autoencoder.state_dict())
        server.head.load_state_dict(saved.head.state_dict())
        server.rounds_completed = saved.info.rounds_completed
        print(json.dumps({"seed": cfg.seed, "class_distil_steps": args.class_distil_steps, **server.class_scores(),
                          **z_errors(server, cfg)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
