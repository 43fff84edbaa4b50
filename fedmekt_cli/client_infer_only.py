"""``fedmekt client --infer-only``: the receive-only gateway of an inference-only install (no torch).

It keeps no sample store and never trains: it follows the federation's signed manifest and model
packages (edge_client/follower.py), installs verified packages into ``models/`` beside ``--store``
(default ``./fedmekt-<id>/models``, where a training client keeps them too) and publishes the
predictions of the model in service on ``clients/<id>/inference``.
"""

from __future__ import annotations

from pathlib import Path

from fedmekt_cli.broker_args import link_options, min_epoch
from fedmekt.errors import UserError


def run_infer_only(args) -> int:
    from edge_client.follower import FollowerOptions, InferenceGateway
    from edge_client.inference import ModelService
    from edge_client.sources import open_source, parse_modalities
    from export.package import load_public_key
    from fedmekt.wire.topics import Topics

    if args.public_key is None or not args.source:
        raise UserError("--infer-only needs --public-key (to verify the packages) and a --source (the samples)")
    if args.source.startswith("split:"):
        raise UserError("--infer-only needs raw samples; split: sources are normalised (use replay:, csv:, udp:, "
                        "serial:, …)")
    key = load_public_key(args.public_key)
    modalities = parse_modalities(args.modalities)
    opened = open_source(args.source, args.client_id, modalities, args.data_dir, args.speed)
    state_dir = args.store.parent if args.store is not None else Path(f"fedmekt-{args.client_id}")
    models = ModelService(state_dir / "models", key, args.federation, next(iter(modalities), None),
                          accept_hand_exported=args.accept_hand_exported, device_class=args.device_class)
    link = link_options(args, args.client_id, username=args.client_id,
                        session_topic=Topics(args.federation).session(args.client_id),
                        takeover="alert")  # a stolen login must not switch the gateway off
    gateway = InferenceGateway(args.broker, FollowerOptions(args.client_id, args.federation, models, key, link,
                                                            state_dir=state_dir, min_epoch=min_epoch(args)))
    published = gateway.run(opened.source)
    print(f"{args.client_id}: source ended; published {published} prediction(s)")
    return 0
