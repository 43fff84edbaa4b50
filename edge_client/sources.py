"""``--source`` specs of ``fedmekt client``: where a gateway's samples come from.

    split:CONFIG.toml          this client's partition of the config's split (already normalised;
                               how ``simulate`` feeds separate client processes)
    replay:DATASET[:UNIT]      recorded raw data of a dataset (sensors' ReplaySource); replay: alone takes
                               the dataset of your own in --data-dir (else the bundled demo)
    csv:PATH | json:PATH       lines ``t,<channels…>`` / {"t": .., "<modality>": [..]}
    stdin | stdin:json         the same lines piped in
    udp:[HOST:]PORT            the same lines as UDP datagrams (live: ingested in the background)
    serial:DEVICE              the same lines from a serial port (live)
    ble:WEARABLE[,FORMAT]      a Bluetooth LE wearable's GATT notifications (live; the [ble] extra): WEARABLE is
                               its address (AA:BB:CC:DD:EE:FF) or advertised name, FORMAT a preset (default
                               polar-h10-acc) or a TOML file describing the notification (docs/sensors.md)

Raw sources need ``--modalities name:channels,…`` (except replay) and are normalised with the
federation's statistics from the manifest before training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedmekt.errors import UserError
from sensors.partition import ClientPartition
from sensors.recording import Recording

LIVE = ("udp", "serial", "ble")


@dataclass
class OpenedSource:
    source: object  # a sensors.sources.Source
    live: bool  # never ends: ingest in the background while the agent runs
    normalised: bool  # samples are already z-scored with the federation's statistics


def parse_modalities(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, _, channels = item.partition(":")
        if not name or not channels.isdigit() or int(channels) < 1:
            raise UserError(f"--modalities must look like acce:3,gyro:3, got {text!r}")
        out[name] = int(channels)
    return out


def open_source(spec: str, client_id: str, modalities: dict[str, int], data_dir: Path | None,
                speed: float = math.inf) -> OpenedSource:
    from sensors.sources import ReplaySource, SerialSource, StdinSource, StreamFormat, UdpSource

    kind, _, arg = spec.partition(":")
    pace = None if math.isinf(speed) else speed
    if kind == "split":
        return OpenedSource(_split_source(Path(arg), client_id, data_dir, pace), live=False, normalised=True)
    if kind == "replay":
        from sensors.datasets import load_dataset, resolve_name

        name, _, unit = arg.partition(":")
        name = resolve_name(name or None, data_dir, "demo")
        recs = load_dataset(name, data_dir)
        if unit:
            recs = [r for r in recs if r.unit == unit]
            if not recs:
                raise UserError(f"no recording {unit!r} in dataset {name!r}")
        mods = list(modalities) or list(recs[0].modalities)
        missing = [m for m in mods if m not in recs[0].modalities]
        if missing:
            raise UserError(f"dataset {name!r} has no modality {missing[0]!r}")
        return OpenedSource(ReplaySource(recs, speed=pace, modalities=mods), live=False, normalised=False)
    if kind == "ble":
        return OpenedSource(_ble_source(arg, spec, modalities), live=True, normalised=False)
    if kind not in ("csv", "json", "stdin", "udp", "serial"):
        raise UserError(f"unknown source {spec!r}; use split:CONFIG, replay:DATASET, csv:PATH, json:PATH, stdin, "
                        "udp:PORT, serial:DEV or ble:WEARABLE")
    if not modalities:
        raise UserError(f"source {spec!r} needs --modalities name:channels,…")
    fmt = StreamFormat(modalities, codec="json" if kind == "json" or arg == "json" else "csv")
    if kind in ("csv", "json"):
        try:
            stream = open(arg, "rb")  # noqa: SIM115 - owned by the source for its lifetime
        except OSError as exc:
            raise UserError(f"cannot open {arg}: {exc.strerror}") from None
        return OpenedSource(StdinSource(fmt, stream=stream, unit=Path(arg).stem, name=kind, policy="block"),
                            False, False)
    if kind == "stdin":
        return OpenedSource(StdinSource(fmt, policy="block"), False, False)
    if kind == "udp":
        host, _, port = arg.rpartition(":")
        if not port.isdigit():
            raise UserError(f"udp source needs a port: udp:[HOST:]PORT, got {spec!r}")
        return OpenedSource(UdpSource(fmt, host=host or "0.0.0.0", port=int(port)), True, False)
    if kind == "serial" and arg:
        return OpenedSource(SerialSource(arg, fmt), True, False)
    raise UserError(f"unknown source {spec!r}; use split:CONFIG, replay:DATASET, csv:PATH, json:PATH, stdin, "
                    "udp:PORT, serial:DEV or ble:WEARABLE")


def ble_format(name: str):
    """A BLE notification format: a preset's name or a TOML file (``preset = …`` plus overrides, or every key)."""
    import tomllib

    from sensors.sources.ble_format import PRESETS, format_from_dict

    if name in PRESETS:
        return PRESETS[name]
    path = Path(name)
    if not path.suffix == ".toml":
        raise UserError(f"unknown BLE format {name!r}: use a preset ({', '.join(PRESETS)}) or a .toml file")
    try:
        return format_from_dict(tomllib.loads(path.read_text()))
    except OSError as exc:
        raise UserError(f"cannot read BLE format {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise UserError(f"BLE format {path}: {exc}") from None


def _ble_source(arg: str, spec: str, modalities: dict[str, int]):
    from sensors.sources.ble_format import DEFAULT_PRESET

    device, _, fmt_name = arg.rpartition(",") if "," in arg else (arg, ",", DEFAULT_PRESET)
    device = device.strip()
    if not device:
        raise UserError(f"ble source needs a wearable: ble:ADDRESS or ble:NAME[,FORMAT], got {spec!r}")
    fmt = ble_format(fmt_name.strip())
    if modalities and modalities != fmt.modalities:
        raise UserError(f"--modalities {modalities} disagree with the BLE format's {fmt.modalities}")
    try:
        from sensors.sources.ble import BleSource
    except ImportError:
        raise UserError("the ble: source needs the [ble] extra (pip install 'fedmekt-edge[ble]')") from None
    return BleSource(device, fmt)


def _split_source(config: Path, client_id: str, data_dir: Path | None, pace: float | None):
    from fedmekt.config import load_config
    from sensors.datasets import load_dataset
    from sensors.splits import make_split
    from sensors.sources import ReplaySource

    cfg = load_config(config)
    split = make_split(load_dataset(cfg.dataset, data_dir), cfg.pair, scheme=cfg.partition, seed=cfg.seed,
                       clients=cfg.clients)
    mine = [c for c in split.clients if c.client_id == client_id]
    if not mine:
        raise UserError(f"client id {client_id!r} is not in the split (ids c000…c{len(split.clients) - 1:03d})")
    c = mine[0]
    recs = partition_recordings(c, cfg.dataset, split.manifest["rate_hz"], split.label_names)
    return ReplaySource(recs, speed=pace, modalities=c.modalities)


def partition_recordings(client: ClientPartition, dataset: str, rate_hz: float,
                         label_names: tuple[str, ...]) -> list[Recording]:
    """A client's partition as recordings, one per segment (unique unit), so the store keeps the segments."""
    if not rate_hz > 0:  # the timestamps are row / rate_hz
        raise ValueError(f"partition_recordings needs the split's sampling rate, got rate_hz={rate_hz}")
    data, recs = client.data, []
    for i, (a, b) in enumerate(np.asarray(client.data.segments).reshape(-1, 2)):
        recs.append(Recording(dataset, f"{client.client_id}-seg{i}", client.client_id, rate_hz,
                              {m: data.modalities[m][a:b] for m in client.modalities},
                              np.asarray(data.labels[a:b], np.int64),
                              np.arange(a, b, dtype=np.float64) / rate_hz, label_names))
    return recs


def fill_store(path: Path, recordings: list[Recording], modalities: tuple[str, ...]):
    """Replay the recordings as fast as possible into a fresh SampleStore at ``path``."""
    from sensors.sources.replay import ReplaySource
    from sensors.store import SampleStore

    store = SampleStore(path)
    ingest(ReplaySource(recordings, speed=None, modalities=modalities), store)
    return store


def ingest(source, store) -> int:
    """Copy every batch of ``source`` into ``store`` until the source ends or is closed; samples copied."""
    n = 0
    with source.start():
        for batch in source:
            store.append(batch)
            n += len(batch)
    return n
