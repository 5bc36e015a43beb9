"""Metering: usage derived from allocations and handovers, priced per server type and hour, billed in monthly
statements that reconcile exactly with their records, and the monthly money quota."""

from __future__ import annotations

import datetime as dt

import pytest

from provisioner.errors import InvalidRequest, QuotaExceeded
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, AuditEvent, Node, Operation, Reservation, ServerTypePrice
from provisioner.services import metering
from provisioner.states import OperationState, ReservationState
from tests.conftest import reserve

pytestmark = pytest.mark.django_db
UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def price(server_type, cents: int, effective_from: dt.datetime) -> ServerTypePrice:
    return ServerTypePrice.objects.create(
        server_type=server_type, cents_per_hour=cents, currency="USD", effective_from=effective_from
    )


def lease(
    inv,
    node_name: str,
    start: dt.datetime,
    *,
    handed_over: dt.datetime | None = None,
    ended: dt.datetime | None = None,
    window_end: dt.datetime | None = None,
    end_reason: str = "released by customer",
    org=None,
) -> Reservation:
    """A reservation of one server as the domain records it: the booking, the allocation, the handover's
    transition to active and, if ``ended``, the allocation's end."""
    node = Node.objects.get(name=node_name)
    reservation = Reservation.objects.create(
        organization=org or inv.acme,
        server_type=node.server_type,
        count=1,
        image=inv.image,
        starts_at=start,
        ends_at=window_end,
        state=ReservationState.RELEASED if ended else ReservationState.ACTIVE,
    )
    Allocation.objects.create(
        reservation=reservation,
        node=node,
        starts_at=start,
        ends_at=window_end,
        active=ended is None,
        ended_at=ended,
        end_reason=end_reason if ended else "",
    )
    if handed_over is not None:
        audit = AuditEvent.objects.create(
            action="transition",
            node=node,
            reservation=reservation,
            organization=reservation.organization,
            from_state="burning_in",
            to_state="active",
        )
        AuditEvent.objects.filter(pk=audit.pk).update(created_at=handed_over)
    return reservation


def test_a_month_with_reservations_crossing_both_boundaries_bills_each_second_once(inventory):
    inv = inventory
    price(inv.h100, 1000, at(2026, 1, 1))
    price(inv.a100, 777, at(2026, 1, 1))
    # on demand: handed over in October, released in December; booked a little before its handover
    on_demand = lease(
        inv, "node-h100-8x-01", at(2026, 10, 31, 21, 40), handed_over=at(2026, 10, 31, 22, 0, 0, 250_000),
        ended=at(2026, 12, 1, 2, 0, 0, 900_000),
    )  # fmt: skip
    # reserved: a window from October to December, held throughout
    window = lease(
        inv, "node-h100-8x-02", at(2026, 10, 30), handed_over=at(2026, 10, 30, 0, 20),
        window_end=at(2026, 12, 3), ended=at(2026, 12, 3), end_reason="reservation window ended",
    )  # fmt: skip
    # inside November only, on another type, with odd seconds
    lease(inv, "node-a100-8x-01", at(2026, 11, 5), handed_over=at(2026, 11, 5, 0, 0, 7),
          ended=at(2026, 11, 5, 0, 13, 4))  # fmt: skip
    # another organization's use never shows
    lease(inv, "node-h100-8x-03", at(2026, 11, 1), handed_over=at(2026, 11, 1), org=inv.other)

    now = at(2026, 12, 20)
    statements = {m: metering.statement(inv.acme, 2026, m, now=now) for m in (10, 11, 12)}
    for stmt in statements.values():
        assert stmt.total_cents == sum(r.amount_cents for r in stmt.records)
        acme = set(Reservation.objects.filter(organization=inv.acme).values_list("pk", flat=True))
        assert {r.reservation_id for r in stmt.records} <= acme
    assert statements[11].complete and not statements[12].complete
    totals = metering.monthly_totals(inv.acme, now=now)
    assert {m: totals.get((2026, m), 0) for m in statements} == {
        m: s.total_cents for m, s in statements.items()
    }
    november = statements[11]
    assert november.start == at(2026, 11, 1) and november.end == at(2026, 12, 1)
    seconds_by_reservation: dict[int, int] = {}
    for stmt in statements.values():
        for r in stmt.records:
            assert stmt.start <= r.start < r.end <= stmt.end
            seconds_by_reservation[r.reservation_id] = (
                seconds_by_reservation.get(r.reservation_id, 0) + r.seconds
            )
    # handover 22:00:00.25 counts from 22:00:00; release at 02:00:00.9 until 02:00:00
    assert seconds_by_reservation[on_demand.pk] == int(
        (at(2026, 12, 1, 2) - at(2026, 10, 31, 22)).total_seconds()
    )
    assert seconds_by_reservation[window.pk] == int((at(2026, 12, 3) - at(2026, 10, 30)).total_seconds())
    assert [r.seconds for r in november.records if r.reservation_id == on_demand.pk] == [30 * 86400]
    # the totals over the months are the reservation's spend, to the cent
    for reservation in (on_demand, window):
        assert metering.reservation_spend(reservation, now) == sum(
            r.amount_cents
            for s in statements.values()
            for r in s.records
            if r.reservation_id == reservation.pk
        )
    a100 = [r for r in november.records if r.server_type == "a100-8x"]
    assert [(r.seconds, r.amount_cents) for r in a100] == [(777, 168)]  # 777 s * 7.77 $/h = 167.69 cents
    assert november.by_server_type()[1]["amount_cents"] == sum(
        r.amount_cents for r in november.records if r.server_type == "h100-8x"
    )


def test_a_price_change_mid_reservation_applies_from_its_start_only(inventory, clock):
    inv = inventory
    clock.set(at(2026, 11, 10, 8))
    metering.set_price(inv.h100, 1000, actor=Actor.system("test"))
    lease(inv, "node-h100-8x-01", at(2026, 11, 10, 8), handed_over=at(2026, 11, 10, 9))
    clock.set(at(2026, 11, 10, 12))
    metering.set_price(inv.h100, 3000, actor=Actor.system("test"), effective_from=at(2026, 11, 10, 13))
    with pytest.raises(InvalidRequest, match="past"):
        metering.set_price(inv.h100, 1, actor=Actor.system("test"), effective_from=at(2026, 11, 10, 9))
    clock.set(at(2026, 11, 10, 15))
    stmt = metering.statement(inv.acme, 2026, 11)
    assert not stmt.complete and stmt.as_of == at(2026, 11, 10, 15)
    assert [(r.seconds, r.cents_per_hour, r.amount_cents) for r in stmt.records] == [
        (4 * 3600, 1000, 4000),
        (2 * 3600, 3000, 6000),
    ]
    assert stmt.total_cents == 10000
    inv.h100.refresh_from_db()
    assert inv.h100.hourly_price_cents == 1000  # the catalog shows the price in force when it was set


def test_a_reserved_window_is_billed_as_booked(inventory):
    inv = inventory
    price(inv.h100, 3600, at(2026, 1, 1))  # one cent a second
    # released after one hour of a four-hour window: the four hours are billed
    early = lease(inv, "node-h100-8x-01", at(2026, 11, 2), handed_over=at(2026, 11, 2, 0, 30),
                  window_end=at(2026, 11, 2, 4), ended=at(2026, 11, 2, 1))  # fmt: skip
    # a server replaced after two hours: billed until replaced
    replaced = lease(inv, "node-h100-8x-02", at(2026, 11, 3), window_end=at(2026, 11, 3, 4),
                     ended=at(2026, 11, 3, 2), end_reason="replaced: failed its checks")  # fmt: skip
    # released before the window began: nothing
    cancelled = lease(inv, "node-h100-8x-03", at(2026, 11, 4), window_end=at(2026, 11, 4, 4),
                      ended=at(2026, 11, 3, 12))  # fmt: skip
    # on demand, released before its handover: nothing
    never = lease(inv, "node-h100-8x-04", at(2026, 11, 5), ended=at(2026, 11, 5, 0, 10))
    now = at(2026, 12, 1)
    assert metering.reservation_spend(early, now) == 4 * 3600
    assert metering.reservation_spend(replaced, now) == 2 * 3600
    assert metering.reservation_spend(cancelled, now) == 0
    assert metering.reservation_spend(never, now) == 0
    kinds = {r.reservation_id: r.kind for r in metering.statement(inv.acme, 2026, 11, now=now).records}
    assert kinds == {early.pk: "reserved", replaced.pk: "reserved"}


def test_csv_lists_the_records_and_their_total(inventory):
    inv = inventory
    price(inv.h100, 1999, at(2026, 1, 1))
    lease(
        inv, "node-h100-8x-01", at(2026, 11, 2), handed_over=at(2026, 11, 2), ended=at(2026, 11, 2, 0, 0, 37)
    )
    lease(
        inv, "node-h100-8x-02", at(2026, 11, 2), handed_over=at(2026, 11, 2), ended=at(2026, 11, 9, 3, 1, 1)
    )
    stmt = metering.statement(inv.acme, 2026, 11, now=at(2026, 12, 2))
    lines = metering.statement_csv(stmt).splitlines()
    assert lines[0].split(",") == list(metering.CSV_COLUMNS)
    assert len(lines) == len(stmt.records) + 2
    assert lines[-1].split(",")[-1] == str(stmt.total_cents)
    assert sum(int(line.split(",")[-1]) for line in lines[1:-1]) == stmt.total_cents


def test_a_booking_past_the_monthly_spend_limit_is_refused(inventory, clock):
    inv = inventory
    clock.set(at(2026, 11, 30, 20))
    metering.set_price(inv.h100, 10_000, actor=Actor.system("test"))  # 100 USD per server-hour
    inv.acme.monthly_spend_limit_cents = 50_000  # 500 USD a month
    inv.acme.save()
    # 2 servers x 2 h this month = 400 USD: fits
    first = reserve(inv, 2, ends_at=at(2026, 11, 30, 22))
    assert first.allocations.count() == 2
    # one more server for an hour: 100 USD more, 500 in all: fits exactly
    reserve(inv, 1, ends_at=at(2026, 11, 30, 21))
    # another hour would make 600 USD
    with pytest.raises(QuotaExceeded, match=r"may spend at most 500\.00 USD in November 2026"):
        reserve(inv, 1, ends_at=at(2026, 11, 30, 21))
    assert Reservation.objects.filter(organization=inv.acme).count() == 2
    # open-ended: projected to the end of the month (4 hours = 400 USD) on top of 500: refused
    with pytest.raises(QuotaExceeded):
        reserve(inv, 1)
    # next month has its own limit: a window there fits, one over the limit does not
    reserve(inv, 1, starts_at=at(2026, 12, 1), ends_at=at(2026, 12, 1, 5))
    with pytest.raises(QuotaExceeded, match="December 2026"):
        reserve(inv, 1, starts_at=at(2026, 12, 2), ends_at=at(2026, 12, 2, 1))
    # other organizations are not affected
    reserve(inv, 1, org=inv.other, user=inv.outsider, key=inv.other_key, ends_at=at(2026, 11, 30, 23))


def test_statement_months_run_from_the_first_allocation_to_now(inventory):
    inv = inventory
    lease(
        inv, "node-h100-8x-01", at(2026, 9, 30, 23), handed_over=at(2026, 9, 30, 23), ended=at(2026, 10, 1, 1)
    )
    assert metering.statement_months(inv.acme, now=at(2026, 12, 5)) == [
        (2026, 12),
        (2026, 11),
        (2026, 10),
        (2026, 9),
    ]
    assert metering.statement_months(inv.other, now=at(2026, 12, 5)) == [(2026, 12)]
    with pytest.raises(InvalidRequest):
        metering.parse_month("2026-13")


def test_an_on_demand_server_is_billed_from_its_handover_to_its_release_through_the_real_services(
    inventory, clock
):
    from provisioner.lifecycle import process_event
    from provisioner.services.reservations import release_reservation
    from provisioner.states import NodeEvent

    inv = inventory
    clock.set(at(2026, 11, 30, 23, 0, 0))
    metering.set_price(inv.h100, 3600, actor=Actor.system("test"))  # a cent a second
    reservation = reserve(inv)
    node = Node.objects.get(reservation=reservation)
    clock.advance(minutes=20)  # provisioning is not billed
    for event in (NodeEvent.DEPLOY, NodeEvent.DEPLOYED):
        node = process_event(node, event, actor=Actor.system("engine"))
    assert metering.reservation_spend(reservation) == 0
    clock.advance(minutes=10)
    node = process_event(node, NodeEvent.BURNIN_PASSED, actor=Actor.system("engine"))  # handover: 23:30
    clock.advance(hours=1, milliseconds=500)  # into December
    assert metering.reservation_spend(reservation) == 3600
    release_reservation(reservation, actor=Actor.system("test"))
    clock.advance(hours=5)
    assert metering.reservation_spend(reservation) == 3600
    november = metering.statement(inv.acme, 2026, 11)
    december = metering.statement(inv.acme, 2026, 12)
    assert [(r.start, r.end) for r in november.records] == [(at(2026, 11, 30, 23, 30), at(2026, 12, 1))]
    assert [(r.start, r.end) for r in december.records] == [(at(2026, 12, 1), at(2026, 12, 1, 0, 30))]
    assert november.total_cents + december.total_cents == 3600


def test_on_demand_billing_stops_when_a_held_server_goes_out_of_service(inventory, clock):
    from provisioner.lifecycle import process_event
    from provisioner.services import nodes as node_service
    from provisioner.states import NodeEvent

    inv = inventory
    clock.set(at(2026, 11, 10, 10))
    metering.set_price(inv.h100, 3600, actor=Actor.system("test"))
    reservation = reserve(inv)
    node = Node.objects.get(reservation=reservation)
    for event in (NodeEvent.DEPLOY, NodeEvent.DEPLOYED, NodeEvent.BURNIN_PASSED):
        node = process_event(node, event, actor=Actor.system("engine"))
    Operation.objects.filter(reservation=reservation).update(state=OperationState.SUCCEEDED)
    clock.advance(minutes=10)
    node_service.quarantine(node, actor=Actor.system("operator"), reason="fan", force=True)
    clock.advance(hours=3)  # still held by the reservation, no longer serving
    assert Node.objects.get(pk=node.pk).reservation_id == reservation.pk
    assert metering.reservation_spend(reservation) == 600
