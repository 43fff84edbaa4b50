"""``fedmekt export``: build a signed ONNX model package from a finished run; ``fedmekt export keygen``.

torch/onnx are imported inside ``run`` only, so this module loads in an inference-only install.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fedmekt.errors import UserError

KEY_ENV = "FEDMEKT_SIGNING_KEY"
TRAIN_NOTE = "needs the [train] extra, except keygen"


def NEEDS_TRAIN(args) -> bool:  # noqa: N802 (the attribute fedmekt_cli.main reads of every command)
    return args.export_command != "keygen"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export a run's global encoders to a signed ONNX package",
        description="Export every modality's global encoder + classifier head of a finished run to ONNX "
                    "(checked, parity-tested against PyTorch), optionally int8-quantized, and sign the package "
                    "manifest with the aggregator's Ed25519 key. `fedmekt export keygen` makes a key pair.",
    )
    p.add_argument("--run", type=Path, help="run folder, or a run id of `fedmekt runs` (looked up under runs/)")
    p.add_argument("--out", type=Path, help="package directory to create (must be absent or empty)")
    p.add_argument("--int8", action="store_true", help="int8 dynamic quantization (smaller files)")
    p.add_argument("--key", "--signing-key", dest="key", type=Path, default=os.environ.get(KEY_ENV),
                   help=f"Ed25519 private key (PEM) of the aggregator [env {KEY_ENV}]")
    p.add_argument("--stride", type=int, help="sliding-window stride recorded for gateways (default: window/2)")
    p.add_argument("--device-class", metavar="CLASS",
                   help="a mixed fleet's run: export the model of this device class (small, standard, large), "
                        "signed for that class's gateways only (default: the global model, for any gateway)")
    p.set_defaults(func=run)
    sub = p.add_subparsers(dest="export_command", metavar="keygen")
    k = sub.add_parser("keygen", help="create an Ed25519 signing key pair",
                       description="Write PREFIX.key (private, mode 0600; keep it on the aggregator) and PREFIX.pub "
                                   "(give it to every gateway: fedmekt infer/client --public-key).")
    k.add_argument("--out", type=Path, required=True, metavar="PREFIX", help="path prefix of the two key files")
    k.set_defaults(func=run_keygen)


def run_keygen(args: argparse.Namespace) -> int:
    from export.package import generate_keypair

    private, public = Path(f"{args.out}.key"), Path(f"{args.out}.pub")
    private.parent.mkdir(parents=True, exist_ok=True)
    generate_keypair(private, public)
    print(f"private key: {private}\npublic key:  {public}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.run is None or args.out is None:
        raise UserError("--run DIR and --out DIR are required (or use `fedmekt export keygen --out PREFIX`)")
    if args.key is None:
        raise UserError(f"no signing key: pass --key FILE or set {KEY_ENV} (create one with `fedmekt export keygen`)")
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        raise UserError(f"{args.out} exists and is not empty: name a new folder for the package")
    from export.package import load_private_key
    from fedmekt_cli.run_record import resolve_run

    key = load_private_key(args.key)   # a wrong key is refused before torch loads (seconds)
    run_dir = resolve_run(str(args.run), Path("runs"))
    try:
        from export.build import build_package
        from export.run_model import load_run_model
    except ModuleNotFoundError as exc:
        raise UserError(f"export needs the training extras ({exc.name} missing): pip install 'fedmekt-edge[train]'") from None
    model = load_run_model(run_dir, args.device_class)
    built = build_package(model, args.out, key, int8=args.int8, stride=args.stride, progress=True,
                          device_class=args.device_class or "")
    m = built.manifest
    of_class = f"device class {m.device_class}, " if m.device_class else ""
    print(f"{built.path}: round {m.round}, {of_class}{m.precision}, modalities {', '.join(m.modalities)}, "
          f"window {m.window}, stride {m.stride}, {built.size_bytes} bytes, signed")
    return 0
