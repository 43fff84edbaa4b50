"""The run counter that orders federation runs without clocks: issued and persisted by the aggregator
(fedmekt/run_counter.py), kept as a floor by each gateway (edge_client/trust.py), and round deadlines
counted from receipt (fedmekt/wire/manifest.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fedmekt.run_counter import epoch_file, next_epoch, read_epoch
from aggregator.service import Aggregator, AggregatorOptions
from edge_client.trust import TRUST_FILE, RunTrust
from fedmekt.errors import UserError
from fedmekt.wire import manifest as fedwire
from fedmekt.wire.codec import WireError
from fedmekt.wire.runs import new_run_id, run_epoch, run_order


def test_epochs_rise_by_one_and_survive_a_restart(tmp_path):
    assert [next_epoch(tmp_path, "f") for _ in range(3)] == [1, 2, 3]
    assert epoch_file(tmp_path, "f").read_text() == "3\n"
    assert next_epoch(tmp_path, "g") == 1  # one counter per federation
    assert read_epoch(epoch_file(tmp_path, "f")) == 3  # what a restarted aggregator reads
    assert next_epoch(tmp_path, "f", at_least=10) == 10  # --min-epoch after a lost state folder
    assert next_epoch(tmp_path, "f", at_least=2) == 11  # never lower than what was issued


def test_epochs_are_never_issued_twice_by_concurrent_aggregators(tmp_path):
    got: list[int] = []

    def issue() -> None:
        for _ in range(5):
            got.append(next_epoch(tmp_path, "f"))

    threads = [threading.Thread(target=issue) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(got) == list(range(1, 31))


def test_an_unwritable_state_folder_is_one_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="writable --state-dir"):
        next_epoch(tmp_path / "file" / "state", "f")


def test_a_damaged_counter_is_an_error_not_a_restart_at_one(tmp_path):
    epoch_file(tmp_path, "f").write_text("seven\n")
    with pytest.raises(UserError, match="not a number.*--min-epoch"):
        next_epoch(tmp_path, "f")


def test_the_counter_lives_beside_the_run_folder_unless_told(tmp_path):
    from core_support import tiny_config, tiny_split

    cfg, split = tiny_config("mmfedavg"), tiny_split()
    agg = Aggregator(cfg, split, "mqtt://127.0.0.1:1", AggregatorOptions(out=tmp_path / "runs" / "a"))
    assert agg.state_dir == (tmp_path / "runs").resolve()
    told = Aggregator(cfg, split, "mqtt://127.0.0.1:1", AggregatorOptions(out=tmp_path / "a", state_dir=tmp_path / "s"))
    assert told.state_dir == tmp_path / "s"


def test_run_ids_carry_their_epoch():
    assert run_epoch(new_run_id(42)) == 42
    assert run_epoch("1700000000000-0a0b0c0d") == run_epoch("") == 0
    assert run_order(new_run_id(1)) > run_order("9999999999999-0a0b0c0d")  # the earlier timed ids come first


def test_a_gateway_keeps_the_newest_epoch_it_followed(tmp_path):
    trust = RunTrust(tmp_path, "f")
    trust.check("1700000000000-0a0b0c0d")  # nothing trusted yet: any run
    trust.follow(new_run_id(3))
    trust.follow(new_run_id(2))  # never lowered
    again = RunTrust(tmp_path, "f")  # after a restart
    assert again.floor == 3
    again.check(new_run_id(3))
    again.check(new_run_id(4))
    for older in (new_run_id(2), "1700000000000-0a0b0c0d", ""):
        with pytest.raises(WireError, match="older than epoch 3"):
            again.check(older)
    assert RunTrust(tmp_path, "other").floor == 0  # per federation
    RunTrust(tmp_path, "other").follow(new_run_id(7))
    assert json.loads((tmp_path / TRUST_FILE).read_text()) == {"min_epoch": {"f": 3, "other": 7}}


def test_a_provisioned_floor_counts_and_a_damaged_file_falls_back_to_it(tmp_path):
    assert RunTrust(tmp_path, "f", min_epoch=5).floor == 5
    (tmp_path / TRUST_FILE).write_text('{"min_epoch": {"f": "many"}}')
    assert RunTrust(tmp_path, "f", min_epoch=5).floor == 5
    assert RunTrust(None, "f", min_epoch=2).floor == 2  # nothing on disk: memory only


def test_a_round_deadline_is_counted_from_receipt_and_bounded_by_the_remaining_expiry():
    ann = fedwire.Announcement.from_bytes(fedwire.Announcement("t", {}, 60.0).to_bytes())
    assert ann.deadline_from(1000.0) == 1060.0
    assert ann.deadline_from(1000.0, expiry=12) == 1012.0  # a retained copy with 12 s of its expiry left
    assert ann.deadline_from(1000.0, expiry=3600) == 1060.0
    for bad in (-1.0, float("inf"), 8 * 24 * 3600.0):
        with pytest.raises(WireError, match="timeout"):
            fedwire.Announcement.from_bytes(fedwire.Announcement("t", {}, bad).to_bytes())


def test_an_announcement_of_the_clocked_form_is_refused_with_its_reason():
    old = json.dumps({"federation": "t", "plan": {}, "deadline": 1.7e9, "done": False, "rounds": 0, "run": ""})
    with pytest.raises(WireError, match="unknown version"):
        fedwire.Announcement.from_bytes(old.encode())


def test_no_module_reads_the_wall_clock_for_rounds_or_runs():
    root = Path(__file__).resolve().parents[1]
    for path in ("aggregator/service.py", "edge_client/agent.py", "edge_client/follower.py", "fedmekt/wire/runs.py"):
        assert "time.time()" not in (root / path).read_text(), path


def test_provisioning_hands_a_device_the_federations_epoch(tmp_path):
    import argparse

    from fedmekt.provisioning import registry
    from fedmekt_cli.broker_args import min_epoch

    state = tmp_path / "state"
    for _ in range(4):
        next_epoch(state, "ward")
    registry.init(tmp_path / "op", ("localhost",))
    floors = registry.run_floors(("ward", "lab"), state, None)
    assert floors == {"ward": 4, "lab": 0}  # a federation that never ran: no floor yet
    creds = registry.add(tmp_path / "op", "c000", "device", ("ward",), min_epoch=floors) / "credentials.json"
    assert json.loads(creds.read_text())["min_epoch"] == {"ward": 4}   # a device login serves one federation
    assert "min_epoch" not in json.loads((registry.add(tmp_path / "op", "ops", "monitor") / "credentials.json")
                                         .read_text())

    def floor(fed: str, given: int | None = None, path: Path | None = creds) -> int:
        return min_epoch(argparse.Namespace(min_epoch=given, credentials=path, federation=fed))

    assert (floor("ward"), floor("lab"), floor("other"), floor("ward", 9), floor("ward", path=None)) == (4, 0, 0, 9, 0)
    assert registry.run_floors(("ward",), None, 7) == {"ward": 7}
    for bad in (lambda: registry.run_floors(("ward",), state, 3), lambda: registry.run_floors(("ward",), None, -1),
                lambda: registry.run_floors(("ward",), tmp_path / "nowhere", None), lambda: floor("ward", -1)):
        with pytest.raises(UserError):
            bad()


def test_the_aggregator_says_how_to_get_past_a_lost_run_counter(tmp_path, caplog):
    import logging

    from core_support import tiny_config, tiny_split
    from fedmekt.wire.sync import SyncRequest

    agg = Aggregator(tiny_config("mmfedavg", federation="f"), tiny_split(), "mqtt://127.0.0.1:1",
                     AggregatorOptions(out=tmp_path / "a"))
    agg.run_id, newer = new_run_id(1), new_run_id(6)
    with caplog.at_level(logging.ERROR, logger="aggregator"):
        agg.sync.note_newer_run("c000", SyncRequest(run=newer))
        agg.sync.note_newer_run("c001", SyncRequest(run=newer))  # said once per run
        agg.sync.note_newer_run("c002", SyncRequest(run=new_run_id(1), model=(new_run_id(1), 3)))  # not newer
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and f"c000 follows run {newer}" in said[0] and "--min-epoch" in said[0], said
