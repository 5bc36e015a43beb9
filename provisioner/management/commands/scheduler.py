"""The housekeeping loop (healthchecks.io style): reaper, reservation windows, spares, fleet power sync,
NetBox inventory sync (queued every NEOCLOUD_NETBOX_SYNC_SECONDS when set).

Run one next to the workers (``manage.py scheduler``); several are safe, since every action claims its
rows with conditional updates. Stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from provisioner.management.argtypes import positive_seconds
from provisioner.management.database import require_migrated_database
from provisioner.services.periodics import housekeeping_pass, queue_periodic_syncs

log = logging.getLogger("provisioner.scheduler")


class Command(BaseCommand):
    help = "Run the scheduler loop: reap dead operations, start and end reservation windows, sync power."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--interval", type=positive_seconds, default=1.0, help="seconds between passes")
        parser.add_argument("--once", action="store_true", help="one pass, then exit")
        parser.add_argument("--no-power-sync", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        require_migrated_database()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        last_queued: dict[str, float] = {}
        while not stop.is_set():
            close_old_connections()
            try:
                counts = housekeeping_pass()
                if any(counts.values()):
                    log.info("scheduler pass: %s", counts)
                queue_periodic_syncs(last_queued, power=not opts["no_power_sync"])
            except Exception:
                log.exception("scheduler pass failed; continuing")
            if opts["once"]:
                break
            stop.wait(opts["interval"])
