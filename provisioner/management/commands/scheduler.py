"""The housekeeping loop (healthchecks.io style): reaper, reservation windows, spares, fleet power sync,
NetBox inventory sync (queued every NEOCLOUD_NETBOX_SYNC_SECONDS when set).

Run one next to the workers (``manage.py scheduler``); several are safe, since every action claims its
rows with conditional updates. Stops cleanly on SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from provisioner.drivers.ansible.runner import sweep_stale_spools
from provisioner.engine.reaper import reap, requeue_lost_operations, wake_overdue_waits
from provisioner.management.argtypes import positive_seconds
from provisioner.management.database import require_migrated_database
from provisioner.services import signin
from provisioner.services.hooks import (
    fill_waiting_reservations,
    settle_finished_reservations,
    settle_stranded_nodes,
)
from provisioner.services.reservations import expire_reservations, start_due_reservations
from provisioner.services.rollouts import advance_running_rollouts

log = logging.getLogger("provisioner.scheduler")


def housekeeping_pass() -> dict[str, int]:
    counts = dict(reap())
    counts["requeued"] = requeue_lost_operations()
    counts["waits_requeued"] = wake_overdue_waits()
    counts["started"] = start_due_reservations()
    counts["expired"] = expire_reservations()
    counts["stranded"] = settle_stranded_nodes()
    counts["spares"] = fill_waiting_reservations()
    counts["settled"] = settle_finished_reservations()
    counts["rollouts"] = advance_running_rollouts()
    counts["signin_failures_pruned"] = signin.prune()
    counts["ansible_leftovers_swept"] = sweep_stale_spools()
    return counts


def queue_periodic_syncs(last_queued: dict[str, float], *, power: bool = True) -> list[str]:
    """Queue the fleet power sync (every NEOCLOUD_POWER_SYNC_SECONDS) and the NetBox inventory sync (every
    NEOCLOUD_NETBOX_SYNC_SECONDS, when set) once due; ``last_queued`` (task name -> monotonic time) is the
    caller's memory between passes. Returns the names of the tasks queued now."""
    from provisioner.services.tasks import sync_fleet_power, sync_netbox_inventory

    periodic = [(sync_netbox_inventory, settings.NEOCLOUD_NETBOX_SYNC_SECONDS)]
    if power:
        periodic.insert(0, (sync_fleet_power, settings.NEOCLOUD_POWER_SYNC_SECONDS))
    queued = []
    now = time.monotonic()
    for task, every in periodic:
        name = task.name
        if every and (name not in last_queued or now - last_queued[name] >= every):
            last_queued[name] = now
            if _in_flight(task.module_path):
                # Workers are down or behind: one sync waiting is enough, and it reads the state when it
                # runs. Queuing one more each period would pile up syncs that then run back to back.
                log.info("%s not queued: the last one has not finished yet", name)
                continue
            task.enqueue()
            queued.append(name)
    return queued


def _in_flight(task_path: str) -> bool:
    """Whether a task of ``task_path`` is queued or running (database task backend; the immediate backend
    runs tasks as they are queued, so none ever is)."""
    if settings.TASKS["default"]["BACKEND"] != "django_tasks_db.DatabaseBackend":
        return False
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    return DBTaskResult.objects.filter(
        task_path=task_path, status__in=[TaskResultStatus.READY, TaskResultStatus.RUNNING]
    ).exists()


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
