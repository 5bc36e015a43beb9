"""Reservations are offered only nodes that pass their drivers' validation: a customer cannot fix node data,
so a node with a bad record is never counted as available, never allocated, never taken as a spare, and a
booked one whose record breaks before its window is let go for a spare. The customer's image is checked
once, against the deploy driver of the server type."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from provisioner.errors import CapacityError, InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, BmcCredential, Image, Node, Reservation, ServerType
from provisioner.services.reservations import (
    availability,
    book_servers,
    replace_failed_node,
    start_due_reservations,
)
from provisioner.states import NodeState, ReservationState
from tests.conftest import reserve

HOUR = dt.timedelta(hours=1)
H100 = ["node-h100-8x-01", "node-h100-8x-02", "node-h100-8x-03", "node-h100-8x-04"]


def _break_records(*names: str) -> None:
    """Two ways a record fails: no BMC credential stored, no boot MAC."""
    first, *rest = names
    BmcCredential.objects.filter(node__name=first).delete()
    for name in rest:
        Node.objects.filter(name=name).update(boot_mac="")


def _book_image(inv, image: Image, server_type: ServerType | None = None) -> Reservation:
    return book_servers(
        inv.acme, server_type or inv.h100, 1, image=image, ssh_keys=[inv.key], actor=Actor.system("test")
    ).reservation


def _booked(reservation: Reservation) -> set[str]:
    return set(
        Allocation.objects.filter(reservation=reservation, active=True).values_list("node__name", flat=True)
    )


@pytest.mark.django_db
def test_nodes_that_fail_validation_are_never_booked_nor_counted_as_available(inventory):
    _break_records("node-h100-8x-02", "node-h100-8x-03")
    later = timezone.now() + 10 * HOUR
    assert availability(inventory.h100) == 2
    assert availability(inventory.h100, later, later + HOUR) == 2
    assert availability(inventory.a100) == 2  # the other type is untouched

    future = reserve(inventory, 2, starts_at=later, ends_at=later + HOUR)
    assert _booked(future) == {"node-h100-8x-01", "node-h100-8x-04"}
    with pytest.raises(CapacityError, match=r"0 8x H100 SXM server\(s\) free for that window, 1 requested"):
        reserve(inventory, 1, starts_at=later, ends_at=later + HOUR)

    now = reserve(inventory, 2, ends_at=later - HOUR)
    assert _booked(now) == {"node-h100-8x-01", "node-h100-8x-04"}
    with pytest.raises(CapacityError, match=r"0 8x H100 SXM server\(s\) free"):
        reserve(inventory, 1, ends_at=later - HOUR)
    assert (
        Node.objects.filter(
            name__in=["node-h100-8x-02", "node-h100-8x-03"], state=NodeState.AVAILABLE
        ).count()
        == 2
    )
    assert not Allocation.objects.filter(node__name__in=["node-h100-8x-02", "node-h100-8x-03"]).exists()

    # fixed by an operator, the node is offered again
    Node.objects.filter(name="node-h100-8x-03").update(boot_mac="52:54:00:00:00:33")
    assert availability(inventory.h100) == 1
    assert _booked(reserve(inventory, 1, ends_at=later - HOUR)) == {"node-h100-8x-03"}


@pytest.mark.django_db
def test_a_spare_is_never_a_node_that_fails_validation(inventory):
    r = reserve(inventory, 1)
    (first,) = _booked(r)
    broken = [n for n in H100 if n != first][:2]
    healthy = next(n for n in H100 if n not in (first, *broken))
    _break_records(*broken)
    actor = Actor.system("test")

    Node.objects.filter(name=first).update(state=NodeState.QUARANTINED)  # its burn-in failed
    spare = replace_failed_node(Node.objects.get(name=first), r, actor, "burn-in failed")
    assert spare is not None and spare.name == healthy

    Node.objects.filter(name=healthy).update(state=NodeState.QUARANTINED)  # and so did the spare's
    assert replace_failed_node(Node.objects.get(name=healthy), r, actor, "burn-in failed") is None
    r.refresh_from_db()
    assert r.state == ReservationState.WAITING  # two nodes available, neither offered
    assert Node.objects.filter(name__in=broken, state=NodeState.AVAILABLE, reservation=None).count() == 2


@pytest.mark.django_db
def test_a_booked_node_whose_record_breaks_before_its_window_is_let_go_for_a_spare(inventory):
    now = timezone.now()
    r = reserve(inventory, 1, starts_at=now + 2 * HOUR, ends_at=now + 5 * HOUR)
    (booked,) = _booked(r)
    BmcCredential.objects.filter(node__name=booked).delete()
    Reservation.objects.filter(pk=r.pk).update(starts_at=timezone.now() - dt.timedelta(seconds=1))

    assert start_due_reservations() == 1

    r.refresh_from_db()
    spare = Node.objects.get(reservation=r)
    assert spare.name != booked and spare.state == NodeState.RESERVED
    gone = Allocation.objects.get(reservation=r, node__name=booked)
    # what the customer may read says that much, never which BMC field
    assert not gone.active
    assert "its record failed the checks before deploy" in gone.end_reason
    assert "bmc" not in gone.end_reason.lower() and "bmc" not in r.status_message.lower()
    assert Node.objects.get(name=booked).state == NodeState.AVAILABLE


@pytest.mark.django_db
def test_an_image_the_types_deploy_driver_cannot_write_is_refused_naming_the_image(inventory):
    bad = Image.objects.create(
        slug="no-sum", name="No checksum", url="http://i.example/x.raw", sha256="", size_bytes=1
    )
    with pytest.raises(InvalidRequest, match=r"image no-sum has no valid sha256 .*; choose another image"):
        _book_image(inventory, bad)
    local = Image.objects.create(
        slug="local", name="Local file", url="file:///srv/x.raw", sha256="ab" * 32, size_bytes=1
    )
    assert _booked(_book_image(inventory, local))  # the fake deploy streams nothing
    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="ansible")
    with pytest.raises(InvalidRequest, match=r"image local has no http\(s\) URL for the deploy agent"):
        _book_image(inventory, local, ServerType.objects.get(slug="h100-8x"))
    assert Reservation.objects.count() == 1


@pytest.mark.django_db
def test_a_type_switched_to_the_ansible_deploy_offers_only_nodes_with_a_primary_address(inventory):
    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="ansible")
    h100 = ServerType.objects.get(slug="h100-8x")
    assert availability(h100) == 0  # the inventory fixture records no addresses
    Node.objects.filter(name="node-h100-8x-03").update(primary_address="198.18.0.13")
    assert availability(h100) == 1
    assert _booked(reserve(inventory, 1, server_type=h100)) == {"node-h100-8x-03"}
    assert availability(inventory.a100) == 2  # still the installation's fake deploy
