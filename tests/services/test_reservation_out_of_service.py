"""A server booked for a future window that goes out of service before the window starts (maintenance,
quarantine, error) must not hold the reservation back: when the window starts, a healthy spare of the type
takes its place, or the reservation waits for one and says so."""

from __future__ import annotations

import contextlib
import datetime as dt
import types
from collections.abc import Iterator

import pytest
from django.db import transaction
from django.utils import timezone

from provisioner.lifecycle import Actor
from provisioner.models import Allocation, AuditEvent, Node, Reservation
from provisioner.services.nodes import set_maintenance
from provisioner.services.periodics import fill_waiting_reservations
from provisioner.services.reservations import start_due_reservations
from provisioner.states import NodeState, ReservationState
from tests.conftest import reserve

HOUR = dt.timedelta(hours=1)
OPERATOR = Actor.system("operator-test")


def _book_future(inv, count: int) -> Reservation:
    now = timezone.now()
    return reserve(inv, count, starts_at=now + 2 * HOUR, ends_at=now + 5 * HOUR)


def _window_starts(reservation: Reservation) -> None:
    Reservation.objects.filter(pk=reservation.pk).update(starts_at=timezone.now() - dt.timedelta(seconds=1))


def _booked_node(reservation: Reservation) -> Node:
    return Allocation.objects.get(reservation=reservation, active=True).node


@pytest.mark.django_db
def test_a_booked_server_put_on_hold_is_replaced_by_a_spare_when_the_window_starts(inventory):
    r = _book_future(inventory, 1)
    held = _booked_node(r)
    set_maintenance(held, True, actor=OPERATOR, reason="fan replacement")
    _window_starts(r)

    assert start_due_reservations() == 1

    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING
    assert "taken out of service before your window started" in r.status_message
    assert "replaced by a healthy spare" in r.status_message
    spare = Node.objects.get(reservation=r)
    assert spare.pk != held.pk and spare.state == NodeState.RESERVED
    gone = Allocation.objects.get(reservation=r, node=held)
    assert not gone.active and "out of service (maintenance)" in gone.end_reason
    assert Allocation.objects.filter(reservation=r, active=True).count() == 1
    held.refresh_from_db()
    assert held.state == NodeState.MAINTENANCE and held.reservation_id is None
    actions = list(AuditEvent.objects.filter(reservation=r).values_list("action", flat=True))
    assert "replace_node" in actions and "substitute" in actions
    assert start_due_reservations() == 0  # nothing left to start: the spare is not started twice


@pytest.mark.django_db
def test_without_a_spare_the_reservation_waits_and_gets_one_when_a_server_frees_up(inventory):
    r = _book_future(inventory, 1)
    held = _booked_node(r)
    others = list(Node.objects.filter(server_type=inventory.h100).exclude(pk=held.pk))
    for node in [held, *others]:
        set_maintenance(node, True, actor=OPERATOR)
    _window_starts(r)

    assert start_due_reservations() == 0

    r.refresh_from_db()
    assert r.state == ReservationState.WAITING
    assert "taken out of service before your window started" in r.status_message
    assert "no healthy spare" in r.status_message
    assert not Allocation.objects.filter(reservation=r, active=True).exists()
    assert start_due_reservations() == 0  # a waiting reservation is the spare filler's, not started again

    # the hold on another server is lifted and its wipe brings it back: the waiting reservation takes it
    Node.objects.filter(pk=others[0].pk).update(state=NodeState.AVAILABLE)
    assert fill_waiting_reservations() == 1
    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING
    assert Node.objects.get(reservation=r).pk == others[0].pk


@pytest.mark.django_db
def test_a_booked_server_back_in_service_in_time_is_the_one_started(inventory):
    r = _book_future(inventory, 2)
    booked = {a.node_id for a in Allocation.objects.filter(reservation=r, active=True)}
    node = Node.objects.get(pk=min(booked))
    set_maintenance(node, True, actor=OPERATOR)
    Node.objects.filter(pk=node.pk).update(state=NodeState.AVAILABLE)  # hold lifted, wipe done
    _window_starts(r)

    assert start_due_reservations() == 2
    assert set(Node.objects.filter(reservation=r).values_list("pk", flat=True)) == booked
    assert not Allocation.objects.filter(reservation=r, active=False).exists()


@pytest.mark.django_db
def test_a_spare_is_added_once_the_rest_of_the_window_is_started_when_another_server_was_still_wiping(
    inventory,
):
    r = _book_future(inventory, 2)
    held, wiping = (a.node for a in Allocation.objects.filter(reservation=r, active=True).order_by("node_id"))
    set_maintenance(held, True, actor=OPERATOR, reason="fan replacement")
    Node.objects.filter(pk=wiping.pk).update(state=NodeState.CLEANING)  # its previous lease's wipe runs late
    _window_starts(r)

    assert start_due_reservations() == 0  # the held server is let go; the other one is not free yet

    Node.objects.filter(pk=wiping.pk).update(state=NodeState.AVAILABLE)  # the wipe ends
    assert start_due_reservations() == 2  # the booked server and a spare for the held one

    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING
    assert Allocation.objects.filter(reservation=r, active=True).count() == 2
    assert Node.objects.filter(reservation=r).count() == 2
    assert not Node.objects.filter(reservation=r, pk=held.pk).exists()


@pytest.mark.django_db
def test_a_server_taken_out_without_its_spare_being_added_gets_one_on_the_next_scheduler_pass(inventory):
    # A worker killed between taking a failed server out (committed) and adding its spare must not leave
    # the reservation one server short for good.
    from provisioner.services.periodics import housekeeping_pass
    from provisioner.services.reservations import take_node_out

    r = reserve(inventory, 1)
    failed = Node.objects.get(reservation=r)
    take_node_out(r, failed, OPERATOR, "burn-in failed")

    housekeeping_pass()

    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING
    spare = Node.objects.get(reservation=r)
    assert spare.pk != failed.pk and spare.state == NodeState.RESERVED
    assert Allocation.objects.filter(reservation=r, active=True).count() == 1


@pytest.mark.django_db
def test_a_waiting_reservation_keeps_saying_why_it_waits_on_later_scheduler_passes(inventory):
    r = _book_future(inventory, 1)
    for node in Node.objects.filter(server_type=inventory.h100):
        set_maintenance(node, True, actor=OPERATOR)
    _window_starts(r)
    start_due_reservations()
    r.refresh_from_db()
    assert r.state == ReservationState.WAITING
    said = r.status_message

    assert fill_waiting_reservations() == 0

    r.refresh_from_db()
    assert r.state == ReservationState.WAITING
    assert r.status_message == said  # not "failed its checks before handover": it never was handed over


@pytest.mark.django_db
def test_a_reservation_released_while_its_spare_is_looked_for_stays_released(inventory, monkeypatch):
    # add_spare finds no spare and marks the reservation waiting after its transaction: a release committed
    # in between must not be turned back into "waiting" (and then given a spare by the scheduler).
    from provisioner.services import reservations as substitution
    from provisioner.services.reservations import release_reservation, take_node_out

    r = reserve(inventory, 1)
    take_node_out(r, Node.objects.get(reservation=r), OPERATOR, "burn-in failed")

    for node in Node.objects.filter(server_type=inventory.h100, state=NodeState.AVAILABLE):
        set_maintenance(node, True, actor=OPERATOR)  # no spare anywhere

    real_atomic = transaction.atomic
    first: list[bool] = []

    @contextlib.contextmanager
    def then_released(*args, **kwargs) -> Iterator[None]:
        if first:  # the module's other transactions (the release itself among them) as they are
            with real_atomic(*args, **kwargs):
                yield
            return
        first.append(True)
        try:
            with real_atomic(*args, **kwargs):
                yield
        finally:
            release_reservation(r, actor=OPERATOR)  # the customer's release commits right after add_spare's

    monkeypatch.setattr(substitution, "transaction", types.SimpleNamespace(atomic=then_released))
    assert substitution.add_spare(r, OPERATOR) is None

    r.refresh_from_db()
    assert r.state == ReservationState.RELEASED
    assert "no healthy spare" not in r.status_message
