"""Re-derive the deployed model of finished ``fedmekt reproduce`` runs under another deploy recipe, without
rerunning the federations (issue 19 §3).

The deployed model depends only on a run's final global model and head, the seed's split and the recipe
(``Hyper.deploy_*``, fedmekt/learn/deploy.py), never the other way round: the federation is the same whatever the
recipe. So for each federated run of ``RUNS`` this rebuilds the seed's split, loads the run's final model into a
``ServerEngine`` of the run's config with the recipe's fields, and takes ``final_evaluation()`` — exactly what
``fedmekt reproduce`` with those defaults computes at the end of the run (checked here: the probe figures must be
the original's, bit for bit, or the script stops). It writes ``OUT`` (final.jsonl with the new ``deployed_*``
figures, metrics.jsonl, every run's model with its new deployed model) and renders the report there.

    .venv/bin/python scripts/redeploy_runs.py RUNS OUT --hyper '{"deploy_rounds": 100}' [--normalize train]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="a reproduce output folder (final.jsonl, metrics.jsonl, runs/)")
    parser.add_argument("out", type=Path, help="the new folder (must not exist)")
    parser.add_argument("--hyper", default="{}", help="JSON of the Hyper deploy_* fields of the recipe")
    parser.add_argument("--normalize", default="train", help="the --normalize the runs were reproduced with")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()

    import safetensors.numpy
    import torch

    from fedmekt.artifacts import FINAL_MODEL, read_run_info, tensor_bytes
    from fedmekt.config import FederationConfig
    from fedmekt.learn.engine import ServerEngine
    from fedmekt.observe.report import FINAL, _jsonl, read_jsonl, render_report
    from sensors.datasets import load_dataset
    from sensors.splits import make_split

    recipe = json.loads(args.hyper)
    if not all(k.startswith(("deploy_", "lr_deploy")) for k in recipe):
        sys.exit(f"redeploy_runs: error: --hyper may set deploy_* fields only, got {sorted(recipe)}")
    if args.out.exists():
        sys.exit(f"redeploy_runs: error: {args.out} exists")
    torch.set_num_threads(1)
    finals = read_jsonl(args.runs / FINAL)
    shutil.copytree(args.runs, args.out)
    recordings: dict = {}
    for f in finals:
        if f.get("reference"):
            continue
        run_dir = args.out / "runs" / f["run"]
        info = read_run_info(run_dir)
        cfg = FederationConfig.from_dict(info.extra["config"])
        cfg = replace(cfg, hyper=replace(cfg.hyper, **recipe))
        if cfg.dataset not in recordings:
            recordings[cfg.dataset] = load_dataset(cfg.dataset, args.data_dir)
        split = make_split(recordings[cfg.dataset], cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                           clients=cfg.clients, normalize=args.normalize)
        server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
        state = safetensors.numpy.load_file(run_dir / FINAL_MODEL)
        server.model.load_state_dict({k[len("autoencoder."):]: torch.from_numpy(v) for k, v in state.items()
                                      if k.startswith("autoencoder.")})
        server.head.load_state_dict({k[len("head."):]: torch.from_numpy(v) for k, v in state.items()
                                     if k.startswith("head.")})
        server.rounds_completed = info.rounds_completed
        ev = server.final_evaluation()
        differ = [k for k in f if k.startswith("probe_f1") and f[k] != ev[k]]
        if differ:
            sys.exit(f"redeploy_runs: error: {f['run']}: the reloaded model's probe differs ({differ}): not this "
                     "split or model")
        f.update({k: v for k, v in ev.items() if k.startswith("deployed_") or k == "deploy_steps"})
        f["deploy_recipe"] = recipe
        kept = {k: v for k, v in state.items() if not k.startswith("deployed.")}
        (run_dir / FINAL_MODEL).write_bytes(tensor_bytes({**kept, **server.deployed().state()}))
        print(f["run"], {k: round(v, 4) for k, v in ev.items() if k.startswith("deployed_f1_weighted")},
              "steps", ev["deploy_steps"], flush=True)
    (args.out / FINAL).write_bytes(_jsonl(finals))
    print(render_report(args.out).read_text())


if __name__ == "__main__":
    main()
