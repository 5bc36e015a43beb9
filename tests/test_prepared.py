"""provisioner.prepared: a queryset compiled once answers every later call as the ORM answers it, on SQLite and
PostgreSQL (the test command runs this file on both)."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from provisioner import prepared
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, Image, Node, Reservation, ServerType
from provisioner.prepared import PreparedQuery, columns, instances, joined, joined_columns
from provisioner.services import reservations as reservation_service


def test_a_prepared_query_answers_each_call_with_its_own_values_as_the_orm_does(inventory):
    by_type = PreparedQuery(
        lambda slug, after: (
            Node.objects.filter(server_type__slug=slug, state_changed_at__gt=after)
            .order_by("name")
            .values_list("pk", "name", "state_changed_at", "hold_requested")
        ),
        prepared.TEXT,
        prepared.DATETIME,
    )
    long_ago = timezone.now() - dt.timedelta(days=1)
    for slug in ("h100-8x", "a100-8x", "no-such-type"):
        want = list(
            Node.objects.filter(server_type__slug=slug, state_changed_at__gt=long_ago)
            .order_by("name")
            .values_list("pk", "name", "state_changed_at", "hold_requested")
        )
        got = by_type.rows(slug, long_ago)
        assert got == want
        assert all(timezone.is_aware(row[2]) for row in got)  # SQLite's text comes back as the ORM's datetime
    assert len(by_type.rows("h100-8x", long_ago)) == 4
    assert by_type.rows("h100-8x", timezone.now() + dt.timedelta(days=1)) == []


def test_instances_of_a_prepared_query_equal_the_orms_with_their_related_rows(inventory):
    later = timezone.now() + dt.timedelta(days=2)
    booking = reservation_service.book_servers(
        inventory.acme,
        ServerType.objects.get(slug="h100-8x"),
        2,
        image=Image.objects.get(slug="ubuntu-24.04"),
        actor=Actor.system("test"),
        starts_at=later,
        ends_at=later + dt.timedelta(hours=3),
        ssh_keys=[inventory.key],
    )
    related = {"organization": type(inventory.acme), "server_type": ServerType, "image": Image}
    one = PreparedQuery(
        lambda pk: Reservation.objects.filter(pk=pk).values_list(*joined_columns(Reservation, related)),
        prepared.INT,
    )
    [got] = joined(Reservation, related, one.rows(booking.reservation.pk))
    want = Reservation.objects.select_related(*related).get(pk=booking.reservation.pk)
    for name in columns(Reservation):
        assert getattr(got, name) == getattr(want, name), name
    assert got.authorized_keys == want.authorized_keys == [inventory.key.public_key]  # JSON, decoded
    assert (got.organization, got.server_type, got.image) == (want.organization, want.server_type, want.image)
    assert got.server_type.burnin_expectations() == want.server_type.burnin_expectations()

    held = PreparedQuery(
        lambda pk: Allocation.objects.filter(reservation_id=pk).values_list(
            *joined_columns(Allocation, {"node": Node})
        ),
        prepared.INT,
    )
    allocations = joined(Allocation, {"node": Node}, held.rows(booking.reservation.pk))
    assert sorted(a.node.name for a in allocations) == sorted(
        Allocation.objects.filter(reservation=booking.reservation).values_list("node__name", flat=True)
    )
    assert instances(ServerType, PreparedQuery(
        lambda slug: ServerType.objects.filter(slug=slug).values_list(*columns(ServerType)), prepared.TEXT
    ).rows("a100-8x")) == [ServerType.objects.get(slug="a100-8x")]  # fmt: skip


def test_a_prepared_row_lock_is_taken_inside_the_transaction(inventory):
    lock = PreparedQuery(
        lambda pk: ServerType.objects.select_for_update(no_key=True).filter(pk=pk).values_list("slug"),
        prepared.INT,
    )
    h100 = ServerType.objects.get(slug="h100-8x")
    with transaction.atomic():
        assert lock.rows(h100.pk) == [("h100-8x",)]


def test_an_argument_that_does_not_reach_the_statement_is_refused_at_the_first_run(inventory):
    # a builder that drops its argument (here: ignores it) would answer every call with the first one's rows
    lost = PreparedQuery(
        lambda pk: Node.objects.filter(name="node-h100-8x-01").values_list("pk"), prepared.INT
    )
    with pytest.raises(RuntimeError, match="do not reach the statement"):
        lost.rows(1)
