"""aggregator/backoff.py: who sits out, for how long, and that the record survives a resume (its row)."""

from __future__ import annotations

import json

import pytest

from aggregator.backoff import MAX_SIT_OUT, Backoff
from fedmekt.errors import UserError


def test_misses_while_online_escalate_and_an_upload_clears_them():
    b = Backoff()
    assert b.close(0, ["a", "b"], absorbed={"a"}, online={"a", "b"}) == {
        "b": "selected, online and no upload (1 round in a row): sits out 1 round"}
    assert b.candidates(1, ["a", "b", "c"]) == ["a", "c"]
    assert "no upload in its last 1 selected round" in b.sitting_out(1, ["b"])["b"]
    assert b.candidates(2, ["a", "b", "c"]) == ["a", "b", "c"]  # its round out is over
    b.close(2, ["b"], absorbed=set(), online={"b"})
    assert b.record["b"] == (2, 5)  # 2 in a row: rounds 4 and 5 (1-based) out
    for k in range(3, 10):
        b.close(100 * k, ["b"], absorbed=set(), online={"b"})
    assert b.record["b"] == (9, 900 + 1 + MAX_SIT_OUT)  # capped
    b.close(2000, ["b"], absorbed={"b"}, online={"b"})
    assert b.record == {}


def test_offline_clients_are_not_counted_and_nobody_left_draws_from_all():
    b = Backoff()
    assert list(b.close(0, ["a", "b"], absorbed=set(), online={"a"})) == ["a"]
    assert "b" not in b.record  # went offline (its Will came): a power cut is no misbehaviour
    assert b.candidates(1, ["a"]) == ["a"]  # better a doubtful client than no round


def test_the_record_travels_in_the_metrics_row():
    b = Backoff()
    b.close(3, ["x"], absorbed=set(), online={"x"})
    row = json.loads(json.dumps({"backoff": b.to_row()}))
    assert Backoff.from_row(row).record == b.record
    assert Backoff.from_row(None).record == {} and Backoff.from_row({"round": 1}).record == {}
    with pytest.raises(UserError, match="malformed backoff"):
        Backoff.from_row({"backoff": {"x": "nope"}})
