"""Reserving whole servers for a window, extending, releasing, and the scheduler's window handling.

Double booking is impossible by construction:
- every reservation is made inside one transaction that takes a lock serializing reservations of the
  same server type (``SELECT ... FOR NO KEY UPDATE`` of the ServerType row on PostgreSQL; on SQLite the
  IMMEDIATE transaction mode takes the database write lock at BEGIN), then reads which nodes are free in the
  window and writes allocations;
- on PostgreSQL an exclusion constraint (migration 0002) rejects two active overlapping allocations of one
  node even if some future code path forgot the lock.

Only nodes whose record passes their drivers' ``validate`` are offered (counted as available, allocated, taken
as spares): a customer cannot fix node data, so a node that would fail its deploy is left out of the pool and
its problem shown to operators (the admin API's node detail, ``manage.py nodes show``) instead. Which nodes
fail is worked out before the lock (validation is Python over the node records, not SQL) and passed into the
statement that allocates; a node edited into a bad record in between is still found by its deploy step, as
before validation existed.

Every reservation of a type waits for that lock, so it is held for as little as possible: the reservation
row, its keys, its audit record and the quota check come first, and only "which nodes are free" and the
allocations that take them come after it; the commit releases it. A window that starts now is then started
in a second, short transaction, the way the scheduler starts a window that has come due (and the scheduler
finishes the job should this process die in between). Lock order: organization, then server type, then
(at network-managed sites only) the site's network row, under which the booking's tenant network, VLAN and
addresses are chosen (provisioner/networking.py); all FOR NO KEY UPDATE so that they never wait for the
key-share locks that inserting rows referencing them take. A booking with no managed site adds nothing under
the type's lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from django.conf import settings
from django.db import DatabaseError, IntegrityError, connection, models, transaction
from django.db.models import Case, Count, F, OuterRef, Q, QuerySet, Subquery, When
from django.db.models.functions import Coalesce
from django.utils import timezone

from provisioner import hardware, networking, prepared
from provisioner.engine.queue import create_operations, enqueue_many, site_queue, wake
from provisioner.errors import CapacityError, IllegalTransition, InvalidRequest, QuotaExceeded
from provisioner.lifecycle import Actor, process_events, record
from provisioner.models import (
    Allocation,
    Image,
    Node,
    Operation,
    Organization,
    Reservation,
    ServerType,
    SSHKey,
)
from provisioner.prepared import PreparedQuery, joined, joined_columns
from provisioner.services import metering
from provisioner.states import (
    ALLOCATABLE_STATES,
    FREE_NOW_STATES,
    LEASED_STATES,
    OPEN_OPERATION_STATES,
    OPEN_RESERVATION_STATES,
    NodeEvent,
    NodeState,
    OperationKind,
    ReservationState,
)
from provisioner.transactions import requires_transaction

log = logging.getLogger(__name__)

# A window starting within this much of now counts as "now": provisioning starts at once.
START_NOW_SLACK = dt.timedelta(seconds=60)
MAX_SERVERS_PER_RESERVATION = 256


def _overlapping(starts_at: dt.datetime, ends_at: dt.datetime | None) -> Q:
    """Allocations overlapping [starts_at, ends_at); a None end means open-ended."""
    q = Q(ends_at__isnull=True) | Q(ends_at__gt=starts_at)
    if ends_at is not None:
        q &= Q(starts_at__lt=ends_at)
    return q


@requires_transaction
def lock_server_type(server_type: ServerType) -> None:
    """Serialize reservations of this server type until the transaction ends.

    NO KEY UPDATE, not UPDATE: it must not wait for the key-share locks that inserting a reservation of this
    type takes (the reservation row is written before this lock is taken), and it still excludes every
    other holder of this lock.
    """
    _LOCK_SERVER_TYPE.rows(server_type.pk)


_LOCK_SERVER_TYPE = PreparedQuery(
    lambda pk: ServerType.objects.select_for_update(no_key=True).filter(pk=pk).order_by().values_list("pk"),
    prepared.INT,
)


def _candidates(server_type: ServerType) -> QuerySet[Node]:
    """Nodes of this type that may be booked at all, whatever the window: in an allocatable state and not
    asked to be held (a node an operator asked to hold once free takes no new bookings)."""
    return Node.objects.filter(server_type=server_type, hold_requested="", state__in=ALLOCATABLE_STATES)


def unfit_node_ids(server_type: ServerType) -> list[int]:
    """The bookable nodes of this type whose record fails their drivers' validation (see the module's
    docstring): they are left out of the pool. Call outside the server type's lock; cheap (no I/O but the
    query: a few microseconds of Python per node)."""
    return _pool(server_type)[0]


def _pool(server_type: ServerType) -> tuple[list[int], bool]:
    """``unfit_node_ids``, and whether any bookable node of the type is at a network-managed site (else a
    booking of it gets no tenant network: nothing to allocate under its lock), read in one query."""
    rows = _CANDIDATE_RECORDS.rows(server_type.pk)
    managed = any(row[hardware.SITE_NETWORK_COLUMN] is not None for row in rows)
    return sorted(hardware.unfit_records(server_type, rows)), managed


_CANDIDATE_RECORDS = PreparedQuery(
    lambda pk: _candidates(ServerType(pk=pk)).order_by().values_list(*hardware.RECORD_COLUMNS),
    prepared.INT,
)


def free_nodes(
    server_type: ServerType,
    starts_at: dt.datetime,
    ends_at: dt.datetime | None,
    *,
    unfit: Collection[int] = (),
    starts_now: bool | None = None,
) -> QuerySet[Node]:
    """Nodes of this type that can be allocated for the window (call inside the reservation transaction),
    but for the ``unfit`` ones (``unfit_node_ids``). ``starts_now``: whether the window starts now (by
    default worked out from ``starts_at``): then only nodes available now are free."""
    if starts_now is None:
        starts_now = starts_at <= timezone.now() + START_NOW_SLACK
    busy = Allocation.objects.filter(_overlapping(starts_at, ends_at), active=True).values("node_id")
    nodes = _candidates(server_type).exclude(pk__in=busy)
    if unfit:
        nodes = nodes.exclude(pk__in=list(unfit))
    if starts_now:
        return nodes.filter(state__in=FREE_NOW_STATES)
    return nodes


def availability(
    server_type: ServerType, starts_at: dt.datetime | None = None, ends_at: dt.datetime | None = None
) -> int:
    """How many servers of this type could be reserved for the window right now (nodes that fail validation
    are not counted)."""
    unfit = unfit_node_ids(server_type)
    return free_nodes(server_type, starts_at or timezone.now(), ends_at, unfit=unfit).count()


def _validate_window(
    starts_at: dt.datetime | None, ends_at: dt.datetime | None
) -> tuple[dt.datetime, dt.datetime | None]:
    now = timezone.now()
    start = starts_at or now
    if timezone.is_naive(start) or (ends_at is not None and timezone.is_naive(ends_at)):
        raise InvalidRequest("times must include a timezone (e.g. 2026-12-01T09:00:00Z)")
    if start < now - START_NOW_SLACK:
        raise InvalidRequest("the window cannot start in the past")
    start = max(start, now)
    if ends_at is not None and ends_at <= start:
        raise InvalidRequest("the window must end after it starts")
    _check_horizon(ends_at or start, now)
    return start, ends_at


def _check_horizon(moment: dt.datetime, now: dt.datetime) -> None:
    """Bookings reach at most NEOCLOUD_MAX_BOOKING_DAYS ahead: a window starting or ending in ten years
    would hold servers through every hardware refresh until then.

    :raises InvalidRequest: ``moment`` lies beyond the horizon.
    """
    days = settings.NEOCLOUD_MAX_BOOKING_DAYS
    if moment > now + dt.timedelta(days=days):
        raise InvalidRequest(
            f"reservations can be booked at most {days} days ahead (until "
            f"{(now + dt.timedelta(days=days)).date().isoformat()}); leave the end out to keep the servers "
            "until you release them"
        )


@requires_transaction
def _check_quota(
    org: Organization,
    count: int,
    starts_at: dt.datetime,
    ends_at: dt.datetime | None,
    server_type: ServerType | None = None,
) -> None:
    """Refuse if the organization would hold more than its quota in the window, or (with ``server_type``,
    and a monthly spend limit set) spend more than its limit in a month (metering.check_spend_limit). Call
    inside a transaction: it locks the organization's row until the end, so two reservations of one
    organization (of any server types) cannot both see room for themselves."""
    quota, spend_limit = _lock_organization(org.pk)
    if ends_at is None:
        held = _HELD_OPEN_ENDED.rows(org.pk, starts_at)[0][0]
    else:
        held = _HELD_IN_WINDOW.rows(org.pk, starts_at, ends_at)[0][0]
    if held + count > quota:
        raise QuotaExceeded(
            f"{org.name} may hold {quota} servers at once; it holds {held} in that window "
            f"and asked for {count} more"
        )
    if spend_limit is not None and server_type is not None:
        metering.check_spend_limit(org, spend_limit, server_type, count, starts_at, ends_at)


def _held(org_id: Any, starts_at: dt.datetime, ends_at: dt.datetime | None) -> QuerySet[Allocation, Any]:
    """How many servers the organization holds in the window (one row: the count)."""
    return (
        Allocation.objects.filter(
            _overlapping(starts_at, ends_at), active=True, reservation__organization_id=org_id
        )
        .order_by()
        .values("reservation__organization_id")
        .annotate(held=Count("node_id", distinct=True))
        .values_list("held")
    )


# The quota check's count, in the two shapes a window has (open-ended or not). A group by the organization
# gives no row when it holds nothing: Coalesce over a scalar subquery gives the 0 then.
_HELD_OPEN_ENDED = PreparedQuery(
    lambda org_id, start: (
        Organization.objects.filter(pk=org_id)
        .annotate(held=Coalesce(Subquery(_held(OuterRef("pk"), start, None)), 0))
        .values_list("held")
    ),
    prepared.INT,
    prepared.DATETIME,
)
_HELD_IN_WINDOW = PreparedQuery(
    lambda org_id, start, end: (
        Organization.objects.filter(pk=org_id)
        .annotate(held=Coalesce(Subquery(_held(OuterRef("pk"), start, end)), 0))
        .values_list("held")
    ),
    prepared.INT,
    prepared.DATETIME,
    prepared.DATETIME,
)


@requires_transaction
def _lock_organization(org_id: int) -> tuple[int, int | None]:
    """Serialize quota checks of this organization until the transaction ends; return its server quota and
    its monthly spend limit (cents, or None)."""
    row = _LOCK_ORGANIZATION.rows(org_id)[0]
    return row[0], row[1]


_LOCK_ORGANIZATION = PreparedQuery(
    lambda pk: (
        Organization.objects.select_for_update(no_key=True)
        .filter(pk=pk)
        .order_by()
        .values_list("server_quota", "monthly_spend_limit_cents")
    ),
    prepared.INT,
)


@dataclasses.dataclass(frozen=True)
class Booking:
    """What book_servers did: the reservation, the nodes it started (by name) and the provisioning
    operations it queued for them (newest first, no step run yet). A ``replay`` is the reservation an
    earlier request with the same idempotency key made; nothing else about it is known here."""

    reservation: Reservation
    started: list[Node]
    operations: list[Operation]
    replay: bool = False
    # whether its servers got tenant networks (a site of theirs is network-managed): when not, nobody needs
    # to read them back
    networked: bool = True


def book_servers(
    org: Organization,
    server_type: ServerType,
    count: int,
    *,
    image: Image,
    actor: Actor,
    starts_at: dt.datetime | None = None,
    ends_at: dt.datetime | None = None,
    ssh_keys: Iterable[SSHKey] = (),
    name: str = "",
    idempotency_key: str = "",
) -> Booking:
    """Reserve ``count`` whole servers of ``server_type`` for [starts_at, ends_at).

    Starts provisioning at once when the window starts now; otherwise the scheduler starts it.
    A repeated ``idempotency_key`` returns the reservation made the first time instead of booking again
    (a ``replay``). The Booking also says what was started, so callers that show the result need not read
    it back; callers that need only the reservation take ``book_servers(...).reservation``.

    :raises CapacityError: fewer than ``count`` servers are free in the window (nothing is booked); nodes
        that fail validation are not free.
    :raises QuotaExceeded, InvalidRequest: (InvalidRequest also: the type's deploy driver cannot write
        ``image``, e.g. it has no valid sha256: the customer can choose another)
    """
    if count < 1 or count > MAX_SERVERS_PER_RESERVATION:
        raise InvalidRequest(f"count must be between 1 and {MAX_SERVERS_PER_RESERVATION}")
    keys = list({k.pk: k for k in ssh_keys}.values())
    if not keys:
        raise InvalidRequest("at least one SSH key is needed to reach the servers")
    if any(k.organization_id != org.pk for k in keys):
        raise InvalidRequest("SSH keys must belong to the reserving organization")
    if idempotency_key:
        existing = Reservation.objects.filter(organization=org, idempotency_key=idempotency_key).first()
        if existing is not None:
            return Booking(existing, [], [], replay=True)
    start, end = _validate_window(starts_at, ends_at)
    problem = hardware.image_problem(server_type, image)
    if problem:
        raise InvalidRequest(f"image {image.slug} {problem}; choose another image")
    # before the transaction: on SQLite it holds the database's write lock from its first statement
    # No bookable node at a network-managed site: no statement added under the type's lock. A node it
    # allocates is one of these (a site made managed since is the next booking's, as it always was).
    unfit, managed = _pool(server_type)
    starts_now = start <= timezone.now() + START_NOW_SLACK
    try:
        with transaction.atomic():
            # Nothing of this is visible to others before the commit: write it before taking the lock.
            reservation = Reservation.objects.create(
                organization=org,
                created_by=actor.user,
                server_type=server_type,
                count=count,
                image=image,
                authorized_keys=[k.public_key for k in keys],
                name=name,
                starts_at=start,
                ends_at=end,
                # A window starting now is started right after the booking commits (_start_nodes).
                state=ReservationState.SCHEDULED,
                idempotency_key=idempotency_key,
            )
            reservation.ssh_keys.add(*keys)
            record(actor, "reserve", reservation=reservation, reason=f"{count}x {server_type.slug}")
            _check_quota(org, count, start, end, server_type)
            node_ids = _allocate(reservation, server_type, count, start, end, unfit)
            # The servers' tenant network, addresses and public addresses, or nothing at all (CapacityError).
            if managed:
                reservation.organization = org
                networking.allocate_networks(reservation, node_ids)
    except IntegrityError as exc:
        if idempotency_key and "idempotency" in str(exc).lower():
            replay = Reservation.objects.get(organization=org, idempotency_key=idempotency_key)
            return Booking(replay, [], [], replay=True)
        if "uniq_live" in str(exc):  # a tenant network's VLAN, subnet or address taken meanwhile
            raise CapacityError(
                "not enough network capacity: that network was just taken; try again"
            ) from None
        # The PostgreSQL exclusion constraint caught an overlap: report it as a capacity problem.
        raise CapacityError("not enough capacity: those servers were just booked by someone else; try again")
    operations: list[Operation] = []
    if starts_now:
        try:
            with transaction.atomic():
                nodes = (
                    Node.objects.filter(pk__in=node_ids)
                    .only("pk", "name", "state", "image_id")
                    .annotate(**_SITE)
                )
                operations = _start_nodes(reservation, list(nodes), actor)
        except DatabaseError:
            # The servers are booked; the scheduler starts a due window it finds still scheduled.
            log.exception("reservation %s is booked but could not be started now", reservation.pk)
            reservation.state = ReservationState.SCHEDULED
            operations = []
    started = sorted((op.node for op in operations), key=lambda n: n.name)
    return Booking(reservation, started, operations[::-1], networked=bool(managed))


def _allocate(
    reservation: Reservation,
    server_type: ServerType,
    count: int,
    start: dt.datetime,
    end: dt.datetime | None,
    unfit: Collection[int],
) -> list[int]:
    """Under the server type's lock, give the reservation ``count`` nodes free in the window, none of the
    ``unfit`` ones; return their ids.

    Choosing the nodes and inserting their allocations is one statement (INSERT ... SELECT): everything
    after the lock is held until the caller's transaction commits, and every other reservation of the type
    waits that long. The free nodes are the ones free_nodes() lists.

    :raises CapacityError: fewer than ``count`` are free (the caller's transaction must roll back).
    """
    starts_now = start <= timezone.now() + START_NOW_SLACK
    free_sql, free_params = _free_nodes_statement(
        server_type, start, end, unfit, count, starts_now, reservation.image_id
    )
    ops = connection.ops
    columns = ", ".join(
        ops.quote_name(c)
        for c in ("reservation_id", "node_id", "starts_at", "ends_at", "active", "created_at", "end_reason")
    )
    # Identifiers come from the model, quoted by the backend; every value is a parameter.
    insert = (
        f"INSERT INTO {ops.quote_name(Allocation._meta.db_table)} ({columns}) "  # noqa: S608
        f"SELECT %s, free.node_id, %s, %s, %s, %s, %s FROM ({free_sql}) free RETURNING node_id"
    )
    params: list[Any] = [
        reservation.pk,
        ops.adapt_datetimefield_value(start),
        ops.adapt_datetimefield_value(end),
        True,
        ops.adapt_datetimefield_value(timezone.now()),
        "",
    ]
    # All built before taking the lock (the ORM's work is not free): the lock covers the statement alone.
    lock_server_type(server_type)
    with connection.cursor() as cursor:
        cursor.execute(insert, [*params, *free_params])
        node_ids = [row[0] for row in cursor.fetchall()]
    if len(node_ids) < count:
        raise CapacityError(
            f"not enough capacity: {len(node_ids)} {server_type.name} server(s) free for that window, "
            f"{count} requested"
        )
    return node_ids


# The window the free-nodes statement is compiled with (_compiled_free_nodes): values no booking has, found
# again among its parameters and replaced there by each booking's own.
_SENTINEL_START = dt.datetime(1901, 2, 3, 4, 5, 6, 1, tzinfo=dt.UTC)
_SENTINEL_END = dt.datetime(1901, 2, 3, 4, 5, 6, 2, tzinfo=dt.UTC)


def _free_nodes_statement(
    server_type: ServerType,
    start: dt.datetime,
    end: dt.datetime | None,
    unfit: Collection[int],
    count: int,
    starts_now: bool,
    image_pk: int | None = None,
) -> tuple[str, list[Any]]:
    """The SELECT of the ``count`` nodes _allocate takes: free_nodes() for the window, warm servers of the
    image ``image_pk`` first (handed over in about a minute), then nodes idle now (a future window then does
    not depend on another lease ending on time), then warm servers of another image (deployed over). Building it with the ORM costs
    more CPU than the rest of a booking's statements, and its shape repeats (type, whether the window starts
    now or is open-ended, unfit nodes, count), so it is built once per shape and the window's values put in
    place of the sentinels it was built with."""
    sql, params, start_at, end_at = _compiled_free_nodes(
        connection.vendor, server_type.pk, starts_now, end is None, tuple(sorted(unfit)), count, image_pk
    )
    out = list(params)
    for i in start_at:
        out[i] = connection.ops.adapt_datetimefield_value(start)
    for i in end_at:
        out[i] = connection.ops.adapt_datetimefield_value(end)
    return sql, out


@functools.lru_cache(maxsize=512)
def _compiled_free_nodes(
    vendor: str,
    server_type_pk: int,
    starts_now: bool,
    open_ended: bool,
    unfit: tuple[int, ...],
    count: int,
    image_pk: int | None = None,
) -> tuple[str, tuple[Any, ...], tuple[int, ...], tuple[int, ...]]:
    """(sql, params, where the start goes, where the end goes) of _free_nodes_statement's shape."""
    end = None if open_ended else _SENTINEL_END
    free = (
        free_nodes(ServerType(pk=server_type_pk), _SENTINEL_START, end, unfit=unfit, starts_now=starts_now)
        .order_by(
            Case(
                When(state=NodeState.WARM, image_id=image_pk, then=0),
                When(state=NodeState.AVAILABLE, then=1),
                When(state=NodeState.WARM, then=2),
                default=3,
            ),
            "name",
        )
        .values(node_id=F("pk"))[:count]
    )
    sql, params = free.query.sql_with_params()
    adapt = connection.ops.adapt_datetimefield_value
    start_at = tuple(i for i, p in enumerate(params) if p == adapt(_SENTINEL_START))
    end_at = tuple(i for i, p in enumerate(params) if end is not None and p == adapt(end))
    if not start_at or (end is not None and not end_at):
        raise RuntimeError("the free-nodes statement lost its window: rebuild _compiled_free_nodes")
    return sql, tuple(params), start_at, end_at


@requires_transaction
def _start_nodes(reservation: Reservation, nodes: Sequence[Node], actor: Actor) -> list[Operation]:
    """Start provisioning the reservation's ``nodes`` that are still available (call inside a transaction);
    mark the reservation provisioning once none of its allocated nodes is left to start. Returns the
    provisioning operations, in the order of ``nodes``. A node that is not available now is started by the
    scheduler on a later pass. Nothing is started once the reservation is no longer scheduled: it may have
    been released since its nodes were read (the lock waits for a release in progress to commit).
    """
    if not (
        Reservation.objects.select_for_update(no_key=True)
        .filter(pk=reservation.pk, state=ReservationState.SCHEDULED)
        .order_by()
        .exists()
    ):
        return []
    available = [node for node in nodes if node.state in FREE_NOW_STATES]
    try:
        started = start_provisioning_many(reservation, available, actor)
    except IllegalTransition:
        # One changed meanwhile (or the scheduler started it first): nothing was moved; start them one by one.
        started = []
        for node in available:
            try:
                started.append(start_provisioning(reservation, node, actor))
            except IllegalTransition:
                continue
    if len(started) < len(nodes) and (
        Allocation.objects.filter(reservation=reservation, active=True)
        .exclude(node__reservation=reservation)
        .exists()
    ):
        return started
    if Reservation.objects.filter(pk=reservation.pk, state=ReservationState.SCHEDULED).update(
        state=ReservationState.PROVISIONING
    ):
        reservation.state = ReservationState.PROVISIONING
    return started


def start_provisioning(reservation: Reservation, node: Node, actor: Actor) -> Operation:
    return start_provisioning_many(reservation, [node], actor)[0]


def start_provisioning_many(reservation: Reservation, nodes: Sequence[Node], actor: Actor) -> list[Operation]:
    """Move ``nodes`` (available, or warm) to reserved for the reservation and queue their provisioning, all
    or none (process_events), in a few statements whatever their number. Returns the operations, in their
    order. A warm server of the reservation's image is provisioned from the warm pool (``warm`` in its
    operation's params: new host keys and the customer's keys instead of a deploy, a short re-check instead
    of the full burn-in); a warm server of another image is deployed over like an idle one. A node read
    with its site's slug (``site_slug``, as _SITE annotates it) costs no query for its queue.

    :raises IllegalTransition: one of them is not available or warm (any more); none was started.
    """
    if not nodes:
        return []
    by_state: dict[NodeState, list[Node]] = {}
    for node in nodes:
        by_state.setdefault(NodeState(node.state), []).append(node)
    # decided on what the nodes run now: the RESERVE event sets every node's image to the reservation's
    warm = [n for n in by_state.get(NodeState.WARM, []) if n.image_id == reservation.image_id]
    with transaction.atomic():  # all or none, also when a later group is refused
        for state, group in by_state.items():
            process_events(
                group,
                NodeEvent.RESERVE,
                actor=actor,
                reason=f"reservation {reservation.pk}",
                expected_state=state,
                owner=reservation.organization,
                reservation=reservation,
                image=reservation.image,
            )
    cold = [n for n in nodes if n not in warm]
    ops = create_operations(OperationKind.PROVISION, cold, reservation=reservation, requested_by=actor.user)
    ops += create_operations(
        OperationKind.PROVISION, warm, reservation=reservation, requested_by=actor.user, params={"warm": True}
    )
    by_node = {op.node_id: op for op in ops}
    ordered = [by_node[node.pk] for node in nodes]
    enqueue_many(ordered, queues=_known_queues(nodes))
    return ordered


# Annotate a node (an allocation) query with the slug of the node's site, which decides the queue of its
# operations.
_SITE = {"site_slug": F("rack__site__slug")}
_NODE_SITE = {"site_slug": F("node__rack__site__slug")}


def _known_queues(nodes: Iterable[Node]) -> dict[int, str] | None:
    """The queue of each node's operations where they were read with their site (_SITE), else None."""
    try:
        return {node.pk: site_queue(node.site_slug) for node in nodes}  # type: ignore[attr-defined]
    except AttributeError:
        return None


def release_reservation(
    reservation: Reservation,
    *,
    actor: Actor,
    reason: str = "released by customer",
    ended_by: dt.datetime | None = None,
) -> Reservation:
    """Release every server of the reservation: cancel work in progress, wipe, return to the pool. Idempotent.

    With ``ended_by``, only a window that has ended by then is released (read under the reservation's lock,
    so an extend committed since the caller read it stands).

    Returns the reservation as it is now, with its organization, server type and image loaded.
    """
    with transaction.atomic():
        locked = joined(Reservation, _RESERVATION_RELATED, _LOCK_RESERVATION.rows(reservation.pk))
        if not locked:
            raise Reservation.DoesNotExist(f"reservation {reservation.pk} does not exist")
        reservation = locked[0]
        if reservation.state not in OPEN_RESERVATION_STATES:
            return reservation
        if ended_by is not None and (reservation.ends_at is None or reservation.ends_at > ended_by):
            return reservation
        now = timezone.now()
        allocations = joined(
            Allocation, _ALLOCATION_RELATED, _ACTIVE_ALLOCATIONS.rows(reservation.pk), "site_slug"
        )
        Allocation.objects.filter(pk__in=[a.pk for a in allocations]).update(
            active=False, ended_at=now, end_reason=reason
        )
        held = [a.node for a in allocations if a.node.reservation_id == reservation.pk]
        for allocation in allocations:
            allocation.node.site_slug = allocation.site_slug  # type: ignore[attr-defined]
        for node in held:
            # process_events records who held the node: hand it the rows we have instead of reading them
            node.reservation = reservation
            if node.owner_id == reservation.organization_id:
                node.owner = reservation.organization
        if held:
            cancelled = Operation.objects.filter(
                node__in=held,
                reservation=reservation,
                state__in=OPEN_OPERATION_STATES,
            ).exclude(kind=OperationKind.RELEASE)
            cancelled_ids = list(cancelled.values_list("pk", flat=True))
            cancelled.update(cancel_requested=True)
            wake(cancelled_ids)  # a waiting provision notices its cancellation now, not at its deadline
        wiping = _release_nodes(held, reservation, actor, reason)
        # Servers wiped now leave the tenant network in their cleaning step; the others that never joined it
        # leave it here (their addresses and, once empty, the network's VLAN go back to the pools).
        networking.end_unjoined_attachments(reservation, [n.pk for n in wiping])
        # Without a wipe queued here it is settled at once: its release operations are the wipes this call
        # queues (_release_nodes), and none exists before, as a reservation is released once (it was open).
        settled = not wiping
        reservation.state = ReservationState.RELEASED if settled else ReservationState.RELEASING
        reservation.released_at = now
        reservation.status_message = reason
        reservation.save(update_fields=["state", "released_at", "status_message"])
        record(actor, "release", reservation=reservation, reason=reason)
    return reservation


# What a release reads under its lock (built once: provisioner.prepared): the reservation locked, with its
# organization, server type and image; its active allocations with their nodes and the nodes' site slugs.
_RESERVATION_RELATED: dict[str, type[models.Model]] = {
    "organization": Organization,
    "server_type": ServerType,
    "image": Image,
}
_LOCK_RESERVATION = PreparedQuery(
    lambda pk: (
        Reservation.objects.select_for_update(of=("self",))
        .filter(pk=pk)
        .order_by()
        .values_list(*joined_columns(Reservation, _RESERVATION_RELATED))
    ),
    prepared.INT,
)
_ALLOCATION_RELATED: dict[str, type[models.Model]] = {"node": Node}
_ACTIVE_ALLOCATIONS = PreparedQuery(
    lambda pk: (
        Allocation.objects.filter(reservation_id=pk, active=True)
        .annotate(**_NODE_SITE)
        .values_list(*joined_columns(Allocation, _ALLOCATION_RELATED, "site_slug"))
    ),
    prepared.INT,
)


def _release_nodes(held: Sequence[Node], reservation: Reservation, actor: Actor, reason: str) -> list[Node]:
    """Take the nodes out of the reservation; queue the wipe of those that were leased (all of them moved by
    one process_events). Returns those."""
    leased = [node for node in held if node.state in LEASED_STATES]
    # Quarantined or in error: it leaves the reservation but stays out of the pool for an operator.
    others = [node.pk for node in held if node.state not in LEASED_STATES]
    if others:
        Node.objects.filter(pk__in=others).update(owner=None, reservation=None)
    if leased:
        process_events(leased, NodeEvent.RELEASE, actor=actor, reason=reason, owner=None, reservation=None)
        ops = create_operations(
            OperationKind.RELEASE, leased, reservation=reservation, requested_by=actor.user
        )
        enqueue_many(ops, queues=_known_queues(leased))
    return leased


def settle_reservation(reservation: Reservation) -> None:
    """Move a releasing reservation to released once none of its nodes is still being released."""
    if reservation.state != ReservationState.RELEASING:
        return
    if not _release_in_progress(reservation) and Reservation.objects.filter(
        pk=reservation.pk, state=ReservationState.RELEASING
    ).update(state=ReservationState.RELEASED):
        reservation.state = ReservationState.RELEASED


def _release_in_progress(reservation: Reservation) -> bool:
    """Whether one of the reservation's nodes is still being released (wiped)."""
    return Operation.objects.filter(
        reservation=reservation,
        kind=OperationKind.RELEASE,
        state__in=OPEN_OPERATION_STATES,
    ).exists()


def extend_reservation(reservation: Reservation, ends_at: dt.datetime, *, actor: Actor) -> Reservation:
    """Move the window's end later. Fails without change if any of its servers is booked in the extra time,
    or if the organization would hold more than its quota in it.

    :raises CapacityError, QuotaExceeded, InvalidRequest:
    """
    if timezone.is_naive(ends_at):
        raise InvalidRequest("times must include a timezone")
    try:
        with transaction.atomic():
            # The booking lock order (organization, then server type): the quota check below needs the first.
            _lock_organization(reservation.organization_id)
            lock_server_type(reservation.server_type)
            reservation = Reservation.objects.select_for_update().get(pk=reservation.pk)
            if reservation.state not in OPEN_RESERVATION_STATES:
                raise InvalidRequest(
                    f"reservation {reservation.pk} is {reservation.state}; it cannot be extended"
                )
            if reservation.ends_at is None:
                raise InvalidRequest("this reservation has no end; release it when done")
            if ends_at <= reservation.ends_at:
                raise InvalidRequest("the new end must be later than the current end")
            _check_horizon(ends_at, timezone.now())
            allocs = list(reservation.allocations.filter(active=True))
            clash = (
                Allocation.objects.filter(_overlapping(reservation.ends_at, ends_at), active=True)
                .filter(node__in=[a.node_id for a in allocs])
                .exclude(reservation=reservation)
            )
            if clash.exists():
                raise CapacityError(
                    "cannot extend: at least one of these servers is booked by another reservation in that time"
                )
            _check_quota(
                reservation.organization, len(allocs), reservation.ends_at, ends_at, reservation.server_type
            )
            old_end = reservation.ends_at
            Allocation.objects.filter(pk__in=[a.pk for a in allocs]).update(ends_at=ends_at)
            reservation.ends_at = ends_at
            reservation.save(update_fields=["ends_at"])
            record(
                actor,
                "extend",
                reservation=reservation,
                reason=f"{old_end.isoformat()} -> {ends_at.isoformat()}",
            )
    except IntegrityError:
        raise CapacityError("cannot extend: the servers were just booked by someone else")
    return reservation


def start_due_reservations(actor: Actor | None = None) -> int:
    """Start provisioning scheduled reservations whose window has begun. Returns how many nodes started.

    A node still being cleaned from its previous lease is started on a later pass. A node that went out of
    service since it was booked (maintenance, quarantine, error: states it does not leave by itself; or an
    operator asked to hold it once free; or its record no longer passes validation) is let go and a healthy
    spare of the type takes its place where one is free; otherwise the reservation waits for one
    (``periodics.fill_waiting_reservations``), saying so.
    """

    actor = actor or Actor.system("scheduler")
    started = 0
    now = timezone.now()
    # a window that has ended meanwhile (the scheduler was down) is expire_reservations', not started
    due = Reservation.objects.filter(state=ReservationState.SCHEDULED, starts_at__lte=now).exclude(
        ends_at__lte=now
    )
    for reservation in due:
        with transaction.atomic():
            pending = [
                alloc.node
                for alloc in Allocation.objects.filter(reservation=reservation, active=True)
                .select_related("node")
                .exclude(node__reservation=reservation)
            ]
            # a node whose record was broken since it was booked would fail its deploy: let go as well
            unfit = hardware.unfit_nodes(
                reservation.server_type, Node.objects.filter(pk__in=[node.pk for node in pending])
            )
            out_of_service = [
                node
                for node in pending
                if node.state not in ALLOCATABLE_STATES or node.hold_requested or node.pk in unfit
            ]
            for node in out_of_service:
                _let_go_out_of_service(reservation, node, actor, unfit=node.pk in unfit)
            in_service = [node for node in pending if node not in out_of_service]
            started += len(_start_nodes(reservation, in_service, actor))
            # a server let go on an earlier pass, while another booked one was still being wiped (the
            # reservation stayed scheduled and add_spare refused it), is replaced once the rest has started
            short = (
                Allocation.objects.filter(reservation=reservation, active=True).count() < reservation.count
            )
        # after the commit: a spare locks the server type, then the reservation (booking's order)
        if short:
            while add_spare(reservation, actor, why=OUT_OF_SERVICE_WHY) is not None:
                started += 1
    return started


OUT_OF_SERVICE_WHY = "was taken out of service before your window started"


@requires_transaction
def _let_go_out_of_service(
    reservation: Reservation, node: Node, actor: Actor, *, unfit: bool = False
) -> None:
    """End the reservation's allocation of a node that is out of service (call inside a transaction).
    ``unfit``: its record fails validation (the customer sees that much; operators see the problem)."""
    held = f"on hold once free: {node.hold_requested}" if node.hold_requested else ""
    if unfit and not held and node.state in ALLOCATABLE_STATES:
        held = "its record failed the checks before deploy"
    take_node_out(reservation, node, actor, f"out of service ({held or node.state}) when the window started")


@requires_transaction
def take_node_out(reservation: Reservation, node: Node, actor: Actor, reason: str) -> None:
    """End the reservation's allocation of ``node`` and its hold on it, audited as replace_node (call inside
    a transaction; a spare is the caller's business: add_spare)."""
    Allocation.objects.filter(reservation=reservation, node=node, active=True).update(
        active=False, ended_at=timezone.now(), end_reason=f"replaced: {reason}"[:200]
    )
    Node.objects.filter(pk=node.pk, reservation=reservation).update(owner=None, reservation=None)
    record(actor, "replace_node", node=node, reservation=reservation, reason=reason)


def expire_reservations(actor: Actor | None = None) -> int:
    """Release reservations whose window has ended. Returns how many were released."""
    actor = actor or Actor.system("scheduler")
    now = timezone.now()
    expired = Reservation.objects.filter(
        state__in=OPEN_RESERVATION_STATES, ends_at__isnull=False, ends_at__lte=now
    )
    count = 0
    for reservation in expired:
        released = release_reservation(
            reservation, actor=actor, reason="reservation window ended", ended_by=now
        )
        if released.ends_at is not None and released.ends_at <= now:  # not one extended since it was listed
            count += 1
    return count


# --- substitution: a spare for a server that failed or went out of service -------------------------------


def replace_failed_node(node: Node, reservation: Reservation, actor: Actor, reason: str) -> Node | None:
    """Take a failed node out of the reservation and provision a healthy spare of the same type if one is
    free for the rest of the window. Without a spare the reservation waits (the scheduler retries)."""
    with transaction.atomic():
        take_node_out(reservation, node, actor, reason)
    return add_spare(reservation, actor)


# What a retry says about a missing server whose cause it does not know (fill_waiting_reservations).
MISSING_WHY = "was taken out of your reservation"


def add_spare(
    reservation: Reservation, actor: Actor, *, why: str | None = "failed its checks before handover"
) -> Node | None:
    """Allocate and start one spare for a reservation short of servers. Returns it, or None if none is free.
    ``why`` completes "One server ..." in the reservation's status message; None (a retry, which does not
    know why the server is missing) leaves a waiting reservation's message, which says why, as it is."""
    unfit = unfit_node_ids(reservation.server_type)  # before the lock: nodes failing validation are no spares
    try:
        with transaction.atomic():
            lock_server_type(reservation.server_type)
            reservation = Reservation.objects.select_for_update().get(pk=reservation.pk)
            if reservation.state not in (
                ReservationState.PROVISIONING,
                ReservationState.ACTIVE,
                ReservationState.WAITING,
            ):
                return None
            missing = reservation.count - reservation.allocations.filter(active=True).count()
            if missing <= 0:
                return None
            start = max(timezone.now(), reservation.starts_at)
            spare = (
                free_nodes(reservation.server_type, start, reservation.ends_at, unfit=unfit)
                .filter(state=NodeState.AVAILABLE)
                .order_by("name")
                .first()
            )
            if spare is None:
                raise CapacityError("no spare")
            Allocation.objects.create(
                reservation=reservation, node=spare, starts_at=start, ends_at=reservation.ends_at
            )
            networking.attach_spare(reservation, spare)
            reservation.state = ReservationState.PROVISIONING
            reservation.status_message = (
                f"One server {why or MISSING_WHY} and was replaced by a healthy spare."
            )
            reservation.save(update_fields=["state", "status_message"])
            record(
                actor,
                "substitute",
                node=spare,
                reservation=reservation,
                reason="healthy spare for a failed server",
            )
            start_provisioning(reservation, spare, actor)
            return spare
    except CapacityError:
        # Conditional: a release may have committed since the lock above was let go; it stands.
        waiting = Reservation.objects.filter(
            pk=reservation.pk,
            state__in=[ReservationState.PROVISIONING, ReservationState.ACTIVE, ReservationState.WAITING],
        )
        if why is None:
            waiting = waiting.exclude(state=ReservationState.WAITING)
        waiting.update(
            state=ReservationState.WAITING,
            status_message=(
                f"One server {why or MISSING_WHY} and no healthy spare of this type is free right now. "
                "Your other servers are unaffected; we will add a replacement as soon as one is free, "
                "or you can release the reservation and you will not be charged for the missing server."
            ),
        )
        return None
