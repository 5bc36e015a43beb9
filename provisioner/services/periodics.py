"""The scheduler's periodic passes (as Ironic's conductor/periodics.py): the housekeeping pass that repairs
what a killed process left (the reaper, lost tasks and waits, stranded nodes, reservations whose last
operation's handling never ran, reservations short of a spare), moves windows and rollouts on, turns new
events into webhook deliveries and queues their passes, and the periodic fleet syncs queued as tasks.
``manage.py scheduler`` runs them in a loop."""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.utils import timezone

from provisioner.drivers.ansible.runner import sweep_stale_spools
from provisioner.engine.reaper import reap, requeue_lost_operations, wake_overdue_waits
from provisioner.errors import IllegalTransition
from provisioner.lifecycle import Actor, process_event
from provisioner.models import LogLine, Node, Operation, Reservation, SiteNetwork
from provisioner.services import fast_track, signin, warm_pool, webhooks
from provisioner.services.outcomes import after_failure, failure_event, mark_reservation_active_if_ready
from provisioner.services.reservations import (
    add_spare,
    expire_reservations,
    settle_reservation,
    start_due_reservations,
)
from provisioner.services.rollouts import advance_running_rollouts
from provisioner.states import (
    OPEN_OPERATION_STATES,
    NodeEvent,
    NodeState,
    OperationKind,
    OperationState,
    ReservationState,
)

log = logging.getLogger("provisioner.scheduler")


def settle_finished_reservations() -> int:
    """Do what a finished operation's hook does for its reservation where that hook never ran (its worker
    died between marking the operation finished and running it): a reservation whose servers are all up
    turns active, a release whose wipes have all ended turns released. Returns how many changed."""
    ready = Q(
        allocations__active=True,
        allocations__node__state=NodeState.ACTIVE,
        allocations__node__reservation=F("pk"),
    )
    up = (
        Reservation.objects.filter(state__in=[ReservationState.PROVISIONING, ReservationState.WAITING])
        .annotate(
            held=Count("allocations", filter=Q(allocations__active=True)),
            ready=Count("allocations", filter=ready),
        )
        .filter(held=F("count"), ready=F("count"))
    )
    wiping = Operation.objects.filter(
        reservation=OuterRef("pk"),
        kind=OperationKind.RELEASE,
        state__in=OPEN_OPERATION_STATES,
    )
    wiped = Reservation.objects.filter(state=ReservationState.RELEASING).exclude(Exists(wiping))
    changed = 0
    for reservation in up:
        mark_reservation_active_if_ready(reservation)
        changed += 1
    for reservation in wiped:
        settle_reservation(reservation)
        changed += 1
    return changed


# The states an operation's steps move a node into and out of again (enrolling belongs to the inventory
# services, which run no operation).
OPERATION_STATES = (
    NodeState.DEPLOYING,
    NodeState.BURNING_IN,
    NodeState.RELEASING,
    NodeState.CLEANING,
    NodeState.WARMING,
)


def settle_stranded_nodes(now=None, actor: Actor | None = None) -> int:
    """Do what a failed operation's handling does for its node where that handling never ran: its worker
    died between marking the operation failed and running operation_failed, so the node sat deploying,
    burning in, releasing or cleaning with nothing running on it, and its reservation got no spare.

    Stranded means: in one of those states, no operation pending or running on it, and both its last
    operation's end and its last transition older than a lease TTL (a worker gets that long to run the
    handling itself). A failed last operation gets the engine's handling: quarantine after a failed burn-in,
    error otherwise, then a spare for its reservation or the release settled. A node left so after an
    operation that succeeded or was cancelled (whose handling never moves a node) goes to error the same
    way, for an operator, rather than stay there forever. Each node is claimed by its transition (compare
    and set on the state seen), so that a node is settled once. Returns how many were.
    """
    actor = actor or Actor.system("scheduler")
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.NEOCLOUD_LEASE_TTL_SECONDS)
    in_flight = Operation.objects.filter(node=OuterRef("pk"), state__in=OPEN_OPERATION_STATES)
    last = Operation.objects.filter(node=OuterRef("pk")).order_by("-created_at", "-pk").values("pk")[:1]
    stranded = (
        Node.objects.filter(state__in=OPERATION_STATES, state_changed_at__lt=cutoff)
        .exclude(Exists(in_flight))
        .annotate(last_operation=Subquery(last))
        .filter(last_operation__isnull=False)
    )
    settled = 0
    for node in stranded:
        op = Operation.objects.get(pk=node.last_operation)
        if op.finished_at is None or op.finished_at >= cutoff:
            continue
        if op.state == OperationState.FAILED:
            reason = op.error or "operation failed"
            event = failure_event(op, node, None)
        else:
            reason = f"left {node.state} with nothing running after its {op.kind} {op.state}"
            event = NodeEvent.FAIL
        if event is None:
            continue
        left_in = node.state
        try:
            process_event(node, event, actor=actor, reason=reason, operation=op, expected_state=node.state)
        except IllegalTransition:
            continue  # moved meanwhile (a release, another scheduler): that transition stands
        LogLine.objects.create(
            operation=op,
            level=LogLine.Level.WARNING,
            message=f"{node.name} was left {left_in} after this operation ended; moved it on: {reason}",
        )
        log.warning("node %s stranded after operation %s (%s): %s", node.name, op.pk, op.state, reason)
        after_failure(op, node, actor, reason)
        settled += 1
    return settled


def fill_waiting_reservations(actor: Actor | None = None) -> int:
    """Add spares to started reservations short of servers: those waiting for one, and those that took a
    server out but never asked for its spare (a worker or scheduler killed in between). Returns how many
    spares were added."""
    actor = actor or Actor.system("scheduler")
    filled = 0
    short = Reservation.objects.annotate(
        held=Count("allocations", filter=Q(allocations__active=True))
    ).filter(
        Q(state=ReservationState.WAITING)
        | Q(state__in=[ReservationState.PROVISIONING, ReservationState.ACTIVE], held__lt=F("count"))
    )
    for reservation in short:
        while add_spare(reservation, actor, why=None) is not None:
            filled += 1
    return filled


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
    counts["fast_track_expired"] = fast_track.expire()
    counts.update({f"warm_pool_{k}": v for k, v in warm_pool.refill().items()})
    counts["signin_failures_pruned"] = signin.prune()
    counts["ansible_leftovers_swept"] = sweep_stale_spools()
    # webhooks: new events into deliveries, passes queued for endpoints with deliveries due (no HTTP here)
    counts.update(webhooks.pump())
    return counts


def queue_periodic_syncs(last_queued: dict[str, float], *, power: bool = True) -> list[str]:
    """Queue the fleet power sync (every NEOCLOUD_POWER_SYNC_SECONDS), the NetBox inventory sync (every
    NEOCLOUD_NETBOX_SYNC_SECONDS, when set) and the network drift check (every NEOCLOUD_NETWORK_DRIFT_SECONDS,
    once a site's network is managed) once due; ``last_queued`` (task name -> monotonic time) is the
    caller's memory between passes. Returns the names of the tasks queued now."""
    from provisioner.services.tasks import check_network_drift, sync_fleet_power, sync_netbox_inventory

    periodic = [(sync_netbox_inventory, settings.NEOCLOUD_NETBOX_SYNC_SECONDS)]
    if power:
        periodic.insert(0, (sync_fleet_power, settings.NEOCLOUD_POWER_SYNC_SECONDS))
    if settings.NEOCLOUD_NETWORK_DRIFT_SECONDS and SiteNetwork.objects.exists():
        periodic.append((check_network_drift, settings.NEOCLOUD_NETWORK_DRIFT_SECONDS))
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
