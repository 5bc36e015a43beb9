"""Waiting is a state, not a thread: a step that waits on the outside world (here the fake deploy agent,
which takes NEOCLOUD_FAKE_AGENT_SECONDS) parks its operation and leaves the worker; an event or its recheck
time queues it again; its deadline fails it; a cancellation wakes it; a lost recheck task is found by the
scheduler; and a worker killed while 20 nodes wait leaves none of them stranded."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import time

import pytest
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from provisioner.boot import tickets
from provisioner.boot.views import record_and_wake
from provisioner.engine.locks import acquire_lease
from provisioner.engine.queue import create_operation, site_queue, wake
from provisioner.engine.reaper import wake_overdue_waits
from provisioner.engine.runner import execute
from provisioner.engine.tasks import execute_operation
from provisioner.lifecycle import Actor
from provisioner.models import LogLine, Node, Operation, Rack, Site
from provisioner.services.reservations import release_reservation
from provisioner.states import NodeState, OperationKind, OperationState, ReservationState, StepState
from tests.conftest import assert_one_event_per_transition, reserve, wait_for


@pytest.fixture(autouse=True)
def _real_commits(transactional_db, fake_hw_dir):
    """Steps run in threads with their own database connections: commits must be real."""


def _provision(inv):
    r = reserve(inv)
    return r, r.operations.get(kind=OperationKind.PROVISION)


def _deploy_step(op: Operation):
    return op.steps.get(name="deploy")


def test_a_deploy_waiting_for_its_agent_parks_and_holds_no_worker(inventory, settings):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 0.6
    _, op = _provision(inventory)
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    op.refresh_from_db()
    node = Node.objects.get(pk=op.node_id)
    assert op.state == OperationState.WAITING and op.worker_id == ""
    assert op.wait_for == "the deploy agent"
    assert op.waiting_since <= op.recheck_at <= op.wait_deadline
    assert _deploy_step(op).state == StepState.WAITING and _deploy_step(op).attempts == 1
    # the node stays the operation's: no other worker or operation takes it while nobody runs
    assert node.state == NodeState.DEPLOYING and node.lease_owner == f"operation:{op.pk}"
    assert node.lease_expires_at is None
    assert not acquire_lease(node.pk, "w2", None)
    # not due yet: a worker that picks up its recheck task early leaves it waiting
    assert execute(op.pk, owner="w2") == "skipped"
    time.sleep(0.7)
    Operation.objects.filter(pk=op.pk).update(recheck_at=timezone.now())
    assert execute(op.pk, owner="w2") == OperationState.SUCCEEDED
    step = _deploy_step(op)
    assert step.state == StepState.SUCCEEDED and step.attempts == 1  # the same attempt went on
    op.refresh_from_db()
    assert op.wait_for == "" and op.wait_deadline is None
    assert Node.objects.get(pk=node.pk).state == NodeState.ACTIVE
    assert Node.objects.get(pk=node.pk).lease_owner == ""
    messages = list(LogLine.objects.filter(operation=op).values_list("message", flat=True))
    assert any(m.startswith("waiting for the deploy agent") for m in messages)
    assert any("resumed (was waiting for the deploy agent)" in m for m in messages)
    # no worker names in what customers read (host key fingerprints are random base64: "w1" may be in one)
    readable = [re.sub(r"SHA256:[A-Za-z0-9+/=]+", "SHA256:...", m) for m in messages]
    assert not any("w1" in m or "w2" in m for m in readable), readable


def test_parking_queues_a_recheck_task_on_the_sites_queue(
    inventory, settings, django_capture_on_commit_callbacks
):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 30
    _, op = _provision(inventory)
    site = Site.objects.create(name="Frankfurt 1", slug="fra1")
    Node.objects.filter(pk=op.node_id).update(rack=Rack.objects.create(site=site, name="r1"))
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    task = DBTaskResult.objects.filter(task_path=execute_operation.module_path).latest("enqueued_at")
    assert task.args_kwargs["args"] == [op.pk]
    assert task.queue_name == site_queue("fra1") == "site-fra1"
    assert task.run_after is not None and task.run_after > timezone.now() + dt.timedelta(seconds=20)


def test_an_event_wakes_a_waiting_operation_and_one_during_the_step_stops_it_parking(inventory, settings):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 30
    _, op = _provision(inventory)
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    assert wake([op.pk]) == 1
    op.refresh_from_db()
    assert op.state == OperationState.PENDING and op.recheck_at is None
    assert wake([op.pk]) == 0  # not waiting any more: a second event changes nothing
    # an event that arrives while a worker runs the step (it is about to park): it looks again at once
    Operation.objects.filter(pk=op.pk).update(state=OperationState.RUNNING, worker_id="w1")
    wake([op.pk])
    assert Operation.objects.get(pk=op.pk).wake_requested


def test_the_agents_report_wakes_the_operation_that_waits_for_it(inventory):
    node = Node.objects.first()
    op = create_operation(OperationKind.CLEAN, node)
    Operation.objects.filter(pk=op.pk).update(state=OperationState.WAITING, wait_for="the wipe")
    ticket = tickets.open_ticket(node, op, {"action": "erase"})
    assert record_and_wake(ticket, {"status": "ok", "bytes_written": 1})
    assert Operation.objects.get(pk=op.pk).state == OperationState.PENDING


def test_a_wait_past_its_deadline_fails_the_attempt_and_the_step_retries(inventory, settings):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 30
    _, op = _provision(inventory)
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    # the agent never reported: its wait began long ago, past its deadline (agent seconds + 60)
    step = _deploy_step(op)
    step.data["_waits"]["the deploy agent"] = (timezone.now() - dt.timedelta(seconds=200)).isoformat()
    step.save(update_fields=["data"])
    Operation.objects.filter(pk=op.pk).update(recheck_at=timezone.now())
    assert execute(op.pk, owner="w1") == OperationState.WAITING  # attempt 2 waits afresh
    step = _deploy_step(op)
    assert step.attempts == 2 and step.state == StepState.WAITING
    assert (
        "the deploy agent: nothing within 90 s" in step.error
        or LogLine.objects.filter(
            operation=op, message__contains="the deploy agent: nothing within 90 s"
        ).exists()
    )


def test_releasing_a_reservation_wakes_its_waiting_provision_which_ends_cancelled(inventory, settings):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 300
    r, op = _provision(inventory)
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    release_reservation(r, actor=Actor(user=inventory.owner))
    op.refresh_from_db()
    assert op.cancel_requested and op.state == OperationState.PENDING
    assert execute(op.pk, owner="w1") == OperationState.CANCELLED
    assert _deploy_step(op).state == StepState.SKIPPED
    assert Node.objects.get(pk=op.node_id).lease_owner == ""


def test_a_lost_recheck_task_is_found_by_the_scheduler(
    inventory, settings, django_capture_on_commit_callbacks
):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 30
    _, op = _provision(inventory)
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    assert wake_overdue_waits() == 0  # not overdue yet
    DBTaskResult.objects.all().delete()  # its recheck task was lost (the process died before queuing it)
    Operation.objects.filter(pk=op.pk).update(recheck_at=timezone.now() - dt.timedelta(minutes=5))
    assert wake_overdue_waits() == 1
    assert Operation.objects.get(pk=op.pk).state == OperationState.PENDING
    assert wake_overdue_waits() == 0


@pytest.mark.slow
def test_killing_the_worker_while_twenty_nodes_wait_strands_none(inventory, settings, workers):
    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 8
    workers.env["NEOCLOUD_FAKE_AGENT_SECONDS"] = "8"
    from provisioner.models import Node as N
    from provisioner.services.inventory import enroll

    enroll(
        {
            "nodes": [
                {
                    "name": f"node-h100-8x-{i:02d}",
                    "server_type": "h100-8x",
                    "site": "lab",
                    "rack": "r1",
                    "boot_mac": f"52:54:00:00:00:{i:02x}",
                    "bmc": {
                        "protocol": "fake",
                        "address": f"fake-h100-8x-{i}",
                        "port": 623,
                        "username": "admin",
                        "password": "secret-bmc-pw",
                    },
                }
                for i in range(5, 21)
            ]
        },
        actor=Actor.system("test"),
    )
    inventory.acme.__class__.objects.filter(pk=inventory.acme.pk).update(server_quota=100)
    first = workers.worker()
    workers.scheduler()
    r = reserve(inventory, 20)
    wait_for(
        lambda: Operation.objects.filter(reservation=r, state=OperationState.WAITING).count() == 20,
        60,
        message="20 provisions waiting for their agents",
        details=workers.logs,
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    workers.worker()
    wait_for(
        lambda: N.objects.filter(reservation=r, state=NodeState.ACTIVE).count() == 20,
        120,
        message="all 20 active after the worker was killed",
        details=workers.logs,
    )
    # the node turns active in the last step; the operation ends, and the reservation turns active, just after
    wait_for(
        lambda: r.__class__.objects.get(pk=r.pk).state == ReservationState.ACTIVE,
        20,
        message="reservation active",
    )
    assert not Operation.objects.filter(reservation=r).exclude(state=OperationState.SUCCEEDED).exists()
    assert_one_event_per_transition(N.objects.filter(reservation=r))


def test_the_customer_sees_what_a_waiting_operation_waits_for(inventory, settings):
    from tests.api.test_api_bad_input import api

    settings.NEOCLOUD_FAKE_AGENT_SECONDS = 30
    _, op = _provision(inventory)
    assert execute(op.pk, owner="w1") == OperationState.WAITING
    body = api(inventory.owner).get(f"/api/v1/operations/{op.pk}").json()
    assert body["state"] == "waiting" and body["wait_for"] == "the deploy agent"
    assert body["waiting_since"] < body["wait_deadline"]
