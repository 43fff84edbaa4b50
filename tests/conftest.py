"""Shared fixtures: the recorded datasets, a real mosquitto on a free port, process federations."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import pytest

from fedmekt.transport.broker import MosquittoProcess, start_mosquitto
from fedmekt_cli.main import OUR_LOGGERS
from federation_harness import ProcessFederation

REPO = Path(__file__).resolve().parents[1]

# A suite started in the background of a non-interactive shell (`make test &`, a CI runner's script) inherits SIGINT
# ignored, and every process it spawns would too: the tests that Ctrl-C a command would wait on an exit that never
# comes. With Python's handler here, spawned commands start with SIGINT at its default, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Prints the faults-injected / bad-inputs-rejected table at the end of the run.
pytest_plugins = ["fault_ledger"]


def _data_dir() -> Path | None:
    env = os.environ.get("FEDMEKT_DATA_DIR")
    if env:
        return Path(env)
    default = REPO.parent / "shared" / "data"
    return default if default.exists() else None


@pytest.fixture(autouse=True)
def _logging_restored():
    """An in-process ``fedmekt`` command points the root logger at its test's captured stderr (setup_logging):
    put the handlers and levels back, or a later test's log line goes to a closed file ("Logging error")."""
    loggers = [logging.getLogger(), *map(logging.getLogger, OUR_LOGGERS)]
    saved = [(lg, lg.handlers[:], lg.level) for lg in loggers]
    yield
    for lg, handlers, level in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the recorded datasets; in CI it always exists, so tests must not skip there."""
    path = _data_dir()
    if path is None or not path.exists():
        if os.environ.get("CI"):
            pytest.fail("FEDMEKT_DATA_DIR is not set and ../shared/data is missing")
        pytest.skip("recorded datasets not available (set FEDMEKT_DATA_DIR)")
    return path


@pytest.fixture
def mosquitto(tmp_path: Path) -> MosquittoProcess:
    """A fresh mosquitto 2.x for one test, on a free port (never the system one on 1883)."""
    broker = start_mosquitto(workdir=tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture
def no_retain(tmp_path: Path) -> MosquittoProcess:
    """A mosquitto with retained messages off: the protocol's state reaches a late client only by sync answers."""
    broker = start_mosquitto(extra_config="retain_available false", workdir=tmp_path / "mosquitto")
    yield broker
    broker.stop()


@pytest.fixture
def federation(tmp_path: Path):
    """Factory of :class:`ProcessFederation` (aggregator and clients as processes); all closed at teardown."""
    feds: list[ProcessFederation] = []

    def make(**kw) -> ProcessFederation:
        feds.append(ProcessFederation(tmp_path, **kw))
        return feds[-1]

    yield make
    for fed in feds:
        fed.close()
