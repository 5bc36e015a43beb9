"""Creating, queuing and waking operations: what services need from the engine, importing no service.

Operations are queued on their site's queue (``site-<slug>``; ``default`` for a node on no site), so that a
worker at a site (``manage.py worker --queue-name site-<slug>``) drives that site's BMCs, PXE and Ansible
traffic, and a worker of ``--queue-name '*'`` serves a small installation whole.

A waiting operation (state ``waiting``) holds no worker: :func:`wake` queues it again when the event it
waits for arrives (the deploy agent's report, a cancellation), and a delayed task queued when it parked
looks at it again at its recheck time. Either way the step runs again and finds the event or waits on.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from provisioner.engine.registry import plan_for
from provisioner.models import Node, Operation, Step
from provisioner.states import OperationState

DEFAULT_QUEUE = "default"


def site_queue(site_slug: str | None) -> str:
    """The task queue of a site's operations."""
    return f"site-{site_slug}" if site_slug else DEFAULT_QUEUE


def queue_for(node_id: int) -> str:
    slug = Node.objects.filter(pk=node_id).values_list("rack__site__slug", flat=True).first()
    return site_queue(slug)


def create_operation(
    kind: str, node, *, reservation=None, requested_by=None, params=None, rollout=None
) -> Operation:
    """Create an operation with its planned steps (pending). The caller enqueues it after commit."""
    op = Operation.objects.create(
        kind=kind,
        node=node,
        reservation=reservation,
        requested_by=requested_by,
        params=params or {},
        rollout=rollout,
    )
    Step.objects.bulk_create(
        Step(
            operation=op,
            index=i,
            name=spec.name,
            max_attempts=spec.max_attempts,
            timeout_seconds=spec.timeout_seconds,
        )
        for i, spec in enumerate(plan_for(kind))
    )
    return op


def enqueue(op: Operation, *, delay: float = 0) -> None:
    """Queue the operation on its site's queue for a worker, once the current transaction commits."""
    from provisioner.engine.tasks import execute_operation

    queue = queue_for(op.node_id)
    op_id = op.pk

    def send() -> None:
        task = execute_operation.using(queue_name=queue)
        if delay:
            task = task.using(run_after=timezone.now() + timedelta(seconds=delay))
        task.enqueue(op_id)

    transaction.on_commit(send)


def wake(operation_ids: Iterable[int]) -> int:
    """The event a waiting operation waits for has arrived: queue it now. Returns how many were queued.

    One that a worker is running at this moment (it may be about to park) is marked ``wake_requested``, so
    that it does not park but looks again at once. Safe to call for any operation, in any state."""
    ids = list(operation_ids)
    if not ids:
        return 0
    now = timezone.now()
    woken = 0
    with transaction.atomic(savepoint=False):  # inside a caller's transaction: no savepoint round trips
        waiting = list(
            Operation.objects.filter(pk__in=ids, state=OperationState.WAITING).values_list("pk", "node_id")
        )
        for pk, node_id in waiting:
            # heartbeat_at: when it was handed back (requeue_lost_operations gives its task time to arrive)
            if (
                Operation.objects.filter(pk=pk, state=OperationState.WAITING).update(
                    state=OperationState.PENDING, heartbeat_at=now, recheck_at=None
                )
                == 1
            ):
                enqueue(Operation(pk=pk, node_id=node_id))
                woken += 1
        Operation.objects.filter(pk__in=ids, state=OperationState.RUNNING).update(wake_requested=True)
    return woken
