"""Where ``reproduce``'s runs go: one after another in this process, or several at once in worker processes.

Every run of a reproduction (one algorithm on one seed's split, or that seed's reference rows) is independent:
its weights and random streams come from its config alone, and it runs in its config's thread count. Running
N of them at once therefore gives the same records as running them in turn (tests/test_core_reproduce.py),
in about 1/N of the time on N free cores.

Workers are started with ``spawn`` (torch and ``fork`` don't mix); what crosses to them is our own configs and
splits, never network input.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass

from fedmekt.config import FederationConfig
from fedmekt.experiment.in_process import RunResult, run_inprocess
from fedmekt.experiment.reference_rows import reference_finals
from sensors.partition import FederatedSplit


@dataclass(frozen=True)
class Job:
    """A federated run of ``cfg``, or (``references`` named) the reference rows of ``cfg``'s seed."""

    cfg: FederationConfig
    references: tuple[str, ...] = ()


def run_job(job: Job, split: FederatedSplit, progress: bool = False,
            client_workers: int = 1) -> RunResult | list[dict]:
    """A RunResult, or the reference rows' final records."""
    if job.references:
        return reference_finals(job.cfg, split, job.references)
    return run_inprocess(job.cfg, split, progress=progress, client_workers=client_workers)


def run_jobs(jobs: list[Job], splits: dict[int, FederatedSplit], workers: int = 1, progress: bool = False,
             client_workers: int = 1) -> Iterator[tuple[int, RunResult | list[dict]]]:
    """``(index, result)`` of every job as it finishes: in order with one worker (here, with per-round
    ``progress``), in order of completion with several (at most ``workers`` processes, each job's split sent
    to it)."""
    if workers == 1:
        for i, job in enumerate(jobs):
            yield i, run_job(job, splits[job.cfg.seed], progress, client_workers)
        return
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=mp.get_context("spawn")) as pool:
        pending = {pool.submit(run_job, job, splits[job.cfg.seed], False, client_workers): i
                   for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=pending.get):
                    yield pending.pop(future), future.result()
        finally:
            for future in pending:   # an error or Ctrl-C: what has not started never does
                future.cancel()
