"""``fedmekt reproduce``: the paper's experiments in one process (no broker), with tables and plots.

Every seed draws its own split (test/proxy/labelled/client units) and runs every algorithm on it; results
go to ``--out`` in the layout of ``fedmekt.observe.report`` (tables and plots are refreshed after every run, so an
interrupted reproduction keeps what it finished; ``--jobs N`` runs N at once: ``fedmekt.experiment.run_pool``).
Each seed also gets the reference rows (``fedmekt.experiment.reference_rows``: raw features, labelled-only,
proxy-only, local-only, pooled, supervised-ceiling) on its split, and the tables carry every row's paired
per-seed difference against mmFedAvg, proxy-only and labelled-only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fedmekt.config import ALGORITHMS, SERVER_TEACHERS, WIRE_DTYPES

PAPER_ALGORITHMS = ALGORITHMS[:5]   # the default: the paper's five (heterofl is issue 22's baseline (b))
NONE = "none"   # --algorithms none: only the reference rows, e.g. to add rows to a reproduction already run
NEEDS_TRAIN = True  # torch: an inference-only install marks and refuses it (fedmekt_cli.main)


def register(subparsers) -> None:
    from fedmekt.config import FederationConfig  # light (no torch): the defaults the flags show

    p = subparsers.add_parser("reproduce", help="run the paper's comparison in one process and write tables/plots",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=None,
                   help="dataset name (default: the dataset of your own in --data-dir, else ur_fall)")
    p.add_argument("--pair", default=None, help="two modalities A-B (default: the dataset's pair, e.g. acce-depth)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5: seeds 0..4)")
    p.add_argument("--first-seed", type=int, default=0, help="seeds run are first..first+N-1 (default 0)")
    p.add_argument("--algorithms", "--algorithm", dest="algorithms", default=",".join(PAPER_ALGORITHMS),
                   help=f"comma-separated, of {', '.join(ALGORITHMS)} (default the paper's five; heterofl runs a "
                        f"mixed --fleet by width slices); {NONE!r}: the reference rows alone")
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--reference-rows", action=argparse.BooleanOptionalAction, default=True,
                   help="also compute the reference rows per seed: raw-features, labelled-only, proxy-only, "
                        "local-only, pooled, supervised-ceiling (default on)")
    p.add_argument("--references", default="", metavar="ROWS",
                   help="comma-separated subset of the reference rows to compute (default: all of them)")
    p.add_argument("--clients", default="10,10,10", help="A-only,B-only,A+B client counts (default 10,10,10)")
    p.add_argument("--per-round", type=int, default=9, help="clients sampled per round (default 9)")
    p.add_argument("--partition", choices=("paper", "subject"), default="paper")
    p.add_argument("--normalize", choices=("train", "unit", "none"), default="train",
                   help="z-score with client-pool statistics (default) or per run/subject as the paper")
    add_wire_option(p)
    p.add_argument("--layers", choices=("rep", "rep+hidden"), default=FederationConfig.layers,
                   help=f"FedMEKT embedding layers exchanged (default {FederationConfig.layers})")
    p.add_argument("--proxy-windows", type=int, default=None, help="FedMEKT proxy windows per round (default 48)")
    p.add_argument("--rep-size", type=int, default=None, metavar="R",
                   help="representation size r of every algorithm and reference row (default: the paper's for the "
                        "dataset and pair, 2 on UR Fall with acce, else 4)")
    p.add_argument("--faithful", action="store_true", help="keep the authors' O1-O3 loss choices")
    add_embedding_options(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="server-side device")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--client-workers", type=int, default=1, metavar="N",
                   help="train the clients in N processes (one per free core; same results, default 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="runs (and each reference row of a seed) at once, each in its own process (one per free "
                        "core; same results, default 1)")
    p.add_argument("--config", type=Path, default=None, help="TOML base config (flags override it)")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default FEDMEKT_DATA_DIR or ../shared/data)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<timestamp>-<dataset>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def add_wire_option(p) -> None:
    """``--wire-dtype``, shared by ``reproduce`` and ``simulate``."""
    p.add_argument("--wire-dtype", choices=("auto", *WIRE_DTYPES), default="auto",
                   help="auto: int8 for FedMEKT (codes with a float32 scale per channel, a quarter of float32's "
                        "bytes), float32 for the parameter baselines")


def add_embedding_options(p) -> None:
    """FedMEKT options shared by ``reproduce`` and ``simulate``."""
    p.add_argument("--kd", choices=("mse", "kl", "relational"), default=None,
                   help="FedMEKT distillation term: the paper's softmax KL (default), embedding MSE, or the "
                        "windows' similarity structure (relational: the server averages each client's)")
    p.add_argument("--server-teacher", choices=SERVER_TEACHERS, default=None,
                   help="what the FedMEKT server distils from: a linear head per client that predicts its "
                        "embedding from the global one (heads; heads-trust, the default, weights each client by how "
                        "well its head fits), or the clients' mean embedding (mean: the paper's)")
    p.add_argument("--embedding-noise", type=float, default=None, metavar="SIGMA",
                   help="std of Gaussian noise clients add to uploaded FedMEKT embeddings (default 0 = off)")
    p.add_argument("--proxy-delivery", choices=("auto", "once", "round"), default=None,
                   help="FedMEKT: the whole proxy set once, or only each round's windows with its knowledge "
                        "(default auto: whichever sends fewer bytes)")
    p.add_argument("--server-proxy-walk", action=argparse.BooleanOptionalAction, default=None,
                   help="FedMEKT server also reconstructs over the whole proxy set each epoch (no extra bytes)")
    p.add_argument("--local-step-budget", type=int, default=None, metavar="N",
                   help="most local training steps a client takes per round (default 32; 0 = walk the whole partition)")
    p.add_argument("--server-walk-step-budget", type=int, default=None, metavar="N",
                   help="most steps of the FedMEKT server's proxy walk per round (default 32; 0 = unbounded)")
    p.add_argument("--fleet", default=None, metavar="CLASSES",
                   help="device classes of the clients: one of small, standard (default), large; 'mixed' = a third "
                        "each (sorted clients dealt round-robin; FedMEKT or heterofl); or a comma list")


def apply_embedding_options(args, base: dict) -> None:
    """Write the flags of ``add_embedding_options`` that were given into a config dict."""
    if args.embedding_noise is not None:
        base["embedding_noise"] = args.embedding_noise
    if args.server_proxy_walk is not None:
        base["server_proxy_walk"] = args.server_proxy_walk
    if args.proxy_delivery is not None:
        base["proxy_delivery"] = args.proxy_delivery
    if args.fleet is not None:
        base["fleet"] = args.fleet
    hyper = {k: v for k, v in (("kd", args.kd), ("server_teacher", args.server_teacher),
                               ("local_step_budget", args.local_step_budget),
                                ("server_walk_step_budget", args.server_walk_step_budget)) if v is not None}
    if hyper:
        base["hyper"] = {**base.get("hyper", {}), **hyper}


def build_configs(args) -> list:
    """One FederationConfig per (seed, algorithm), from the optional TOML plus the flags."""
    from fedmekt_cli.spelling import parse_choices, parse_ints, parse_pair
    from fedmekt.config import FederationConfig, load_config
    from fedmekt.errors import UserError
    from sensors.datasets import dataset_info, resolve_name

    base = load_config(args.config).to_dict() if args.config else {}
    dataset = resolve_name(args.dataset, args.data_dir, "ur_fall")
    info = dataset_info(dataset, args.data_dir)
    pair = parse_pair(args.pair, info.default_pair, info.modalities)
    references_only = only_references(args)
    if references_only and not args.reference_rows:
        raise UserError("--algorithms none with --no-reference-rows leaves nothing to run")
    # with none, one config per seed carries the split and the reference rows (which set their own algorithm)
    algorithms = [ALGORITHMS[0]] if references_only else parse_choices(args.algorithms, ALGORITHMS, "--algorithms")
    if args.seeds < 1:
        raise UserError("--seeds must be >= 1")
    if args.client_workers < 1 or args.jobs < 1:
        raise UserError("--client-workers and --jobs must be >= 1")
    base.update(dataset=dataset, federation=f"reproduce-{dataset}", pair=list(pair),
                clients=list(parse_ints(args.clients, 3, "--clients")), per_round=args.per_round,
                rounds=args.rounds, partition=args.partition, wire_dtype=args.wire_dtype, layers=args.layers,
                faithful=args.faithful or base.get("faithful", False), device=args.device, threads=args.threads)
    if args.proxy_windows is not None:
        base["proxy_windows"] = args.proxy_windows
    if args.rep_size is not None:
        base["rep_size"] = args.rep_size
    apply_embedding_options(args, base)
    return [FederationConfig.from_dict({**base, "seed": seed, "algorithm": a})
            for seed in range(args.first_seed, args.first_seed + args.seeds) for a in algorithms]


def only_references(args) -> bool:
    """``--algorithms none``: the reference rows alone, no federated run."""
    return args.algorithms.strip() == NONE


def reference_names(text: str) -> tuple[str, ...]:
    """The reference rows ``--references`` names (all of them when empty); UserError for an unknown name."""
    from fedmekt_cli.spelling import parse_choices

    names = ("raw-features", "labelled-only", "proxy-only", "local-only", "pooled", "supervised-ceiling")
    return tuple(parse_choices(text, names, "--references")) if text else names


def run(args) -> int:
    configs = build_configs(args)  # every typo refused before torch is imported (seconds)
    from fedmekt_cli.run_record import refuse_used_folder

    out = args.out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{configs[0].dataset}"
    refuse_used_folder(out)
    names = reference_names(args.references)

    import torch
    from tqdm import tqdm

    from fedmekt_cli.run_record import RunRecord
    from fedmekt.experiment.run_pool import Job, run_jobs
    from fedmekt.observe.html_report import write_html_report
    from fedmekt.observe.report import write_report
    from sensors.datasets import load_dataset
    from sensors.splits import make_split, write_manifest

    dataset = configs[0].dataset
    torch.set_num_threads(args.threads)
    recordings = load_dataset(dataset, args.data_dir)
    splits, jobs, done = {}, [], {}
    references_only = only_references(args)
    algorithm = NONE if references_only else ",".join(sorted({c.algorithm for c in configs}))
    with RunRecord(out, "reproduce", algorithm=algorithm, dataset=dataset, rounds=configs[0].rounds) as record:
        for cfg in configs:
            if cfg.seed not in splits:
                splits[cfg.seed] = make_split(recordings, cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                                              clients=cfg.clients, normalize=args.normalize)
                write_manifest(splits[cfg.seed], out / f"split-seed{cfg.seed}.json")
                if args.reference_rows:   # one job per row: --jobs spreads a seed's rows over the workers
                    jobs += [Job(cfg, (name,)) for name in names]
            if not references_only:
                jobs.append(Job(cfg))
        bar = tqdm(total=len(jobs), desc="runs", disable=args.no_progress, unit="run")
        for i, result in run_jobs(jobs, splits, args.jobs, progress=not args.no_progress,
                                  client_workers=args.client_workers):
            done[i] = result
            order = sorted(done)   # the tables list runs in the order a single job would have run them
            results = [done[k] for k in order if not jobs[k].references]
            report = write_report(out, results, [rec for k in order if jobs[k].references for rec in done[k]])
            if not jobs[i].references:
                record.note(f"{result.name}: done ({len(results)} of {len(configs)} runs)", echo=False)
            bar.update()
        bar.close()
        print(report.read_text())
        html = "none (reference rows have no rounds to plot)" if references_only else write_html_report(out)
        record.note(f"results in {out}\nreport: {html}")
    return 0
