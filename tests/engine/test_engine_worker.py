"""The engine in real worker processes: a reservation runs the whole lifecycle; a worker killed with
SIGKILL mid-step is noticed by the reaper and its operation resumed; failures never strand a node."""

from __future__ import annotations

import json
import os
import signal

import pytest

from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import write_fake_bmc
from provisioner.lifecycle import Actor
from provisioner.models import AuditEvent, Node, Operation, Reservation
from provisioner.services.reservations import release_reservation
from provisioner.states import NodeState, OperationKind, OperationState, ReservationState, StepState
from tests.conftest import assert_one_event_per_transition, reserve, wait_for

pytestmark = [pytest.mark.slow]

LIFECYCLE = [
    ("enrolling", "available"),
    ("available", "reserved"),
    ("reserved", "deploying"),
    ("deploying", "burning_in"),
    ("burning_in", "active"),
    ("active", "releasing"),
    ("releasing", "cleaning"),
    ("cleaning", "available"),
]


def _reserve(inv, count=1):
    return reserve(inv, count)


def _access(node: Node) -> BmcAccess:
    return BmcAccess(
        protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
    )


def _state(name: str) -> str:
    return Node.objects.get(name=name).state


def test_reservation_runs_the_whole_lifecycle_in_a_real_worker(inventory, fake_hw_dir, workers):
    workers.worker()
    workers.scheduler()
    r = _reserve(inventory)
    node = Node.objects.get(reservation=r)
    wait_for(
        lambda: _state(node.name) == NodeState.ACTIVE, 60, message=f"{node.name} active", details=workers.logs
    )
    wait_for(lambda: Reservation.objects.get(pk=r.pk).state == ReservationState.ACTIVE, 10, message="active")
    node.refresh_from_db()
    assert node.host_key_fingerprints and all(
        v.startswith("SHA256:") for v in node.host_key_fingerprints.values()
    )
    disk = json.loads((fake_hw_dir / f"{node.name}.disk.json").read_text())
    assert disk["authorized_keys"] == [inventory.key.public_key]  # provisioning key removed at handover
    assert node.burnin_reports.get().passed
    fake = json.loads((fake_hw_dir / f"{node.bmc_address}_{node.bmc_port}.json").read_text())
    assert fake["power"] == "on"

    release_reservation(r, actor=Actor(user=inventory.owner, label="olivia"))
    wait_for(
        lambda: _state(node.name) == NodeState.AVAILABLE,
        60,
        message=f"{node.name} available",
        details=workers.logs,
    )
    wait_for(
        lambda: Reservation.objects.get(pk=r.pk).state == ReservationState.RELEASED, 10, message="released"
    )
    assert not (fake_hw_dir / f"{node.name}.disk.json").exists()
    transitions = list(
        AuditEvent.objects.filter(node=node, action="transition")
        .order_by("created_at", "id")
        .values_list("from_state", "to_state")
    )
    assert transitions == LIFECYCLE
    assert Node.objects.get(pk=node.pk).lease_owner == ""


def test_worker_killed_mid_step_is_recovered_by_the_reaper(inventory, fake_hw_dir, workers):
    node = Node.objects.get(name="node-h100-8x-01")
    write_fake_bmc(
        _access(node), fault="slow", slow_seconds=0.7
    )  # every BMC call is slow: deploy takes seconds
    first = workers.worker()
    r = _reserve(inventory)
    assert Node.objects.get(reservation=r).pk == node.pk
    op = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    wait_for(
        lambda: op.steps.filter(name="deploy", state=StepState.RUNNING).exists(), 30, message="deploy running"
    )
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    op.refresh_from_db()
    assert op.state == OperationState.RUNNING  # nobody has noticed yet
    assert _state(node.name) == NodeState.DEPLOYING

    workers.worker()
    workers.scheduler()  # runs the reaper
    wait_for(
        lambda: _state(node.name) == NodeState.ACTIVE,
        90,
        message="recovered to active",
        details=workers.logs,
    )
    # the node turns active in the last step; the operation is marked succeeded just after
    wait_for(
        lambda: Operation.objects.get(pk=op.pk).state == OperationState.SUCCEEDED, 10, message="succeeded"
    )
    op.refresh_from_db()
    assert op.recoveries == 1
    assert op.log_lines.filter(message__contains="stopped heartbeating").exists()
    # the attempt the killed worker was running does not count against the step's retries (issue 17, 8)
    assert op.steps.get(name="deploy").attempts == 1
    assert_one_event_per_transition([node])


def test_operation_that_keeps_failing_ends_in_error_and_the_customer_gets_a_spare(
    inventory, fake_hw_dir, workers
):
    (fake_hw_dir / "node-h100-8x-01.faults.json").write_text(json.dumps({"deploy": "crash"}))
    workers.worker()
    r = _reserve(inventory)
    wait_for(lambda: _state("node-h100-8x-01") == NodeState.ERROR, 60, message="error", details=workers.logs)
    failed = Operation.objects.get(node__name="node-h100-8x-01", kind=OperationKind.PROVISION)
    assert failed.state == OperationState.FAILED
    assert "stopped without reporting back" in failed.error
    assert "stopped without reporting back" in Node.objects.get(name="node-h100-8x-01").state_reason
    # the reservation moved on to a healthy spare, which becomes active (the failure hook that lets the
    # failed node go and books the spare runs just after the node's state is written: wait for both)
    spare = wait_for(
        lambda: Node.objects.filter(reservation=r).exclude(name="node-h100-8x-01").first(),
        10,
        message="spare allocated",
    )
    wait_for(
        lambda: Node.objects.get(name="node-h100-8x-01").reservation_id is None,
        10,
        message="failed node let go",
    )
    wait_for(lambda: _state(spare.name) == NodeState.ACTIVE, 60, message="spare active", details=workers.logs)
    wait_for(lambda: Reservation.objects.get(pk=r.pk).state == ReservationState.ACTIVE, 10, message="active")


def test_reaper_gives_up_after_max_recoveries_and_node_goes_to_error(
    inventory, fake_hw_dir, settings, transactional_db
):
    import datetime as dt

    from django.utils import timezone

    from provisioner.engine.reaper import reap

    settings.NEOCLOUD_MAX_RECOVERIES = 0
    r = _reserve(inventory)
    node = Node.objects.get(reservation=r)
    op = Operation.objects.get(reservation=r)
    from provisioner.lifecycle import process_event
    from provisioner.states import NodeEvent

    process_event(node, NodeEvent.DEPLOY, actor=Actor.system("test"))
    stale = timezone.now() - dt.timedelta(seconds=60)
    Operation.objects.filter(pk=op.pk).update(
        state=OperationState.RUNNING, worker_id="dead:1", heartbeat_at=stale
    )
    Node.objects.filter(pk=node.pk).update(lease_owner="dead:1", lease_operation=op, lease_expires_at=stale)
    assert reap() == {"resumed": 0, "failed": 1}
    node.refresh_from_db()
    op.refresh_from_db()
    assert node.state == NodeState.ERROR
    assert "its worker died" in node.state_reason and "dead:1" not in node.state_reason  # no worker names
    assert op.state == OperationState.FAILED and op.error_code == "worker_lost"
    assert node.lease_owner == ""
