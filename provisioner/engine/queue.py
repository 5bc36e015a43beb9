"""Creating, queuing and waking operations: what services need from the engine, importing no service.

Operations are queued on their site's queue (``site-<slug>``; ``default`` for a node on no site), so that a
worker at a site (``manage.py worker --queue-name site-<slug>``) drives that site's BMCs, PXE and Ansible
traffic, and a worker of ``--queue-name '*'`` serves a small installation whole.

A waiting operation (state ``waiting``) holds no worker: :func:`wake` queues it again when the event it
waits for arrives (the deploy agent's report, a cancellation), and a delayed task queued when it parked
looks at it again at its recheck time. Either way the step runs again and finds the event or waits on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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


def queues_for(node_ids: Iterable[int]) -> dict[int, str]:
    """The task queue of each node's operations, in one query."""
    rows = Node.objects.filter(pk__in=list(node_ids)).values_list("pk", "rack__site__slug")
    return {pk: site_queue(slug) for pk, slug in rows}


def create_operation(
    kind: str, node, *, reservation=None, requested_by=None, params=None, rollout=None
) -> Operation:
    """Create an operation with its planned steps (pending). The caller enqueues it after commit."""
    return create_operations(
        kind, [node], reservation=reservation, requested_by=requested_by, params=params, rollout=rollout
    )[0]


def create_operations(
    kind: str, nodes: Sequence[Node], *, reservation=None, requested_by=None, params=None, rollout=None
) -> list[Operation]:
    """create_operation for each of ``nodes`` (in their order), in two statements whatever their number:
    one insert of the operations, one of all their steps. The caller enqueues them after commit."""
    ops = Operation.objects.bulk_create(
        Operation(
            kind=kind,
            node=node,
            reservation=reservation,
            requested_by=requested_by,
            params=dict(params or {}),
            rollout=rollout,
        )
        for node in nodes
    )
    plan = plan_for(kind)
    Step.objects.bulk_create(
        Step(
            operation=op,
            index=i,
            name=spec.name,
            max_attempts=spec.max_attempts,
            timeout_seconds=spec.timeout_seconds,
        )
        for op in ops
        for i, spec in enumerate(plan)
    )
    return ops


def enqueue(op: Operation, *, delay: float = 0) -> None:
    """Queue the operation on its site's queue for a worker, once the current transaction commits."""
    queue = queues_for([op.node_id]).get(op.node_id, DEFAULT_QUEUE)
    op_id = op.pk
    transaction.on_commit(lambda: _send([(op_id, queue)], delay=delay))


def enqueue_many(ops: Sequence[Operation], *, queues: Mapping[int, str] | None = None) -> None:
    """enqueue for each of ``ops``: one task each on its site's queue, all inserted in one statement once
    the current transaction commits. ``queues``: the queue of each op's node (by node id) where the caller
    knows them (``site_queue``); otherwise they are read in one query."""
    if not ops:
        return
    if queues is None:
        queues = queues_for(op.node_id for op in ops)
    tasks = [(op.pk, queues[op.node_id]) for op in ops]
    transaction.on_commit(lambda: _send(tasks))


def _send(tasks: list[tuple[int, str]], *, delay: float = 0) -> None:
    """Queue execute_operation(op_id) on each queue. With the database task backend the task rows are
    inserted in one statement, the rows its own enqueue would insert one at a time (with its signal sent
    for each); any other backend enqueues them one by one."""
    from django_tasks.signals import task_enqueued
    from django_tasks_db.backend import DatabaseBackend
    from django_tasks_db.models import DBTaskResult, get_date_max

    from provisioner.engine.tasks import execute_operation

    run_after = timezone.now() + timedelta(seconds=delay) if delay else None
    backend = execute_operation.get_backend()
    if not isinstance(backend, DatabaseBackend) or len(tasks) == 1:
        for op_id, queue in tasks:
            task = execute_operation.using(queue_name=queue)
            if run_after is not None:
                task = task.using(run_after=run_after)
            task.enqueue(op_id)
        return
    backend.validate_task(execute_operation)
    rows = DBTaskResult.objects.bulk_create(
        # what DatabaseBackend.enqueue writes (tests/engine/test_queue.py compares the two)
        DBTaskResult(
            id=backend._get_id(),
            args_kwargs={"args": [op_id], "kwargs": {}},
            priority=execute_operation.priority,
            task_path=execute_operation.module_path,
            queue_name=queue,
            run_after=run_after or get_date_max(),
            backend_name=backend.alias,
        )
        for op_id, queue in tasks
    )
    for row in rows:
        task_enqueued.send(type(backend), task_result=row.task_result)


def wake(operation_ids: Iterable[int]) -> int:
    """The event a waiting operation waits for has arrived: queue it now. Returns how many were queued.

    One that a worker is running at this moment (it may be about to park) is marked ``wake_requested``, so
    that it does not park but looks again at once. Safe to call for any operation, in any state."""
    ids = list(operation_ids)
    if not ids:
        return 0
    now = timezone.now()
    woken = []
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
                woken.append(Operation(pk=pk, node_id=node_id))
        enqueue_many(woken)
        Operation.objects.filter(pk__in=ids, state=OperationState.RUNNING).update(wake_requested=True)
    return len(woken)
