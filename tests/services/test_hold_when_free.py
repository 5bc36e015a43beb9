"""An operator hold asked for while a customer holds the server ("when free"): the customer keeps it, it
takes no new bookings, and its wipe after the release ends in maintenance instead of the pool. Through the
services, the operator API and a real worker."""

from __future__ import annotations

import datetime as dt

import pytest
from django.core.management import call_command
from django.utils import timezone

from provisioner.errors import CapacityError, IllegalTransition
from provisioner.lifecycle import Actor, process_event
from provisioner.models import AuditEvent, Node, Reservation
from provisioner.services.nodes import set_maintenance
from provisioner.services.reservations import availability, release_reservation
from provisioner.states import NodeEvent, NodeState, ReservationState
from tests.api.test_api_flows import V1, api
from tests.conftest import reserve, wait_for

HOUR = dt.timedelta(hours=1)
OPERATOR = Actor.system("operator-test")


def _book(inv, count: int, **window) -> Reservation:
    return reserve(inv, count, **window)


def _leased(inv) -> Node:
    node = Node.objects.filter(server_type=inv.h100, state=NodeState.AVAILABLE).first()
    return process_event(node, NodeEvent.RESERVE, actor=OPERATOR, reason="a customer")


@pytest.mark.django_db
def test_a_leased_server_is_held_once_free_and_takes_no_new_bookings_meanwhile(inventory):
    node = _leased(inventory)
    with pytest.raises(IllegalTransition):  # without when_free a leased server cannot go on hold
        set_maintenance(node, True, actor=OPERATOR, reason="PSU swap")
    later = {"starts_at": timezone.now() + 48 * HOUR, "ends_at": timezone.now() + 50 * HOUR}
    before = availability(inventory.h100, **later)

    node = set_maintenance(node, True, actor=OPERATOR, reason="PSU swap", when_free=True)

    assert node.state == NodeState.RESERVED and node.hold_requested == "PSU swap"
    assert availability(inventory.h100, **later) == before - 1
    with pytest.raises(CapacityError):
        _book(inventory, before, **later)
    event = AuditEvent.objects.get(action="hold_requested", node=node)
    assert "PSU swap" in event.reason and event.data == {"state": "reserved"}


@pytest.mark.django_db
def test_when_free_on_a_free_server_holds_it_at_once_and_lifting_withdraws_a_request(inventory):
    idle = Node.objects.filter(server_type=inventory.h100, state=NodeState.AVAILABLE).first()
    idle = set_maintenance(idle, True, actor=OPERATOR, reason="firmware", when_free=True)
    assert idle.state == NodeState.MAINTENANCE and idle.hold_requested == ""

    node = set_maintenance(_leased(inventory), True, actor=OPERATOR, reason="PSU swap", when_free=True)
    node = set_maintenance(node, False, actor=OPERATOR)
    assert node.state == NodeState.RESERVED and node.hold_requested == ""
    assert AuditEvent.objects.filter(action="hold_withdrawn", node=node).exists()


@pytest.mark.django_db
def test_the_operator_api_and_cli_ask_for_a_hold_when_free(inventory, capsys):
    node = _leased(inventory)
    operator = api(inventory.operator)
    url = f"{V1}/admin/nodes/{node.pk}/maintenance"

    refused = operator.post(url, {"on": True, "reason": "PSU swap"}, format="json")
    assert refused.status_code == 409
    accepted = operator.post(url, {"on": True, "reason": "PSU swap", "when_free": True}, format="json")
    assert accepted.status_code == 200
    assert accepted.json()["state"] == "reserved" and accepted.json()["hold_requested"] == "PSU swap"
    assert api(inventory.owner).post(url, {"on": True, "when_free": True}, format="json").status_code == 403
    bad = operator.post(url, {"on": True, "when_free": "soon"}, format="json")
    assert bad.status_code == 400 and "when_free" in bad.content.decode()

    call_command("nodes", "unmaintain", node.name)
    assert "hold request withdrawn" in capsys.readouterr().out
    call_command("nodes", "maintain", node.name, "--when-free", "--reason", "fan")
    assert "on hold once it is free and wiped" in capsys.readouterr().out
    assert Node.objects.get(pk=node.pk).hold_requested == "fan"


@pytest.mark.slow
def test_the_wipe_after_the_release_ends_in_maintenance_in_a_real_worker(inventory, fake_hw_dir, workers):
    workers.worker()
    r = _book(inventory, 1)
    node = Node.objects.get(reservation=r)
    wait_for(
        lambda: Node.objects.get(pk=node.pk).state == NodeState.ACTIVE,
        60,
        message="active",
        details=workers.logs,
    )
    set_maintenance(node, True, actor=OPERATOR, reason="PSU swap", when_free=True)
    assert Node.objects.get(pk=node.pk).state == NodeState.ACTIVE  # the customer keeps using it

    release_reservation(Reservation.objects.get(pk=r.pk), actor=Actor(user=inventory.owner, label="olivia"))

    wait_for(
        lambda: Node.objects.get(pk=node.pk).state == NodeState.MAINTENANCE,
        60,
        message="wiped, then on hold",
        details=workers.logs,
    )
    node.refresh_from_db()
    assert node.hold_requested == "" and "as an operator asked: PSU swap" in node.state_reason
    path = list(
        AuditEvent.objects.filter(node=node, action="transition")
        .order_by("pk")
        .values_list("from_state", "to_state")
    )
    assert path[-3:] == [("active", "releasing"), ("releasing", "cleaning"), ("cleaning", "maintenance")]
    wait_for(
        lambda: Reservation.objects.get(pk=r.pk).state == ReservationState.RELEASED, 10, message="released"
    )


@pytest.mark.django_db
def test_the_wipe_step_logs_the_hold_reason_it_applies(inventory):
    import threading

    from provisioner.engine.context import StepContext
    from provisioner.engine.queue import create_operation
    from provisioner.engine.steps import finish_clean
    from provisioner.models import LogLine
    from provisioner.states import OperationKind

    node = Node.objects.filter(server_type=inventory.h100, state=NodeState.AVAILABLE).first()
    node = process_event(node, NodeEvent.CLEAN, actor=OPERATOR, reason="wipe")
    set_maintenance(node, True, actor=OPERATOR, reason="PSU swap", when_free=True)
    op = create_operation(OperationKind.CLEAN, node)
    ctx = StepContext(op, op.steps.get(name="finish_clean"), OPERATOR, threading.Event())

    finish_clean(ctx)

    assert Node.objects.get(pk=node.pk).state == NodeState.MAINTENANCE
    logged = list(LogLine.objects.filter(operation=op).values_list("message", flat=True))
    assert logged == [f"{node.name} wiped and put on hold (PSU swap)"]
