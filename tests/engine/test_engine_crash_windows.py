"""Crash windows between two writes the engine cannot make atomic, each left the way a killed process leaves
it (the pieces called in that order, the rest never run), and the scheduler's pass that finishes the work:

- an operation committed pending whose worker task was never queued (the process died between the commit
  and the enqueue, or between handing a waiting operation back and queueing it again) is queued again, once;
- a node whose operation was marked failed but whose failure handling never ran (the worker died in
  between) goes where that handling sends it: error or quarantine, with a spare for its reservation.
"""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from django_tasks import TaskResultStatus
from django_tasks_db.models import DBTaskResult

from provisioner.engine.reaper import reap
from provisioner.engine.runner import claim, execute
from provisioner.engine.tasks import execute_operation
from provisioner.lifecycle import Actor, process_event
from provisioner.models import Allocation, AuditEvent, LogLine, Node, Operation
from provisioner.services.periodics import housekeeping_pass
from provisioner.services.reservations import release_reservation
from provisioner.states import (
    NodeEvent,
    NodeState,
    OperationKind,
    OperationState,
    ReservationState,
)
from tests.conftest import reserve

LONG_AGO = dt.timedelta(minutes=10)


def _tasks(op: Operation) -> list[DBTaskResult]:
    """The worker tasks queued for ``op`` (read without the code under test's own query)."""
    return [
        t
        for t in DBTaskResult.objects.filter(task_path=execute_operation.module_path)
        if t.args_kwargs["args"] == [op.pk]
    ]


def _committed_but_never_queued(inv, count: int = 1):
    """Book servers; the provisioning operations commit, and the process dies before queueing their tasks
    (under the ``db`` fixture's transaction, on-commit callbacks never run)."""
    r = reserve(inv, count)
    ops = list(r.operations.filter(kind=OperationKind.PROVISION))
    Operation.objects.filter(pk__in=[op.pk for op in ops]).update(created_at=timezone.now() - LONG_AGO)
    return r, ops


def _pass(django_capture_on_commit_callbacks) -> dict[str, int]:
    with django_capture_on_commit_callbacks(execute=True):
        return housekeeping_pass()


# --- an operation whose task was lost ---------------------------------------------------------------------


@pytest.mark.django_db
def test_a_pending_operation_whose_task_was_never_queued_is_queued_again_exactly_once(
    inventory, django_capture_on_commit_callbacks
):
    _, (op,) = _committed_but_never_queued(inventory)
    assert _tasks(op) == []

    counts = _pass(django_capture_on_commit_callbacks)

    assert counts["requeued"] == 1
    (task,) = _tasks(op)
    assert task.status == TaskResultStatus.READY
    assert LogLine.objects.filter(
        operation=op, level=LogLine.Level.WARNING, message__contains="queued"
    ).exists()
    # the queue is backed up: the task waits, it is not lost, and no second one joins it, pass after pass
    Operation.objects.filter(pk=op.pk).update(heartbeat_at=timezone.now() - LONG_AGO)
    for _ in range(3):
        assert _pass(django_capture_on_commit_callbacks)["requeued"] == 0
    assert len(_tasks(op)) == 1


@pytest.mark.django_db
def test_a_pending_operation_is_given_a_grace_period_before_its_task_counts_as_lost(
    inventory, django_capture_on_commit_callbacks
):
    r = reserve(inventory, 1)  # committed a moment ago: its task may be on its way
    op = r.operations.get()
    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 0
    assert _tasks(op) == []


@pytest.mark.django_db
def test_an_operation_whose_task_is_queued_is_never_queued_again(
    inventory, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = reserve(inventory, 2)
    ops = list(r.operations.all())
    Operation.objects.update(created_at=timezone.now() - LONG_AGO)
    # one task waits for a worker, the other for its turn (a waiting operation is queued to run later)
    DBTaskResult.objects.filter(pk=_tasks(ops[1])[0].pk).update(run_after=timezone.now() + LONG_AGO)
    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 0
    assert [len(_tasks(op)) for op in ops] == [1, 1]


@pytest.mark.django_db
def test_an_operation_handed_back_to_wait_whose_worker_died_before_requeueing_it_is_queued_again(
    inventory, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = reserve(inventory, 1)
    op = r.operations.get()
    (task,) = _tasks(op)
    # a worker picked the task up and claimed the operation; the node was busy, so it handed the operation
    # back (pending) to queue it again, and was killed first: its task stays "running" forever
    started = timezone.now() - LONG_AGO
    DBTaskResult.objects.filter(pk=task.pk).update(status=TaskResultStatus.RUNNING, started_at=started)
    assert claim(op.pk, "w1") is not None
    Operation.objects.filter(pk=op.pk).update(
        state=OperationState.PENDING, worker_id="", heartbeat_at=started, created_at=started
    )

    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 1
    assert sorted(t.status for t in _tasks(op)) == [TaskResultStatus.READY, TaskResultStatus.RUNNING]
    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 0


@pytest.mark.django_db
def test_a_task_picked_up_a_moment_ago_is_not_lost_while_its_worker_claims_the_operation(
    inventory, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = reserve(inventory, 1)
    op = r.operations.get()
    Operation.objects.filter(pk=op.pk).update(created_at=timezone.now() - LONG_AGO)
    DBTaskResult.objects.filter(pk=_tasks(op)[0].pk).update(
        status=TaskResultStatus.RUNNING, started_at=timezone.now()
    )
    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 0


@pytest.mark.django_db
def test_a_resumed_operation_whose_reaper_died_before_queueing_it_is_queued_again_after_the_grace(
    inventory, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        r = reserve(inventory, 1)
    op = r.operations.get()
    stale = timezone.now() - LONG_AGO
    DBTaskResult.objects.filter(pk=_tasks(op)[0].pk).update(status=TaskResultStatus.RUNNING, started_at=stale)
    Operation.objects.filter(pk=op.pk).update(
        state=OperationState.RUNNING, worker_id="dead:1", heartbeat_at=stale, created_at=stale
    )
    assert reap() == {"resumed": 1, "failed": 0}  # its enqueue (on commit) never ran: the scheduler died
    assert len(_tasks(op)) == 1
    # just handed back: a second scheduler running its pass now must not queue it as well
    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 0
    Operation.objects.filter(pk=op.pk).update(heartbeat_at=stale)
    assert _pass(django_capture_on_commit_callbacks)["requeued"] == 1
    assert len(_tasks(op)) == 2


def test_a_duplicate_task_for_the_same_operation_runs_it_once(inventory, fake_hw_dir, transactional_db):
    r = reserve(inventory, 1)
    op = r.operations.get()
    node = Node.objects.get(reservation=r)
    # two tasks at once: only one worker claims the operation
    assert claim(op.pk, "w1") is not None
    assert execute(op.pk, owner="w2") == "skipped"
    assert Operation.objects.get(pk=op.pk).worker_id == "w1"
    Operation.objects.filter(pk=op.pk).update(state=OperationState.PENDING, worker_id="")
    # one after the other: the second finds the operation finished and leaves it (and the node) alone
    assert execute(op.pk, owner="w1") == OperationState.SUCCEEDED
    transitions = AuditEvent.objects.filter(node=node, action="transition").count()
    lines = LogLine.objects.filter(operation=op).count()
    assert execute(op.pk, owner="w2") == "skipped"
    assert Node.objects.get(pk=node.pk).state == NodeState.ACTIVE
    assert AuditEvent.objects.filter(node=node, action="transition").count() == transitions
    assert LogLine.objects.filter(operation=op).count() == lines


# --- a node whose failure handling never ran --------------------------------------------------------------


def _failed_and_worker_killed(op: Operation, *, error: str, code: str, ago: dt.timedelta = LONG_AGO) -> None:
    """The operation is marked failed (runner._finish) and the worker dies before outcomes.operation_failed."""
    Operation.objects.filter(pk=op.pk).update(
        state=OperationState.FAILED,
        finished_at=timezone.now() - ago,
        error=error,
        error_code=code,
        worker_id="",
    )
    Node.objects.filter(pk=op.node_id).update(state_changed_at=timezone.now() - ago)  # it took that long


def _deploying(inv, count: int = 1):
    r = reserve(inv, count)
    node = Node.objects.filter(reservation=r).order_by("name").first()
    node = process_event(node, NodeEvent.DEPLOY, actor=Actor.system("t"))
    return r, node, r.operations.get(node=node)


@pytest.mark.django_db
def test_a_node_left_deploying_by_a_failed_operation_whose_handling_never_ran_goes_to_error_with_a_spare(
    inventory, django_capture_on_commit_callbacks
):
    r, node, op = _deploying(inventory)
    _failed_and_worker_killed(op, error="deploy: the deploy agent stopped", code="deploy_failed")

    counts = _pass(django_capture_on_commit_callbacks)

    assert counts["stranded"] == 1
    node.refresh_from_db()
    assert node.state == NodeState.ERROR and node.reservation_id is None
    assert node.state_reason == "deploy: the deploy agent stopped"
    assert not Allocation.objects.filter(reservation=r, node=node, active=True).exists()
    (spare,) = Allocation.objects.filter(reservation=r, active=True)
    assert spare.node_id != node.pk
    assert Node.objects.get(pk=spare.node_id).state == NodeState.RESERVED
    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING
    # settled once: the next passes find nothing to do
    assert _pass(django_capture_on_commit_callbacks)["stranded"] == 0
    assert AuditEvent.objects.filter(reservation=r, action="substitute").count() == 1


@pytest.mark.django_db
def test_a_node_left_burning_in_by_a_failed_burnin_whose_handling_never_ran_is_quarantined(
    inventory, django_capture_on_commit_callbacks
):
    r, node, op = _deploying(inventory)
    node = process_event(node, NodeEvent.DEPLOYED, actor=Actor.system("t"))
    _failed_and_worker_killed(op, error="burnin: GPU 3 reported Xid 79", code="burnin_failed")

    assert _pass(django_capture_on_commit_callbacks)["stranded"] == 1

    node.refresh_from_db()
    assert node.state == NodeState.QUARANTINED
    assert Allocation.objects.filter(reservation=r, active=True).exclude(node=node).count() == 1


@pytest.mark.django_db
def test_a_node_whose_operation_failed_a_moment_ago_is_left_to_its_worker(
    inventory, django_capture_on_commit_callbacks
):
    _, node, op = _deploying(inventory)
    _failed_and_worker_killed(op, error="deploy: x", code="deploy_failed", ago=dt.timedelta(0))
    assert _pass(django_capture_on_commit_callbacks)["stranded"] == 0
    assert Node.objects.get(pk=node.pk).state == NodeState.DEPLOYING


@pytest.mark.django_db
def test_a_node_with_an_operation_still_to_run_is_not_stranded(inventory, django_capture_on_commit_callbacks):
    r, node, op = _deploying(inventory)
    _failed_and_worker_killed(op, error="deploy: x", code="deploy_failed")
    release_reservation(r, actor=Actor(user=inventory.owner, label="olivia"))  # the node is releasing now
    assert _pass(django_capture_on_commit_callbacks)["stranded"] == 0
    assert Node.objects.get(pk=node.pk).state == NodeState.RELEASING


@pytest.mark.django_db
def test_a_node_left_cleaning_by_a_failed_release_goes_to_error_and_the_reservation_settles(
    inventory, django_capture_on_commit_callbacks
):
    r = release_reservation(reserve(inventory, 1), actor=Actor(user=inventory.owner, label="olivia"))
    r.operations.filter(kind=OperationKind.PROVISION).update(state=OperationState.CANCELLED)
    release = r.operations.get(kind=OperationKind.RELEASE)
    node = process_event(release.node, NodeEvent.CLEAN, actor=Actor.system("t"))
    _failed_and_worker_killed(release, error="wipe: the disk did not answer", code="wipe_failed")

    assert _pass(django_capture_on_commit_callbacks)["stranded"] == 1

    assert Node.objects.get(pk=node.pk).state == NodeState.ERROR
    r.refresh_from_db()
    assert r.state == ReservationState.RELEASED


@pytest.mark.django_db
def test_a_node_left_cleaning_after_its_wipe_succeeded_goes_to_error_for_an_operator(
    inventory, django_capture_on_commit_callbacks
):
    from provisioner.services.nodes import reimage

    node = Node.objects.filter(state=NodeState.AVAILABLE).order_by("name").first()
    op = reimage(node, actor=Actor(user=inventory.operator, label="opal"))  # a wipe: node cleaning
    _failed_and_worker_killed(op, error="", code="")
    Operation.objects.filter(pk=op.pk).update(state=OperationState.SUCCEEDED)

    assert _pass(django_capture_on_commit_callbacks)["stranded"] == 1

    node.refresh_from_db()
    assert node.state == NodeState.ERROR
    assert node.state_reason == "left cleaning with nothing running after its clean succeeded"
