"""``fedmekt infer``: streaming activity recognition on a live source with onnxruntime only (no torch).

    fedmekt infer --model DIR --source SOURCE [--modality M] [--public-key FILE] [--broker URL [--credentials F]]

SOURCE is one of
  replay:DATASET[:UNIT]   recorded data (sensors' ReplaySource), e.g. replay:demo, replay:hapt:user02-exp03
  csv:PATH | json:PATH    a file of samples, one per line: ``t,<channels>`` or {"t": .., "<modality>": [..]}
  stdin | stdin:json      the same lines piped in (``sensor-tool | fedmekt infer --source stdin``)
  udp:[HOST:]PORT         the same lines as UDP datagrams
  serial:DEVICE           the same lines from a serial port (115200 baud)
  ble:WEARABLE[,FORMAT]   a Bluetooth LE wearable's notifications (the [ble] extra; docs/sensors.md)
Prints one JSON line per window: {"t": timestamp, "label": name, "confidence": p}; with --broker also
publishes them (TLS with mqtts://, a login with --credentials or --username/--password). To receive
and install the aggregator's packages as they come, run `fedmekt client --infer-only` instead.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from fedmekt_cli.broker_args import add_broker_args, link_options
from fedmekt.errors import UserError

PUBLIC_KEY_ENV = "FEDMEKT_PUBLIC_KEY"
log = logging.getLogger("fedmekt.infer")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "infer", help="on-device activity recognition from a model package (onnxruntime)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, help="model package directory, or a gateway model store")
    p.add_argument("--source", required=True, help="where samples come from (see above)")
    p.add_argument("--modality", help="which encoder to run (default: the package's first modality)")
    p.add_argument("--public-key", type=Path, default=os.environ.get(PUBLIC_KEY_ENV),
                   help=f"aggregator's Ed25519 public key; without it only file hashes are checked [env {PUBLIC_KEY_ENV}]")
    p.add_argument("--stride", type=int, help="samples between windows (default: the package's stride)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--speed", type=float, default=math.inf,
                   help="replay speed: 1 = real time, default: as fast as possible")
    p.add_argument("--data-dir", type=Path, help="dataset root for replay: sources")
    p.add_argument("--max-windows", type=int, help="stop after this many predictions")
    add_broker_args(p, required=False)
    p.add_argument("--mqtt", dest="broker", metavar="URL", help=argparse.SUPPRESS)   # older spelling of --broker
    p.add_argument("--topic", help="MQTT topic (default: fedmekt/<federation>/clients/<--client-id>/inference)")
    p.add_argument("--client-id", default="infer", help="MQTT client id, the login's name (default: infer)")
    p.set_defaults(func=run)


def open_source(spec: str, modality: str, channels: int, *, speed: float, data_dir: Path | None):
    """The sensors source for ``spec`` (parsed like ``fedmekt client --source``) delivering raw ``modality`` rows."""
    from edge_client.sources import open_source as open_client_source

    if spec.startswith("split:"):
        raise UserError("split: sources are already normalised; use replay:DATASET, csv:PATH, stdin, udp:… or serial:…")
    return open_client_source(spec, "infer", {modality: channels}, data_dir, speed=speed).source


def run(args: argparse.Namespace) -> int:
    from edge_client.inference import StreamingRecognizer
    from export.package import PackageError, load_public_key

    key = load_public_key(args.public_key) if args.public_key else None
    if key is None:
        log.warning("no --public-key: the package signature is NOT checked (hashes are)")
    try:
        recognizer = StreamingRecognizer.open(args.model, key, args.modality, stride=args.stride, threads=args.threads)
    except PackageError as exc:
        raise UserError(f"refused model package {args.model}: {exc}") from None
    manifest = recognizer.package.manifest
    log.info("round %d %s model, %s encoder, window %d, stride %d", manifest.round, manifest.precision,
             recognizer.modality, recognizer.window, recognizer.stride)
    source = open_source(args.source, recognizer.modality, recognizer.entry.channels, speed=args.speed,
                         data_dir=args.data_dir)
    link, topic = _mqtt_link(args, manifest.federation) if args.broker else (None, "")
    count = 0
    try:
        with source:
            for batch in source:
                lines = [p.to_json() for p in recognizer.feed(batch)]
                if args.max_windows is not None:
                    lines = lines[: args.max_windows - count]
                if lines:
                    sys.stdout.write("\n".join(lines) + "\n")
                    sys.stdout.flush()
                    if link is not None:
                        link.publish_all([(topic, line.encode()) for line in lines])
                count += len(lines)
                if args.max_windows is not None and count >= args.max_windows:
                    break
    finally:
        if link is not None:
            link.close()
    rejected = sum(source.stats.rejected.values())
    if rejected and not source.stats.accepted:
        raise UserError(f"no sample of {args.source} could be read: {rejected} malformed "
                        f"({', '.join(f'{n} {why}' for why, n in source.stats.rejected.most_common())}); lines must be "
                        f"t,<{recognizer.entry.channels} {recognizer.modality} channels>. A recording in the kit's "
                        "generic format (docs/sensors.md) replays with --source replay:DATASET[:UNIT] --data-dir DIR")
    if rejected:
        print(f"fedmekt infer: {rejected} malformed samples skipped ({dict(source.stats.rejected)})", file=sys.stderr)
    return 0


def _mqtt_link(args: argparse.Namespace, federation: str) -> tuple:
    """A connected MqttLink and the topic predictions go to."""
    from fedmekt.transport.mqtt import MqttLink
    from fedmekt.wire.topics import Topics

    link = MqttLink(args.broker, link_options(args, args.client_id, username=args.client_id)).connect()
    return link, args.topic or Topics(federation).inference(args.client_id)
