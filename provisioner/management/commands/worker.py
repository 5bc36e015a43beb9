"""A worker process that runs several operations at once: ``manage.py worker --threads N``.

Each thread is one django-tasks-db worker loop (claiming tasks with SKIP LOCKED on PostgreSQL, an exclusive
transaction on SQLite). Threads suit the work: an operation's active part is short blocking I/O (a BMC call,
an Ansible playbook run, an SSH session) and everything that waits on the outside world leaves the worker
(engine waits), so a handful of processes of a few threads serves hundreds of servers in flight.

``--queue-name site-<slug>`` serves one site (its operations are queued there, see
provisioner.engine.queue); ``'*'`` (the default) serves every queue, for a small installation. SIGTERM or
SIGINT: every thread finishes its current task and stops; a second signal exits at once.

A database that stops answering (PostgreSQL restarted, a failover, the network) does not end a thread: it
logs the error and tries again after a pause (``DATABASE_RETRY_SECONDS``, growing), so the worker serves
again once the database is back instead of exiting with a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, connection
from django_tasks_db.management.commands.db_worker import Worker

from provisioner.management.argtypes import positive_seconds

log = logging.getLogger("provisioner.worker")

# Pauses before a thread tries the database again after it failed, one after the other (then the last)
DATABASE_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {value}")
    return number


class Command(BaseCommand):
    help = "Run operations, several at once (threads), from one site's queue or all of them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--threads",
            type=_positive_int,
            default=settings.NEOCLOUD_WORKER_THREADS,
            help="tasks run at once by this process (default NEOCLOUD_WORKER_THREADS, 8)",
        )
        parser.add_argument(
            "--queue-name",
            default="*",
            help="queues to serve, comma-separated: site-<slug>, default, power, inventory; '*' all (default)",
        )
        parser.add_argument(
            "--interval",
            type=positive_seconds,
            default=1.0,
            help="seconds an idle thread waits between polls (default 1; the threads' polls are staggered, so "
            "the process looks every interval/threads seconds)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [q.strip() for q in options["queue_name"].split(",") if q.strip()]
        if not queues:
            raise ValueError("--queue-name names no queue")
        loops = [
            Worker(
                queue_names=queues,
                interval=options["interval"],
                batch=False,
                backend_name="default",
                startup_delay=True,
                max_tasks=None,
                worker_id=f"{os.getpid()}-{i}",
                excluded_queue_names=[],
            )
            for i in range(options["threads"])
        ]
        stopping = threading.Event()

        def stop(signum: int, frame: FrameType | None) -> None:
            if stopping.is_set():
                sys.exit(1)
            stopping.set()
            log.warning("%s: finishing the current tasks, then stopping", signal.strsignal(signum))
            for loop in loops:
                loop.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

        def run(loop: Worker) -> None:
            try:
                serve_through_database_outages(loop, stopping)
            finally:
                connection.close()

        threads = [
            threading.Thread(target=run, args=(loop,), name=f"worker-{i}", daemon=True)
            for i, loop in enumerate(loops)
        ]
        log.info("worker: %d threads on queues %s", len(threads), ",".join(queues))
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            for thread in threads:
                thread.join(timeout=0.5)


def serve_through_database_outages(loop: Worker, stopping: threading.Event) -> None:
    """Run the worker loop; when the database fails under it, close the connection, pause and run it again,
    until the loop ends by itself (stopped) or ``stopping`` is set."""
    failures = 0
    while not stopping.is_set():
        try:
            loop.run()
            return
        except DatabaseError as exc:
            delay = DATABASE_RETRY_SECONDS[min(failures, len(DATABASE_RETRY_SECONDS) - 1)]
            failures += 1
            log.warning(
                "worker %s: the database failed (%s); trying again in %.1f s",
                loop.worker_id,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                delay,
            )
            connection.close()
            stopping.wait(delay)
