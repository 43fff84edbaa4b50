"""Byte accounting: sizes are the real encoded wire messages; the measured options shrink them as expected."""

from __future__ import annotations

import numpy as np

from fedmekt.experiment.accounting import client_message_bytes, message_bytes
from fedmekt.learn.engine import ServerEngine
from fedmekt.experiment.in_process import run_inprocess
from fedmekt.wire.codec import encode
from tests.core_support import tiny_config, tiny_split


def test_message_bytes_is_the_encoded_frame_size():
    t = {"emb/a/z": np.ones((6, 8, 2), np.float32), "emb/a/h": np.ones((6, 8, 8), np.float32)}
    frames = encode(t, "float16", federation="demo", round_=0, sender="c000", kind="upload")
    assert message_bytes(t, "float16") == sum(len(f) for f in frames)
    assert message_bytes({}, "float32") == 0


def test_options_shrink_fedmekt_messages():
    ch = {"a": 3, "b": 2}
    f32 = dict(layers="rep+hidden", wire_dtype="float32")
    full = client_message_bytes(tiny_config("fedmekt-c", **f32), ch, ("a", "b"))
    half = client_message_bytes(tiny_config("fedmekt-c", **{**f32, "wire_dtype": "float16"}), ch, ("a", "b"))
    quarter = client_message_bytes(tiny_config("fedmekt-c", layers="rep+hidden"), ch, ("a", "b"))   # int8, "auto"
    rep = client_message_bytes(tiny_config("fedmekt-c", wire_dtype="float32"), ch, ("a", "b"))   # z only
    fewer = client_message_bytes(tiny_config("fedmekt-c", **f32, proxy_windows=3), ch, ("a", "b"))
    body = 2 * 6 * 8 * (2 + 8) * 4                       # 2 modalities × W × window × (r + hidden) float32
    assert body < full < body + 2048
    assert body / 4 < quarter < body / 4 + 2 * (2 + 8) * 4 + 2048   # codes, and a float32 scale per channel
    assert half < 0.6 * full and rep < 0.3 * full and fewer < 0.6 * full
    assert client_message_bytes(tiny_config("fedmekt-c", **f32), ch, ("a",)) < 0.6 * full


def test_run_rows_count_bytes_of_every_selected_client():
    split = tiny_split()
    cfg = tiny_config("mmfedavg", rounds=1)
    row = run_inprocess(cfg, split, progress=False).rows[0]
    holds = {c.client_id: c.modalities for c in split.clients}
    server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled, split.test)
    plan = server.plan_round(0, sorted(holds))
    expected = sum(client_message_bytes(cfg, split.channels, holds[c]) for c in plan.selected)
    assert row["bytes_up"] == expected and row["bytes_down"] == expected
