"""Reservations: windows, capacity, quota, idempotency, extend, release, and no double booking under races."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection, connections
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from provisioner.engine.queue import site_queue
from provisioner.errors import CapacityError, InvalidRequest, QuotaExceeded
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, Node, Reservation
from provisioner.services.reservations import (
    availability,
    book_servers,
    expire_reservations,
    extend_reservation,
    release_reservation,
    start_due_reservations,
)
from provisioner.states import NodeState, OperationKind, ReservationState

HOUR = dt.timedelta(hours=1)


def _reserve(inv, count, **kw):
    kw.setdefault("image", inv.image)
    kw.setdefault("ssh_keys", [inv.key])
    kw.setdefault("actor", Actor(user=inv.owner, label="olivia"))
    return book_servers(kw.pop("org", inv.acme), kw.pop("server_type", inv.h100), count, **kw).reservation


@pytest.mark.django_db
def test_reserve_now_takes_available_nodes_and_queues_provisioning(
    inventory, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        r = _reserve(inventory, 2)
    assert r.state == ReservationState.PROVISIONING
    nodes = list(Node.objects.filter(reservation=r))
    assert len(nodes) == 2
    assert {n.state for n in nodes} == {NodeState.RESERVED}
    assert {n.owner_id for n in nodes} == {inventory.acme.pk}
    assert set(r.operations.values_list("kind", flat=True)) == {OperationKind.PROVISION}
    # one queued task per node on its site's queue, inserted together after commit
    assert len(callbacks) == 1 and not DBTaskResult.objects.exists()
    callbacks[0]()
    tasks = DBTaskResult.objects.all()
    assert sorted(t.args_kwargs["args"][0] for t in tasks) == sorted(
        r.operations.values_list("pk", flat=True)
    )
    assert {t.queue_name for t in tasks} == {site_queue(nodes[0].rack.site.slug)}
    assert availability(inventory.h100) == 2


@pytest.mark.django_db
def test_not_enough_capacity_books_nothing(inventory):
    with pytest.raises(CapacityError, match=r"not enough capacity: 4 .* free for that window, 5 requested"):
        _reserve(inventory, 5)
    assert Reservation.objects.count() == 0
    assert Allocation.objects.count() == 0
    assert Node.objects.filter(state=NodeState.AVAILABLE).count() == 6


@pytest.mark.django_db
def test_future_window_books_nodes_busy_now_but_free_then(inventory):
    now = timezone.now()
    _reserve(inventory, 4, ends_at=now + HOUR)  # the whole h100 pool for the next hour
    with pytest.raises(CapacityError):
        _reserve(inventory, 1, ends_at=now + 2 * HOUR)
    later = _reserve(
        inventory,
        4,
        org=inventory.other,
        ssh_keys=[inventory.other_key],
        starts_at=now + HOUR,
        ends_at=now + 3 * HOUR,
    )
    assert later.state == ReservationState.SCHEDULED
    with pytest.raises(CapacityError):
        _reserve(inventory, 1, starts_at=now + 2 * HOUR, ends_at=now + 4 * HOUR)


@pytest.mark.django_db
def test_future_window_prefers_nodes_idle_now(inventory):
    now = _reserve(inventory, 2, ends_at=timezone.now() + HOUR)
    later = _reserve(inventory, 2, starts_at=timezone.now() + 2 * HOUR, ends_at=timezone.now() + 3 * HOUR)
    busy_now = set(now.allocations.values_list("node__name", flat=True))
    assert busy_now == {"node-h100-8x-01", "node-h100-8x-02"}
    assert set(later.allocations.values_list("node__name", flat=True)) == {
        "node-h100-8x-03",
        "node-h100-8x-04",
    }
    assert set(later.allocations.values_list("starts_at", "ends_at").distinct()) == {
        (later.starts_at, later.ends_at)
    }


@pytest.mark.django_db
def test_open_ended_reservation_blocks_all_future_windows_of_its_nodes(inventory):
    _reserve(inventory, 4)  # no end
    with pytest.raises(CapacityError):
        _reserve(inventory, 1, starts_at=timezone.now() + 100 * HOUR, ends_at=timezone.now() + 101 * HOUR)


@pytest.mark.django_db
def test_bad_windows_and_counts_are_refused_with_clear_messages(inventory):
    now = timezone.now()
    with pytest.raises(InvalidRequest, match="end after it starts"):
        _reserve(inventory, 1, starts_at=now + HOUR, ends_at=now + HOUR)
    with pytest.raises(InvalidRequest, match="past"):
        _reserve(inventory, 1, starts_at=now - 10 * HOUR)
    with pytest.raises(InvalidRequest, match="count must be between"):
        _reserve(inventory, 0)
    with pytest.raises(InvalidRequest, match="SSH key"):
        _reserve(inventory, 1, ssh_keys=[])
    with pytest.raises(InvalidRequest, match="belong to the reserving organization"):
        _reserve(inventory, 1, ssh_keys=[inventory.other_key])


@pytest.mark.django_db
def test_quota_limits_servers_held_at_once(inventory):
    inventory.acme.server_quota = 3
    inventory.acme.save()
    _reserve(inventory, 2)
    with pytest.raises(QuotaExceeded, match="may hold 3 servers at once; it holds 2"):
        _reserve(inventory, 2)


@pytest.mark.django_db
def test_extend_is_refused_when_the_extra_time_would_exceed_the_quota(inventory):
    inventory.acme.server_quota = 2
    inventory.acme.save()
    now = timezone.now()
    first = _reserve(inventory, 2, starts_at=now + HOUR, ends_at=now + 2 * HOUR)
    # Another type, right after the first window: within the quota, as the two never overlap.
    _reserve(inventory, 2, server_type=inventory.a100, starts_at=now + 2 * HOUR, ends_at=now + 3 * HOUR)
    with pytest.raises(QuotaExceeded, match="may hold 2 servers at once; it holds 2"):
        extend_reservation(first, now + 3 * HOUR, actor=Actor.system("test"))
    first.refresh_from_db()
    assert first.ends_at == now + 2 * HOUR
    assert set(first.allocations.values_list("ends_at", flat=True)) == {now + 2 * HOUR}
    inventory.acme.server_quota = 4
    inventory.acme.save()
    assert extend_reservation(first, now + 3 * HOUR, actor=Actor.system("test")).ends_at == now + 3 * HOUR


@pytest.mark.django_db
def test_idempotency_key_never_books_twice(inventory):
    first = _reserve(inventory, 1, idempotency_key="abc-123")
    again = _reserve(inventory, 1, idempotency_key="abc-123")
    assert again.pk == first.pk
    assert Allocation.objects.filter(active=True).count() == 1


@pytest.mark.django_db
def test_extend_moves_the_end_unless_the_node_is_booked_after(inventory):
    now = timezone.now()
    r = _reserve(inventory, 4, ends_at=now + HOUR)
    r = extend_reservation(r, now + 2 * HOUR, actor=Actor.system("test"))
    assert r.ends_at == now + 2 * HOUR
    assert set(r.allocations.values_list("ends_at", flat=True)) == {now + 2 * HOUR}
    _reserve(
        inventory,
        1,
        org=inventory.other,
        ssh_keys=[inventory.other_key],
        starts_at=now + 2 * HOUR,
        ends_at=now + 5 * HOUR,
    )
    with pytest.raises(CapacityError, match="cannot extend"):
        extend_reservation(r, now + 3 * HOUR, actor=Actor.system("test"))
    r.refresh_from_db()
    assert r.ends_at == now + 2 * HOUR
    with pytest.raises(InvalidRequest, match="later than the current end"):
        extend_reservation(r, now + HOUR, actor=Actor.system("test"))


@pytest.mark.django_db
def test_release_returns_capacity_and_queues_wipe(inventory):
    r = _reserve(inventory, 2)
    r = release_reservation(r, actor=Actor.system("test"))
    assert r.state == ReservationState.RELEASING
    assert set(Node.objects.filter(pk__in=r.allocations.values("node")).values_list("state", flat=True)) == {
        NodeState.RELEASING
    }
    assert r.operations.filter(kind=OperationKind.RELEASE).count() == 2
    assert r.operations.filter(kind=OperationKind.PROVISION, cancel_requested=True).count() == 2
    assert Allocation.objects.filter(reservation=r, active=True).count() == 0
    # idempotent
    assert release_reservation(r, actor=Actor.system("test")).state == ReservationState.RELEASING


@pytest.mark.django_db
def test_window_end_releases_automatically_and_scheduled_windows_start(inventory):
    now = timezone.now()
    r = _reserve(inventory, 1, ends_at=now + HOUR)
    future = _reserve(inventory, 1, starts_at=now + HOUR, ends_at=now + 2 * HOUR)
    assert future.state == ReservationState.SCHEDULED
    assert expire_reservations() == 0
    Reservation.objects.filter(pk=r.pk).update(ends_at=now - dt.timedelta(seconds=1), starts_at=now - HOUR)
    Allocation.objects.filter(reservation=r).update(
        ends_at=now - dt.timedelta(seconds=1), starts_at=now - HOUR
    )
    assert expire_reservations() == 1
    r.refresh_from_db()
    assert r.state == ReservationState.RELEASING
    Reservation.objects.filter(pk=future.pk).update(starts_at=now - dt.timedelta(seconds=1))
    assert start_due_reservations() == 1
    future.refresh_from_db()
    assert future.state == ReservationState.PROVISIONING
    assert Node.objects.filter(reservation=future, state=NodeState.RESERVED).count() == 1


def _race(inventory, clients: int, count: int, starts_at=None, ends_at=None) -> tuple[int, list[str]]:
    """Start ``clients`` threads at once, each reserving ``count`` servers; return (successes, errors)."""
    barrier = threading.Barrier(clients)
    successes = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            barrier.wait()
            _reserve(inventory, count, starts_at=starts_at, ends_at=ends_at, idempotency_key=f"race-{i}")
            with lock:
                successes.append(i)
        except CapacityError as exc:
            with lock:
                errors.append(str(exc))
        except Exception as exc:  # anything else is a failure of the test
            with lock:
                errors.append(f"UNEXPECTED {type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return len(successes), errors


@pytest.mark.django_db(transaction=True)
def test_concurrent_reservations_for_the_last_servers_never_double_book(inventory):
    """12 clients race for 4 free servers, one each: exactly 4 succeed, 8 get 'not enough capacity'."""
    ok, errors = _race(inventory, clients=12, count=1)
    assert ok == 4, errors
    assert len(errors) == 8 and all(e.startswith("not enough capacity") for e in errors), errors
    assert Allocation.objects.filter(active=True).count() == 4
    assert Allocation.objects.filter(active=True).values("node").distinct().count() == 4


@pytest.mark.django_db(transaction=True)
def test_concurrent_future_window_reservations_never_overlap(inventory):
    """Races for a future window (no node state changes, only allocations) on the same 4 nodes."""
    start = timezone.now() + 10 * HOUR
    ok, errors = _race(inventory, clients=10, count=2, starts_at=start, ends_at=start + HOUR)
    assert ok == 2, errors
    assert all(e.startswith("not enough capacity") for e in errors), errors
    assert Allocation.objects.filter(active=True).values("node").distinct().count() == 4


@pytest.mark.django_db(transaction=True)
def test_postgres_exclusion_constraint_rejects_overlapping_allocations(inventory):
    if connection.vendor != "postgresql":
        pytest.skip("exclusion constraints exist on PostgreSQL only; SQLite relies on IMMEDIATE transactions")
    from django.db import IntegrityError

    r = _reserve(inventory, 1, starts_at=timezone.now() + HOUR, ends_at=timezone.now() + 3 * HOUR)
    alloc = r.allocations.get()
    with pytest.raises(IntegrityError, match="allocation_no_overlap"):
        Allocation.objects.create(
            reservation=r, node=alloc.node, starts_at=alloc.starts_at + HOUR / 2, ends_at=alloc.ends_at + HOUR
        )


@pytest.mark.django_db(transaction=True)
def test_quota_holds_under_concurrent_reservations_of_several_server_types(inventory):
    """The organization's row lock makes the quota exact even across server types (separate type locks)."""
    inventory.acme.server_quota = 2
    inventory.acme.save()
    barrier = threading.Barrier(6)
    outcomes: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        try:
            barrier.wait()
            _reserve(inventory, 1, server_type=inventory.h100 if i % 2 else inventory.a100)
            result = "ok"
        except QuotaExceeded:
            result = "quota"
        except Exception as exc:
            result = f"UNEXPECTED {type(exc).__name__}: {exc}"
        finally:
            connections.close_all()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(outcomes) == ["ok", "ok", "quota", "quota", "quota", "quota"], outcomes
    assert Allocation.objects.filter(active=True, reservation__organization=inventory.acme).count() == 2


@pytest.mark.django_db(transaction=True)
def test_the_server_type_lock_covers_only_choosing_and_allocating_nodes(inventory):
    """Every reservation of a type waits for its lock: after taking it, one statement chooses the free nodes
    and allocates them, then the transaction commits. (PostgreSQL: on SQLite the IMMEDIATE transaction is
    the lock.)"""
    if connection.vendor != "postgresql":
        pytest.skip("row locks exist on PostgreSQL only")
    from django.test.utils import CaptureQueriesContext

    for starts_at in (None, timezone.now() + HOUR):
        with CaptureQueriesContext(connection) as ctx:
            _reserve(inventory, 1, starts_at=starts_at, ends_at=timezone.now() + 2 * HOUR)
        sql = [q["sql"] for q in ctx.captured_queries]
        locked = next(
            i for i, q in enumerate(sql) if 'FROM "provisioner_servertype"' in q and "FOR NO KEY" in q
        )
        commit = next(i for i, q in enumerate(sql) if i > locked and q.startswith("COMMIT"))
        under_lock = sql[locked + 1 : commit]
        assert len(under_lock) == 1, under_lock
        assert under_lock[0].startswith('INSERT INTO "provisioner_allocation"')
        assert 'FROM "provisioner_node"' in under_lock[0]


@pytest.mark.django_db
def test_a_window_booked_now_but_not_started_is_started_by_the_scheduler(inventory, monkeypatch):
    """Booking commits first; should starting the servers fail, the reservation stays booked and scheduled,
    and the scheduler's next pass starts it."""
    from django.db import DatabaseError

    from provisioner.services import reservations

    def broken(*args, **kwargs):
        raise DatabaseError("connection lost")

    monkeypatch.setattr(reservations, "start_provisioning_many", broken)
    r = _reserve(inventory, 2)
    assert r.state == ReservationState.SCHEDULED
    assert Allocation.objects.filter(reservation=r, active=True).count() == 2
    assert not Node.objects.filter(reservation=r).exists()
    monkeypatch.undo()
    assert start_due_reservations() == 2
    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING
    assert Node.objects.filter(reservation=r, state=NodeState.RESERVED).count() == 2
    assert set(r.operations.values_list("kind", flat=True)) == {OperationKind.PROVISION}


@pytest.mark.django_db
def test_a_reservation_released_before_its_servers_are_started_never_leases_them(inventory, monkeypatch):
    """Between the booking's commit and the start of its servers (or between the scheduler reading a due
    window and starting it) the reservation may be released: its servers must then stay in the pool, not be
    leased to a reservation that is over."""
    from provisioner.services import reservations

    start_nodes = reservations._start_nodes

    def released_first(reservation, nodes, actor):
        release_reservation(reservation, actor=Actor.system("test"))
        return start_nodes(reservation, nodes, actor)

    monkeypatch.setattr(reservations, "_start_nodes", released_first)
    booking = book_servers(
        inventory.acme,
        inventory.h100,
        2,
        image=inventory.image,
        ssh_keys=[inventory.key],
        actor=Actor.system("t"),
    )
    assert booking.operations == [] and booking.started == []
    r = Reservation.objects.get(pk=booking.reservation.pk)
    assert r.state == ReservationState.RELEASED
    assert not Node.objects.filter(reservation=r).exists()
    assert Node.objects.filter(server_type=inventory.h100, state=NodeState.AVAILABLE).count() == 4
    assert not r.operations.exists()

    due = _reserve(inventory, 1, starts_at=timezone.now() + HOUR)  # then its window comes due
    Reservation.objects.filter(pk=due.pk).update(starts_at=timezone.now())
    assert start_due_reservations() == 0
    due.refresh_from_db()
    assert due.state == ReservationState.RELEASED
    assert Node.objects.filter(server_type=inventory.h100, state=NodeState.AVAILABLE).count() == 4


@pytest.mark.django_db
def test_a_window_extended_while_the_scheduler_expires_windows_is_not_released(inventory, monkeypatch):
    # The scheduler lists the windows that have ended, then releases them one by one: a customer's extend
    # committed in between must keep the servers (they were wiped while the extended window was open).
    from provisioner.services import reservations

    now = timezone.now()
    r = _reserve(inventory, 1, ends_at=now + HOUR)
    ended = now - dt.timedelta(seconds=1)
    Reservation.objects.filter(pk=r.pk).update(starts_at=now - HOUR, ends_at=ended)
    Allocation.objects.filter(reservation=r).update(starts_at=now - HOUR, ends_at=ended)
    release = reservations.release_reservation

    def extended_first(reservation, **kwargs):
        extend_reservation(reservation, now + 3 * HOUR, actor=Actor(user=inventory.owner, label="olivia"))
        return release(reservation, **kwargs)

    monkeypatch.setattr(reservations, "release_reservation", extended_first)
    assert expire_reservations() == 0

    r.refresh_from_db()
    assert r.state == ReservationState.PROVISIONING and r.ends_at == now + 3 * HOUR
    assert Allocation.objects.filter(reservation=r, active=True).count() == 1
    assert Node.objects.get(pk=r.allocations.get().node_id).reservation_id == r.pk


def _worker_killed_after_finishing(op) -> None:
    """The operation is marked finished, but its worker dies before the finished-operation hook runs."""
    from provisioner.models import Operation
    from provisioner.states import OperationState

    Operation.objects.filter(pk=op.pk).update(state=OperationState.SUCCEEDED, finished_at=timezone.now())


@pytest.mark.django_db
def test_a_reservation_whose_servers_all_came_up_turns_active_even_if_the_last_hook_never_ran(inventory):
    from provisioner.services.periodics import housekeeping_pass

    r = _reserve(inventory, 1)
    node = Node.objects.get(reservation=r)
    Node.objects.filter(pk=node.pk).update(state=NodeState.ACTIVE)  # finish_provision committed
    _worker_killed_after_finishing(r.operations.get(kind=OperationKind.PROVISION))

    housekeeping_pass()

    r.refresh_from_db()
    assert r.state == ReservationState.ACTIVE


@pytest.mark.django_db
def test_a_release_whose_wipes_all_finished_settles_even_if_the_last_hook_never_ran(inventory):
    from provisioner.services.periodics import housekeeping_pass

    r = release_reservation(_reserve(inventory, 1), actor=Actor.system("test"))
    assert r.state == ReservationState.RELEASING
    release = r.operations.get(kind=OperationKind.RELEASE)
    Node.objects.filter(pk=release.node_id).update(state=NodeState.AVAILABLE)  # finish_clean committed
    r.operations.filter(kind=OperationKind.PROVISION).update(state="cancelled")
    _worker_killed_after_finishing(release)

    housekeeping_pass()

    r.refresh_from_db()
    assert r.state == ReservationState.RELEASED


@pytest.mark.django_db
def test_a_window_that_ended_while_the_scheduler_was_down_is_not_provisioned_just_to_be_wiped(inventory):
    from provisioner.services.periodics import housekeeping_pass

    now = timezone.now()
    r = _reserve(inventory, 1, starts_at=now + HOUR, ends_at=now + 2 * HOUR)
    node = r.allocations.get().node
    Reservation.objects.filter(pk=r.pk).update(starts_at=now - 2 * HOUR, ends_at=now - HOUR)
    Allocation.objects.filter(reservation=r).update(starts_at=now - 2 * HOUR, ends_at=now - HOUR)

    housekeeping_pass()

    r.refresh_from_db()
    assert r.state == ReservationState.RELEASED and r.status_message == "reservation window ended"
    assert not r.operations.exists()
    node.refresh_from_db()
    assert node.state == NodeState.AVAILABLE and node.reservation_id is None


@pytest.mark.django_db
@pytest.mark.parametrize("starts_in", [None, HOUR])
@pytest.mark.parametrize("open_ended", [False, True])
@pytest.mark.parametrize("unfit", [(), (2,)])
def test_the_free_nodes_statement_built_once_per_shape_is_what_the_orm_builds(
    inventory, starts_in, open_ended, unfit
):
    """_allocate's SELECT is compiled once per shape with a sentinel window; each booking's, with its own
    window put in, is the statement the ORM builds for that booking."""
    from django.db.models import Case, F, When

    from provisioner.services.reservations import _free_nodes_statement, free_nodes

    image_pk = 7  # warm servers of the booked image first, then idle ones, then warm ones of another image
    for offset in (dt.timedelta(0), dt.timedelta(seconds=20)):  # the second one comes from the cache
        start = timezone.now() + (starts_in or dt.timedelta(0)) + offset
        end = None if open_ended else start + 2 * HOUR
        starts_now = starts_in is None
        orm = (
            free_nodes(inventory.h100, start, end, unfit=unfit)
            .order_by(
                Case(
                    When(state=NodeState.WARM, image_id=image_pk, then=0),
                    When(state=NodeState.AVAILABLE, then=1),
                    When(state=NodeState.WARM, then=2),
                    default=3,
                ),
                "name",
            )
            .values(node_id=F("pk"))[:2]
        )
        sql, params = orm.query.sql_with_params()
        built = _free_nodes_statement(inventory.h100, start, end, unfit, 2, starts_now, image_pk)
        assert built == (sql, list(params))
