"""What signing the control plane costs: Ed25519 over a digest of topic and body, per message.

Measures, for the demo federation's real messages (its manifest, one round announcement and one
round's global knowledge), the time to sign (aggregator) and to open and verify (client), side by
side with what a client already spends on the same messages (JSON parsing of the announcement,
the strict codec's decode of the global knowledge), and the bytes the envelope adds.

Run: .venv/bin/python bench/bench_control_signing.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from fedmekt.config import FederationConfig  # noqa: E402
from fedmekt.learn.engine import ServerEngine  # noqa: E402
from fedmekt.wire import manifest as fedwire  # noqa: E402
from fedmekt.wire.chunks import Reassembler  # noqa: E402
from fedmekt.wire.codec import decode_body, encode  # noqa: E402
from fedmekt.wire.runs import new_run_id  # noqa: E402
from fedmekt.wire.signing import open_signed, sign  # noqa: E402
from fedmekt.wire.topics import Topics  # noqa: E402
from sensors.datasets import load_dataset  # noqa: E402
from sensors.splits import make_split  # noqa: E402


def per_call_us(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()

    cfg = FederationConfig(federation="demo", device="cpu")
    split = make_split(load_dataset("demo"), cfg.pair, seed=cfg.seed, clients=cfg.clients)
    topics = Topics(cfg.federation)
    manifest, _ = fedwire.build(cfg, split, run=new_run_id(1))
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = server.plan_round(0, [c.client_id for c in split.clients])
    frames = encode(server.downstream(plan), cfg.wire_format, federation=cfg.federation, round_=0,
                    sender=fedwire.AGGREGATOR_ID, kind="global")
    ann = fedwire.Announcement(cfg.federation, plan.to_json(), 600.0, run=manifest.run,
                               nonce="0" * 16, global_sha256="0" * 64).to_bytes()

    key = Ed25519PrivateKey.generate()
    public = key.public_key()

    def decode_global():
        rx = Reassembler()
        done = [c for c in (rx.add(f) for f in frames) if c is not None][0]
        decode_body(done.header, done.body)

    messages = [("manifest", topics.proxy_manifest, manifest.to_bytes(), fedwire.FederationManifest.from_bytes),
                ("announcement", topics.rounds, ann, fedwire.Announcement.from_bytes)]
    print(f"{'message':<14}{'bytes':>9}{'+envelope':>11}{'sign µs':>10}{'verify µs':>11}{'parse µs':>10}"
          f"{'verify/parse':>14}")
    for name, topic, payload, parse in messages:
        signed = sign(key, topic, payload)
        s = per_call_us(lambda: sign(key, topic, payload), args.repeat)
        v = per_call_us(lambda: open_signed(public, topic, signed), args.repeat)
        p = per_call_us(lambda: parse(payload), args.repeat)
        print(f"{name:<14}{len(payload):>9}{len(signed) - len(payload):>11}{s:>10.1f}{v:>11.1f}{p:>10.1f}"
              f"{v / p:>14.2f}")
    g = per_call_us(decode_global, max(10, args.repeat // 20))
    v = per_call_us(lambda: open_signed(public, topics.rounds, sign(key, topics.rounds, ann)), args.repeat)
    print(f"\nglobal knowledge of one round: {sum(map(len, frames))} B in {len(frames)} frame(s), decode {g:.0f} µs; "
          f"it is bound to the signed announcement by its sha256 (no signature of its own): the per-round "
          f"signature work (sign + verify of the announcement, {v:.0f} µs) is {v / g:.2f}x one decode")


if __name__ == "__main__":
    main()
