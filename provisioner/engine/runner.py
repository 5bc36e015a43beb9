"""Running an operation: claim it, hold the node's lease, run its steps in order, finish or fail it.

Every step is idempotent, so an operation interrupted anywhere (a killed worker, a lost lease) can be
resumed from its current step by any worker. Retryable errors are retried with exponential backoff up to
the step's attempt limit; a step that overruns its timeout is interrupted and counts as a retryable failure.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time

from django.conf import settings
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.db.models import Q
from django.utils import timezone

from provisioner import events
from provisioner.engine import steps as _steps  # noqa: F401 - registers the step functions
from provisioner.engine.context import StepCancelled, StepContext, WaitRequested
from provisioner.engine.locks import Heartbeat, node_task, park_lease
from provisioner.engine.outcomes import OperationEnded, announce
from provisioner.engine.queue import enqueue
from provisioner.engine.registry import STEPS
from provisioner.errors import BurnInFailed, IllegalTransition, NeocloudError, NodeLocked, StepTimeout
from provisioner.lifecycle import Actor
from provisioner.models import LogLine, Operation, Step
from provisioner.states import OperationState, StepState

log = logging.getLogger(__name__)

_WORKER_ID = f"{socket.gethostname()[:24]}:{os.getpid()}:{secrets.token_hex(3)}"
# How long an interrupted step (timeout, lost lease) gets to stop before the engine moves on. Longer than a
# driver takes to stop its own work once cancelled (a playbook: provisioner.drivers.ansible.runner.CANCEL_GRACE_SECONDS):
# retrying sooner would drive the node from two attempts at once.
STEP_STOP_GRACE_SECONDS = 40.0


def worker_id() -> str:
    """Who runs operations here: host, process and thread (a worker process runs several threads, each
    holding its own operations and leases)."""
    return f"{_WORKER_ID}:{threading.get_native_id()}"


def operations_with_live_tasks(operation_ids: list[int], *, started_since) -> set[int]:
    """Which of these operations have a worker task that will still run them: one queued (whenever it may
    run: a queue backed up for hours still holds it), or one a worker picked up since ``started_since``.

    A task marked running for longer than that is not counted: django-tasks-db leaves the task of a worker
    killed mid-run marked running forever. Reads the database task backend's rows for the tasks that
    :func:`enqueue` queues (the operation's id is their one positional argument)."""
    from django_tasks import TaskResultStatus
    from django_tasks_db.models import DBTaskResult

    from provisioner.engine.tasks import execute_operation

    if not operation_ids:
        return set()
    live = DBTaskResult.objects.filter(
        Q(status=TaskResultStatus.READY) | Q(status=TaskResultStatus.RUNNING, started_at__gte=started_since),
        task_path=execute_operation.module_path,
        args_kwargs__args__0__in=operation_ids,
    )
    return set(live.values_list("args_kwargs__args__0", flat=True))


class StepFailed(Exception):
    def __init__(self, step: Step | None, error: BaseException) -> None:
        super().__init__(str(error))
        self.step = step
        self.error = error


def claim(operation_id: int, owner: str) -> Operation | None:
    """Take an operation that is pending (or running under this same worker id), or waiting and due for
    its recheck (the delayed task queued when it parked). Conditional update."""
    now = timezone.now()
    updated = Operation.objects.filter(
        Q(state=OperationState.PENDING)
        | Q(state=OperationState.RUNNING, worker_id=owner)
        | Q(state=OperationState.WAITING, recheck_at__lte=now),
        pk=operation_id,
    ).update(state=OperationState.RUNNING, worker_id=owner, heartbeat_at=now, recheck_at=None)
    if updated != 1:
        return None
    op = Operation.objects.select_related("node", "reservation").get(pk=operation_id)
    if op.started_at is None:
        Operation.objects.filter(pk=op.pk).update(started_at=now)
    return op


def execute(operation_id: int, owner: str | None = None) -> str:
    """Run one operation to its end or to its next wait. Returns its final state, or 'waiting' (parked:
    an event or its recheck time queues it again), or 'skipped'/'deferred'."""
    owner = owner or worker_id()
    op = claim(operation_id, owner)
    if op is None:
        return "skipped"
    # customers read operation logs and audit actors: the worker's host and process stay in the operation row
    # (worker_id, operators) and the worker's own log, never in what a customer sees
    actor = Actor.system("engine")
    log.info("operation %s (%s of node %s) claimed by %s", op.pk, op.kind, op.node_id, owner)
    resumed = op.wait_for
    try:
        with node_task(op.node_id, owner, op) as heartbeat:
            if resumed:
                _log(op, None, f"{op.kind} of {op.node.name} resumed (was waiting for {resumed})")
            else:
                _log(op, None, f"{op.kind} started on {op.node.name}")
            while True:
                try:
                    _run_steps(op, actor, heartbeat)
                    break
                except _Parked as parked:
                    if _park(op, owner, parked.wait):
                        heartbeat.parked = True
                        return OperationState.WAITING
                    # the event came while the step ran: look again at once
    except NodeLocked as exc:
        # Another operation holds the node (e.g. a provision being cancelled): try again shortly.
        # heartbeat_at: when it was handed back (requeue_lost_operations gives its new task time to arrive)
        Operation.objects.filter(pk=op.pk, worker_id=owner).update(
            state=OperationState.PENDING, worker_id="", heartbeat_at=timezone.now()
        )
        _log(op, None, f"waiting: {exc}")
        enqueue(op, delay=2)
        return "deferred"
    except _LeaseLost:
        _log(op, None, "lease lost; another worker will resume this operation", LogLine.Level.WARNING)
        return "lost"
    except StepFailed as failure:
        _fail(op, failure, actor)
        return OperationState.FAILED
    except _Cancelled:
        _skip_unfinished_steps(op)
        _finish(op, OperationState.CANCELLED, "cancelled")
        announce(OperationEnded(Operation.objects.get(pk=op.pk), OperationState.CANCELLED, actor))
        return OperationState.CANCELLED
    except (_DatabaseLost, DatabaseError) as exc:
        # Not the node's fault and nothing can be recorded now (PostgreSQL restarting): stop, as a killed
        # worker would. The operation stays running with a heartbeat that no longer moves, so the reaper
        # resumes it at its step once the lease expires; the interrupted attempt does not count.
        log.warning(
            "operation %s: the database failed under it (%s); left for the reaper to resume", op.pk, exc
        )
        connection.close()
        return "lost"
    except Exception as exc:
        # A bug in the engine itself: fail the operation visibly rather than leave it "running".
        log.exception("operation %s crashed", op.pk)
        step = op.steps.filter(index=Operation.objects.get(pk=op.pk).current_step).first()
        _fail(op, StepFailed(step, exc), actor)
        return OperationState.FAILED
    _finish(op, OperationState.SUCCEEDED, "")
    announce(OperationEnded(Operation.objects.get(pk=op.pk), OperationState.SUCCEEDED, actor))
    return OperationState.SUCCEEDED


class _LeaseLost(Exception):
    pass


class _DatabaseLost(Exception):
    """A step's attempt ended on a database error (found by bench/soak.py: a PostgreSQL restart failed every
    operation in flight as an "internal error" and sent their nodes to error)."""


class _Cancelled(Exception):
    pass


class _Parked(Exception):
    def __init__(self, wait: WaitRequested) -> None:
        super().__init__(str(wait))
        self.wait = wait


def _park(op: Operation, owner: str, wait: WaitRequested) -> bool:
    """Leave the worker: the operation waits (no worker), its node's lease passes to the operation itself,
    and a delayed task looks at it again at its recheck time. False, with nothing changed, when an event
    arrived while the step ran (``wake_requested``): the caller runs the step again at once."""
    now = timezone.now()
    with transaction.atomic():
        parked = Operation.objects.filter(
            pk=op.pk, state=OperationState.RUNNING, worker_id=owner, wake_requested=False
        ).update(
            state=OperationState.WAITING,
            worker_id="",
            wait_for=wait.what,
            waiting_since=wait.since,
            wait_deadline=wait.deadline,
            recheck_at=wait.recheck_at,
        )
        if parked != 1:
            return False
        park_lease(op.node_id, owner, op.pk)
        enqueue(op, delay=max(0.0, (wait.recheck_at - now).total_seconds()))
    _log(
        op,
        None,
        f"waiting for {wait.what} (since {wait.since:%H:%M:%S}, at most until {wait.deadline:%H:%M:%S} UTC)",
    )
    return True


def _run_steps(op: Operation, actor: Actor, heartbeat: Heartbeat) -> None:
    for step in op.steps.order_by("index"):
        if step.state in (StepState.SUCCEEDED, StepState.SKIPPED):
            continue
        op.refresh_from_db()
        if op.cancel_requested:
            raise _Cancelled()
        _run_step(op, step, actor, heartbeat)
        Operation.objects.filter(pk=op.pk).update(current_step=step.index + 1)


def _run_step(op: Operation, step: Step, actor: Actor, heartbeat: Heartbeat) -> None:
    spec = STEPS[step.name]
    while True:
        if heartbeat.lost.is_set():
            raise _LeaseLost()
        # wake_requested is cleared before the step looks at the world: an event from now on is seen by
        # the step or stops it from parking (see _park)
        Operation.objects.filter(pk=op.pk).update(wake_requested=False)
        if step.state == StepState.WAITING:
            # the same attempt goes on where its wait left it (step.data)
            step.state = StepState.RUNNING
            step.save(update_fields=["state"])
        else:
            step.attempts += 1
            step.state = StepState.RUNNING
            step.started_at = timezone.now()
            step.error = step.error_code = ""
            step.data = {}
            step.save(update_fields=["attempts", "state", "started_at", "error", "error_code", "data"])
            _log(op, step, f"step {step.name}: attempt {step.attempts} of {step.max_attempts}")
        error = _call_with_timeout(spec.fn, op, step, actor, heartbeat, step.timeout_seconds)
        if isinstance(error, DatabaseError):
            raise _DatabaseLost(error)
        if isinstance(error, WaitRequested):
            step.state = StepState.WAITING
            step.save(update_fields=["state"])
            raise _Parked(error)
        if op.wait_for:
            Operation.objects.filter(pk=op.pk).update(wait_for="", waiting_since=None, wait_deadline=None)
            op.wait_for = ""
        if error is None:
            step.state = StepState.SUCCEEDED
            step.finished_at = timezone.now()
            step.save(update_fields=["state", "finished_at"])
            return
        op.refresh_from_db()
        if op.cancel_requested and not isinstance(error, BurnInFailed):
            # The release that cancelled us owns the node now (it moved it to releasing): failing this
            # operation would move the node to error under the release and make its wipe fail. A failed
            # burn-in is a finding about the hardware, not an interruption: it still fails the operation.
            raise _Cancelled()
        if heartbeat.lost.is_set():
            raise _LeaseLost()
        retryable = isinstance(error, NeocloudError) and error.retryable
        step.error_code = getattr(error, "code", "internal_error")
        step.error = _describe(error)
        if retryable and step.attempts < step.max_attempts:
            delay = settings.NEOCLOUD_RETRY_BACKOFF_SECONDS * (2 ** (step.attempts - 1))
            step.state = StepState.PENDING
            step.save(update_fields=["state", "error", "error_code"])
            _log(
                op,
                step,
                f"step {step.name} failed ({step.error}); retrying in {delay:.1f} s",
                LogLine.Level.WARNING,
            )
            time.sleep(delay)
            continue
        step.state = StepState.FAILED
        step.finished_at = timezone.now()
        step.save(update_fields=["state", "error", "error_code", "finished_at"])
        _log(op, step, f"step {step.name} failed: {step.error}", LogLine.Level.ERROR)
        raise StepFailed(step, error)


def _skip_unfinished_steps(op: Operation) -> None:
    """A cancelled operation runs none of its remaining steps, the interrupted one included."""
    Step.objects.filter(
        operation=op, state__in=[StepState.PENDING, StepState.RUNNING, StepState.WAITING]
    ).update(state=StepState.SKIPPED)


def _describe(error: BaseException) -> str:
    if isinstance(error, NeocloudError):
        return str(error)
    # Unexpected exceptions: the class name and message, never a traceback in user-facing text.
    return f"internal error ({type(error).__name__}: {error})"


def _call_with_timeout(fn, op: Operation, step: Step, actor: Actor, heartbeat: Heartbeat, timeout: float):
    """Run the step in a thread; wait up to ``timeout``. Returns the exception it raised, or None."""
    cancelled = threading.Event()
    outcome: dict[str, BaseException | None] = {"error": None}

    def target() -> None:
        try:
            ctx = StepContext(
                operation=Operation.objects.select_related("node").get(pk=op.pk),
                step=step,
                actor=actor,
                cancelled=cancelled,
            )
            fn(ctx)
        except BaseException as exc:
            if not isinstance(exc, NeocloudError | StepCancelled | IllegalTransition | WaitRequested):
                log.exception("step %s of operation %s raised", step.name, op.pk)
            outcome["error"] = exc
        finally:
            connection.close()

    thread = threading.Thread(target=target, name=f"op{op.pk}-{step.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while thread.is_alive():
        thread.join(timeout=0.2)
        if heartbeat.lost.is_set() or time.monotonic() > deadline:
            cancelled.set()
            thread.join(timeout=STEP_STOP_GRACE_SECONDS)  # steps poll ctx.cancelled; let them stop
            if heartbeat.lost.is_set():
                return StepCancelled("lease lost")
            return StepTimeout(f"step {step.name} did not finish within {timeout:.0f} s")
    close_old_connections()
    return outcome["error"]


def _log(op: Operation, step: Step | None, message: str, level: str = LogLine.Level.INFO) -> None:
    LogLine.objects.create(operation=op, step=step, level=level, message=message)


def _finish(op: Operation, state: str, error: str, error_code: str = "") -> None:
    with transaction.atomic():  # the operation.finished event commits with the final state
        Operation.objects.filter(pk=op.pk).update(
            state=state, finished_at=timezone.now(), error=error, error_code=error_code, worker_id=""
        )
        events.operation_finished(op.pk)
    _log(op, None, f"{op.kind} {state}" + (f": {error}" if error else ""))


def _fail(op: Operation, failure: StepFailed, actor: Actor) -> None:
    code = getattr(failure.error, "code", "internal_error")
    step_name = failure.step.name if failure.step else "engine"
    message = f"{step_name}: {_describe(failure.error)}"
    _finish(op, OperationState.FAILED, message, code)
    announce(
        OperationEnded(
            Operation.objects.get(pk=op.pk), OperationState.FAILED, actor, failure.step, failure.error
        )
    )
