"""What leaves a device: a recorder sees every byte each client publishes during a federation.

The federation runs as real processes through mosquitto with the shipped TLS + password +
ACL configuration (so these tests also show that a secured federation completes its
rounds). A ``monitor`` user subscribed to ``fedmekt/<fed>/#`` from before the first client
starts records every message. Then:

* clients published only presence (``status``), sync requests and uploads, nothing else;
* every upload decodes to exactly the embedding tensors the round needs for the
  modalities the client holds (names, shapes, float32), with the client's own id as sender;
* no row of any client's private samples (its on-device store) appears anywhere in any
  byte a client published, as float32 or float16, at any byte offset. A positive control
  shows the same search finds private rows when they are smuggled into an upload.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from fault_ledger import record
from federation_harness import ProcessFederation
from fedmekt.config import load_config
from fedmekt.wire.chunks import Reassembler
from fedmekt.wire.codec import WireLimits, decode_body, encode, parse_frame
from fedmekt.wire.manifest import Status
from fedmekt.wire.sync import SyncRequest

pytestmark = [pytest.mark.slow, pytest.mark.broker]
MULT = np.uint64(0x9E3779B97F4A7C15)


def _row_keys(rows: np.ndarray) -> np.ndarray:
    """A 64-bit key per row of raw words (uint16/uint32 [n, C]): a fast pre-filter before exact comparison."""
    w = rows.astype(np.uint64)
    mult = (np.arange(1, rows.shape[1] + 1, dtype=np.uint64) * MULT) | np.uint64(1)
    with np.errstate(over="ignore"):
        return (w * mult).sum(axis=1, dtype=np.uint64)


def private_rows_found(payload: bytes, private: np.ndarray) -> int:
    """How many windows of ``payload`` (any byte offset) equal a row of ``private`` [n, C] as float32 or float16."""
    found = 0
    for dtype, word in ((np.float32, np.uint32), (np.float16, np.uint16)):
        rows = np.ascontiguousarray(private.astype(dtype)).view(word)
        rows = rows[np.any(rows != 0, axis=1)]  # an all-zero row would match any zero padding
        if rows.size == 0:
            continue
        keys = _row_keys(rows)
        size, c = np.dtype(word).itemsize, rows.shape[1]
        for offset in range(size):
            n = (len(payload) - offset) // size
            if n < c:
                continue
            words = np.frombuffer(payload, dtype=word, count=n, offset=offset)
            windows = np.lib.stride_tricks.sliding_window_view(words, c)
            hits = np.flatnonzero(np.isin(_row_keys(windows), keys))
            for h in hits:  # exact check of the candidates
                found += int(np.any(np.all(rows == windows[h], axis=1)))
    return found


@pytest.fixture(scope="module")
def secured_run(tmp_path_factory):
    """A 3-round federation over TLS with passwords and the ACL; returns (federation, recorded messages)."""
    fed = ProcessFederation(tmp_path_factory.mktemp("privacy"), rounds=3, round_timeout=30.0, secure=True)
    try:
        fed.start_all()
        fed.run_to_end(timeout=300)
        yield fed, fed.recorder.snapshot()
    finally:
        fed.close()


def _client_messages(fed, messages):
    """Messages on the clients' topics, less the aggregator's sync replies (``clients/<id>/reply/…``: only the
    aggregator's login may write there, the shipped ACL test checks it)."""
    prefix = f"fedmekt/{fed.federation}/clients/"
    return [(t, p) for _, t, p in messages if t.startswith(prefix) and t.split("/")[4:5] != ["reply"]]


def test_secured_federation_completes_every_round(secured_run):
    fed, _ = secured_run
    rows = [json.loads(line) for line in (fed.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(fed.rounds))
    assert all(r["absorbed"] == r["selected"] > 0 for r in rows), [(r["selected"], r["absorbed"]) for r in rows]
    assert "discarded upload" not in fed.log("aggregator")
    record("fault", "federation over TLS + passwords + ACL completes every round", lost=fed.rounds - len(rows))


def test_clients_publish_only_presence_and_expected_embeddings(secured_run):
    fed, messages = secured_run
    cfg = load_config(fed.config)
    r, hidden, n, w = cfg.resolved_rep_size(), cfg.hidden, cfg.proxy_windows, cfg.window
    held: dict[str, tuple[str, ...]] = {}
    uploads: dict[tuple[str, int], Reassembler] = defaultdict(lambda: Reassembler(WireLimits()))
    decoded = 0
    for topic, payload in _client_messages(fed, messages):
        parts = topic.split("/")
        cid, kind = parts[3], parts[4]
        assert cid in fed.client_ids, topic
        if kind == "status" and len(parts) == 5:
            status = Status.from_bytes(payload)
            assert status.state in ("online", "offline") and set(status.modalities) <= set(cfg.pair)
            held[cid] = tuple(m for m in cfg.pair if m in status.modalities)
            continue
        if kind == "session" and len(parts) == 5:  # the session token: 32 random hex digits
            assert len(payload) == 32 and all(c in b"0123456789abcdef" for c in payload), topic
            continue
        if kind == "sync" and len(parts) == 5:  # what it holds, asked for after each connect
            SyncRequest.from_bytes(payload)
            continue
        assert kind == "upload" and len(parts) == 7, f"a client published on {topic}"
        header, body = parse_frame(payload)
        assert header.sender == cid and header.kind == "upload" and header.round == int(parts[5])
        done = uploads[(cid, header.round)].add_parsed(header, body)
        if done is None:
            continue
        tensors = decode_body(done.header, done.body)
        expected = {f"emb/{m}/{layer}": (n, w, size) for m in held[cid]
                    for layer, size in (("z", r), ("h", hidden))[: 2 if cfg.layers == "rep+hidden" else 1]}
        assert {k: v.shape for k, v in tensors.items()} == expected, (cid, header.round)
        assert all(v.dtype == np.float32 for v in tensors.values())
        decoded += 1
    rows = [json.loads(line) for line in (fed.out / "metrics.jsonl").read_text().splitlines()]
    assert decoded == sum(r["absorbed"] for r in rows)  # every upload seen, and each was an embedding upload


def test_no_private_sample_leaves_a_device(secured_run):
    from sensors.store import SampleStore

    fed, messages = secured_run
    private = {}
    for cid in fed.client_ids:
        with SampleStore(fed.store(cid)) as store:
            part = store.read_partition()
        private[cid] = part.modalities
        assert sum(len(x) for x in part.modalities.values()) > 1000  # there was private data to leak
    published = defaultdict(int)
    for topic, payload in _client_messages(fed, messages):
        published[topic.split("/")[3]] += len(payload)
        for cid, mods in private.items():  # neither its own nor (relayed) anybody else's samples
            for m, x in mods.items():
                assert private_rows_found(payload, x) == 0, f"{topic} carries private {m} rows of {cid}"
    assert set(published) == set(fed.client_ids)
    samples = sum(len(x) for mods in private.values() for x in mods.values())
    record("privacy", "private sample rows searched for in every published byte", tried=samples, handled=samples)


def test_leak_detector_finds_smuggled_private_rows(secured_run):
    """Positive control: private rows hidden inside an otherwise valid upload are found (fp32 and fp16)."""
    from sensors.store import SampleStore

    fed, _ = secured_run
    cid = fed.client_ids[0]
    with SampleStore(fed.store(cid)) as store:
        x = next(iter(store.read_partition().modalities.values()))
    window = x[100:124]
    for dtype in ("float32", "float16"):
        frames = encode({"emb/acce/z": np.random.default_rng(0).standard_normal((8, 24, 4)).astype(np.float32),
                         "smuggled": window}, dtype, federation=fed.federation, round_=0, sender=cid, kind="upload")
        assert private_rows_found(b"".join(frames), x) >= len(np.unique(window, axis=0)) - 1, dtype
