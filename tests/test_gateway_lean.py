"""A lean gateway process (edge_client.lean): the same trained bits without torch._dynamo, sympy and fx loaded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ROUND = """
import hashlib, json, sys
if sys.argv[1] == "lean":
    from edge_client.lean import lean_process
    applied = lean_process()
else:
    applied = {}
from fedmekt.learn.engine import ClientEngine, ServerEngine, client_view
from tests.core_support import tiny_config, tiny_split
split, cfg = tiny_split(), tiny_config()
server = ServerEngine(cfg, split.channels, split.label_names, split.proxy, split.labelled)
client = split.clients[-1]
engine = ClientEngine(cfg, client.client_id, client.modalities, split.channels, split.proxy)
digest = hashlib.sha256()
for r in range(2):
    plan = server.plan_round(r, [client.client_id])
    up = engine.train_round(plan, client_view(server.downstream(plan), client.modalities), client.data)
    for k in sorted(up):
        digest.update(k.encode() + up[k].tobytes())
state = engine.state_dict()
for k in sorted(state):
    digest.update(k.encode() + state[k].tobytes())
loaded = sorted(m for m in sys.modules if m in ("sympy", "torch.fx.experimental.symbolic_shapes", "torch._dynamo")
                and getattr(sys.modules[m], "__file__", None))
print(json.dumps({"applied": applied, "digest": digest.hexdigest(), "loaded": loaded}))
"""


def _round(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ROUND, mode], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lean_process_trains_bit_identically_without_dynamo():
    lean, plain = _round("lean"), _round("plain")
    assert lean["applied"] == {"mmap_threshold": True, "no_dynamo": True}
    assert lean["digest"] == plain["digest"]
    assert plain["loaded"] == ["sympy", "torch._dynamo", "torch.fx.experimental.symbolic_shapes"]  # via torch.optim
    assert lean["loaded"] == []
