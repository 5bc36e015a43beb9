"""A worker thread survives the database going away (PostgreSQL restarted): found by bench/soak.py, where a
``pg_ctl restart -m fast`` ended every thread of a worker with OperationalError and the process exited."""

from __future__ import annotations

import threading

from django.db import OperationalError

from provisioner.management.commands import worker


class FlakyLoop:
    """A worker loop whose database fails ``failures`` times before the loop ends normally."""

    worker_id = "test-0"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise OperationalError("the database system is shutting down")


def test_a_worker_thread_tries_again_when_the_database_fails_and_serves_once_it_is_back(monkeypatch) -> None:
    monkeypatch.setattr(worker, "DATABASE_RETRY_SECONDS", (0.0,))
    loop = FlakyLoop(failures=3)
    worker.serve_through_database_outages(loop, threading.Event())  # type: ignore[arg-type]
    assert loop.runs == 4


def test_a_stopping_worker_does_not_retry_the_database() -> None:
    stopping = threading.Event()
    stopping.set()
    loop = FlakyLoop(failures=1)
    worker.serve_through_database_outages(loop, stopping)  # type: ignore[arg-type]
    assert loop.runs == 0
