"""The reaper: finds operations whose worker died (no heartbeat for a lease TTL) and resumes or fails them,
and pending operations whose worker task was lost (requeue_lost_operations), which it queues again.

django-tasks-db leaves a killed worker's task marked running forever, so recovery lives here, on our
Operation rows. A resumed operation restarts its current step, which is safe because steps are idempotent.
After NEOCLOUD_MAX_RECOVERIES resumptions the operation is failed and its node moved to ``error`` with the
reason, so that no node stays in a transient state; an operation whose cancellation was requested is
resumed regardless, since it only records that it was cancelled and leaves the node to the release.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from provisioner import events
from provisioner.engine.outcomes import OperationEnded, announce
from provisioner.engine.queue import enqueue, wake
from provisioner.engine.runner import operations_with_live_tasks
from provisioner.lifecycle import Actor
from provisioner.models import LogLine, Node, Operation, Step
from provisioner.states import OperationState, StepState

log = logging.getLogger(__name__)


def reap(now=None) -> dict[str, int]:
    """One pass. Returns counts of resumed and failed operations."""
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.NEOCLOUD_LEASE_TTL_SECONDS)
    counts = {"resumed": 0, "failed": 0}
    for op in Operation.objects.filter(state=OperationState.RUNNING, heartbeat_at__lt=stale_before):
        with transaction.atomic():
            # Conditional update: only one reaper wins the right to recover this operation.
            taken = Operation.objects.filter(
                pk=op.pk, state=OperationState.RUNNING, worker_id=op.worker_id, heartbeat_at=op.heartbeat_at
            ).update(
                # heartbeat_at: when it was handed back (requeue_lost_operations gives its task time to arrive)
                state=OperationState.PENDING,
                worker_id="",
                recoveries=op.recoveries + 1,
                heartbeat_at=now,
            )
            if taken != 1:
                continue
            dead_worker = op.worker_id
            Node.objects.filter(pk=op.node_id, lease_owner=dead_worker).update(
                lease_owner="", lease_operation=None, lease_expires_at=None
            )
            # the attempt its dead worker was running is not the step's failure: it does not count, so a
            # resumed step keeps its retries for real faults (NEOCLOUD_MAX_RECOVERIES bounds the resumptions)
            Step.objects.filter(operation=op, state=StepState.RUNNING, attempts__gt=0).update(
                state=StepState.PENDING, attempts=F("attempts") - 1
            )
            Step.objects.filter(operation=op, state=StepState.RUNNING).update(state=StepState.PENDING)
            # A cancelled operation resumes only to notice its cancellation (it runs no step), so it is
            # never given up on: failing it would move the node, now a release's, to error.
            if op.cancel_requested or op.recoveries + 1 <= settings.NEOCLOUD_MAX_RECOVERIES:
                LogLine.objects.create(
                    operation=op,
                    level=LogLine.Level.WARNING,
                    message=f"its worker stopped heartbeating; resuming at step {op.current_step}",
                )
                enqueue(op)
                counts["resumed"] += 1
                continue
        _give_up(op, dead_worker)
        counts["failed"] += 1
    return counts


_CHUNK = 500  # operations looked up at once (SQLite limits the parameters of one query)


def requeue_lost_operations(now=None) -> int:
    """Queue again the pending operations that no worker task will ever run. Returns how many.

    An operation's task is queued once the transaction that made it pending commits (runner.enqueue): a
    process that dies in between (after creating it, after handing it back to wait for a busy node, after
    resuming it here) leaves it pending with no task, and its node and reservation waiting forever.

    Lost means: pending for longer than a lease TTL (since it was created, or handed back: ``heartbeat_at``),
    with no task queued for it (however long the queue is: a task not yet picked up is not lost), and none
    that a worker picked up within that time (a task marked running for longer belongs to a dead worker).
    Each is claimed with a conditional update that restamps ``heartbeat_at``, so that one scheduler queues it
    once, and its new task gets the same grace before it could count as lost in turn.
    """
    if settings.TASKS["default"]["BACKEND"] != "django_tasks_db.DatabaseBackend":
        return 0  # the immediate backend runs an operation as it is queued: no task waits to be lost
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.NEOCLOUD_LEASE_TTL_SECONDS)
    pending = Operation.objects.filter(state=OperationState.PENDING).filter(
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, created_at__lt=cutoff)
    )
    candidates = list(pending.order_by("pk").values_list("pk", "heartbeat_at"))
    requeued = 0
    for start in range(0, len(candidates), _CHUNK):
        chunk = candidates[start : start + _CHUNK]
        live = operations_with_live_tasks([pk for pk, _ in chunk], started_since=cutoff)
        for pk, heartbeat_at in chunk:
            if pk in live:
                continue
            with transaction.atomic():
                taken = Operation.objects.filter(
                    pk=pk, state=OperationState.PENDING, heartbeat_at=heartbeat_at
                ).update(heartbeat_at=now)
                if taken != 1:
                    continue  # claimed, started or requeued by someone else meanwhile
                op = Operation.objects.get(pk=pk)
                message = "no worker task was left queued for this pending operation; queued it again"
                LogLine.objects.create(operation=op, level=LogLine.Level.WARNING, message=message)
                enqueue(op)
            log.warning("operation %s: %s", pk, message)
            requeued += 1
    return requeued


def wake_overdue_waits(now=None) -> int:
    """Queue the waiting operations whose recheck is overdue by more than a lease TTL and that no worker
    task will look at: the delayed task queued when they parked was lost (a process died between the park's
    commit and queuing it). Their step runs again and finds its event, waits on, or fails at its deadline.
    Returns how many."""
    if settings.TASKS["default"]["BACKEND"] != "django_tasks_db.DatabaseBackend":
        return 0
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.NEOCLOUD_LEASE_TTL_SECONDS)
    overdue = list(
        Operation.objects.filter(state=OperationState.WAITING, recheck_at__lt=cutoff)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    woken = 0
    for start in range(0, len(overdue), _CHUNK):
        chunk = overdue[start : start + _CHUNK]
        live = operations_with_live_tasks(chunk, started_since=cutoff)
        lost = [pk for pk in chunk if pk not in live]
        for pk in lost:
            LogLine.objects.create(
                operation_id=pk,
                level=LogLine.Level.WARNING,
                message="no worker task was left to look at this wait again; queued it",
            )
        woken += wake(lost)
    return woken


def _give_up(op: Operation, dead_worker: str) -> None:
    log.warning("operation %s: worker %s died, no resumption left", op.pk, dead_worker)
    message = (
        "its worker died and the operation was already resumed "
        f"{settings.NEOCLOUD_MAX_RECOVERIES} times; giving up"
    )
    with transaction.atomic():  # the operation.finished event commits with the final state
        Operation.objects.filter(pk=op.pk).update(
            state=OperationState.FAILED, finished_at=timezone.now(), error=message, error_code="worker_lost"
        )
        events.operation_finished(op.pk)
    LogLine.objects.create(operation=op, level=LogLine.Level.ERROR, message=message)
    step = Step.objects.filter(operation=op, index=op.current_step).first()
    announce(
        OperationEnded(
            Operation.objects.get(pk=op.pk),
            OperationState.FAILED,
            Actor.system("reaper"),
            step,
            None,
            message,
        )
    )
