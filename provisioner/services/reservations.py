"""Reserving whole servers for a window, extending, releasing, and the scheduler's window handling.

Double booking is impossible by construction:
- every reservation is made inside one transaction that first takes a lock serializing reservations of the
  same server type (``SELECT ... FOR UPDATE`` of the ServerType row on PostgreSQL; on SQLite the IMMEDIATE
  transaction mode takes the database write lock at BEGIN), then reads which nodes are free in the window
  and writes allocations;
- on PostgreSQL an exclusion constraint (migration 0002) rejects two active overlapping allocations of one
  node even if some future code path forgot the lock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models import Case, Q, QuerySet, When
from django.utils import timezone

from provisioner.engine.runner import create_operation, enqueue
from provisioner.errors import CapacityError, IllegalTransition, InvalidRequest, QuotaExceeded
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
from provisioner.services.audit import Actor, record
from provisioner.services.lifecycle import process_event
from provisioner.states import (
    ALLOCATABLE_STATES,
    OPEN_RESERVATION_STATES,
    NodeEvent,
    NodeState,
    OperationKind,
    OperationState,
    ReservationState,
)

# A window starting within this much of now counts as "now": provisioning starts at once.
START_NOW_SLACK = dt.timedelta(seconds=60)
MAX_SERVERS_PER_RESERVATION = 256


def _overlapping(starts_at: dt.datetime, ends_at: dt.datetime | None) -> Q:
    """Allocations overlapping [starts_at, ends_at); a None end means open-ended."""
    q = Q(ends_at__isnull=True) | Q(ends_at__gt=starts_at)
    if ends_at is not None:
        q &= Q(starts_at__lt=ends_at)
    return q


def _lock_server_type(server_type: ServerType) -> None:
    ServerType.objects.select_for_update().filter(pk=server_type.pk).first()


def free_nodes(
    server_type: ServerType, starts_at: dt.datetime, ends_at: dt.datetime | None
) -> QuerySet[Node]:
    """Nodes of this type that can be allocated for the window (call inside the reservation transaction)."""
    now = timezone.now()
    busy = Allocation.objects.filter(_overlapping(starts_at, ends_at), active=True).values("node_id")
    nodes = Node.objects.filter(server_type=server_type).exclude(pk__in=busy)
    if starts_at <= now + START_NOW_SLACK:
        return nodes.filter(state=NodeState.AVAILABLE)
    return nodes.filter(state__in=ALLOCATABLE_STATES)


def availability(
    server_type: ServerType, starts_at: dt.datetime | None = None, ends_at: dt.datetime | None = None
) -> int:
    """How many servers of this type could be reserved for the window right now."""
    return free_nodes(server_type, starts_at or timezone.now(), ends_at).count()


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
    return start, ends_at


def _check_quota(org: Organization, count: int, starts_at: dt.datetime, ends_at: dt.datetime | None) -> None:
    held = (
        Allocation.objects.filter(
            _overlapping(starts_at, ends_at), active=True, reservation__organization=org
        )
        .values("node_id")
        .distinct()
        .count()
    )
    if held + count > org.server_quota:
        raise QuotaExceeded(
            f"{org.name} may hold {org.server_quota} servers at once; it holds {held} in that window "
            f"and asked for {count} more"
        )


def reserve_servers(
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
) -> Reservation:
    """Reserve ``count`` whole servers of ``server_type`` for [starts_at, ends_at).

    Starts provisioning at once when the window starts now; otherwise the scheduler starts it.
    A repeated ``idempotency_key`` returns the reservation made the first time instead of booking again.

    :raises CapacityError: fewer than ``count`` servers are free in the window (nothing is booked).
    :raises QuotaExceeded, InvalidRequest:
    """
    if count < 1 or count > MAX_SERVERS_PER_RESERVATION:
        raise InvalidRequest(f"count must be between 1 and {MAX_SERVERS_PER_RESERVATION}")
    keys = list(ssh_keys)
    if not keys:
        raise InvalidRequest("at least one SSH key is needed to reach the servers")
    if any(k.organization_id != org.pk for k in keys):
        raise InvalidRequest("SSH keys must belong to the reserving organization")
    if idempotency_key:
        existing = Reservation.objects.filter(organization=org, idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing
    start, end = _validate_window(starts_at, ends_at)
    starts_now = start <= timezone.now() + START_NOW_SLACK
    try:
        with transaction.atomic():
            _lock_server_type(server_type)
            _check_quota(org, count, start, end)
            # Prefer nodes idle now: a future window then does not depend on another lease ending on time.
            candidates = list(
                free_nodes(server_type, start, end)
                .annotate(busy_now=Case(When(state=NodeState.AVAILABLE, then=0), default=1))
                .order_by("busy_now", "name")[:count]
            )
            if len(candidates) < count:
                raise CapacityError(
                    f"not enough capacity: {len(candidates)} {server_type.name} server(s) free for that window, "
                    f"{count} requested"
                )
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
                state=ReservationState.PROVISIONING if starts_now else ReservationState.SCHEDULED,
                idempotency_key=idempotency_key,
            )
            reservation.ssh_keys.set(keys)
            Allocation.objects.bulk_create(
                Allocation(reservation=reservation, node=n, starts_at=start, ends_at=end) for n in candidates
            )
            record(actor, "reserve", reservation=reservation, reason=f"{count}x {server_type.slug}")
            if starts_now:
                for node in candidates:
                    _start_provisioning(reservation, node, actor)
    except IntegrityError as exc:
        if idempotency_key and "idempotency" in str(exc).lower():
            return Reservation.objects.get(organization=org, idempotency_key=idempotency_key)
        # The PostgreSQL exclusion constraint caught an overlap: report it as a capacity problem.
        raise CapacityError("not enough capacity: those servers were just booked by someone else; try again")
    return reservation


def _start_provisioning(reservation: Reservation, node: Node, actor: Actor) -> Operation:
    process_event(
        node,
        NodeEvent.RESERVE,
        actor=actor,
        reason=f"reservation {reservation.pk}",
        expected_state=NodeState.AVAILABLE,
        owner=reservation.organization,
        reservation=reservation,
        image=reservation.image,
    )
    op = create_operation(OperationKind.PROVISION, node, reservation=reservation, requested_by=actor.user)
    enqueue(op)
    return op


def release_reservation(
    reservation: Reservation, *, actor: Actor, reason: str = "released by customer"
) -> Reservation:
    """Release every server of the reservation: cancel work in progress, wipe, return to the pool. Idempotent."""
    with transaction.atomic():
        reservation = Reservation.objects.select_for_update().get(pk=reservation.pk)
        if reservation.state not in OPEN_RESERVATION_STATES:
            return reservation
        now = timezone.now()
        for alloc in reservation.allocations.filter(active=True).select_related("node"):
            alloc.active = False
            alloc.ended_at = now
            alloc.end_reason = reason
            alloc.save(update_fields=["active", "ended_at", "end_reason"])
            if alloc.node.reservation_id == reservation.pk:
                _release_node(alloc.node, reservation, actor, reason)
        reservation.state = ReservationState.RELEASING
        reservation.released_at = now
        reservation.status_message = reason
        reservation.save(update_fields=["state", "released_at", "status_message"])
        record(actor, "release", reservation=reservation, reason=reason)
        settle_reservation(reservation)
    return reservation


def _release_node(node: Node, reservation: Reservation, actor: Actor, reason: str) -> None:
    Operation.objects.filter(
        node=node, reservation=reservation, state__in=[OperationState.PENDING, OperationState.RUNNING]
    ).exclude(kind=OperationKind.RELEASE).update(cancel_requested=True)
    node.refresh_from_db()
    if node.state not in (NodeState.RESERVED, NodeState.DEPLOYING, NodeState.BURNING_IN, NodeState.ACTIVE):
        # Quarantined or in error: it leaves the reservation but stays out of the pool for an operator.
        Node.objects.filter(pk=node.pk).update(owner=None, reservation=None)
        return
    process_event(node, NodeEvent.RELEASE, actor=actor, reason=reason, owner=None, reservation=None)
    op = create_operation(OperationKind.RELEASE, node, reservation=reservation, requested_by=actor.user)
    enqueue(op)


def settle_reservation(reservation: Reservation) -> None:
    """Move a releasing reservation to released once none of its nodes is still being released."""
    if reservation.state != ReservationState.RELEASING:
        return
    busy = Operation.objects.filter(
        reservation=reservation,
        kind=OperationKind.RELEASE,
        state__in=[OperationState.PENDING, OperationState.RUNNING],
    ).exists()
    if not busy:
        Reservation.objects.filter(pk=reservation.pk, state=ReservationState.RELEASING).update(
            state=ReservationState.RELEASED
        )


def extend_reservation(reservation: Reservation, ends_at: dt.datetime, *, actor: Actor) -> Reservation:
    """Move the window's end later. Fails without change if any of its servers is booked in the extra time.

    :raises CapacityError, InvalidRequest:
    """
    if timezone.is_naive(ends_at):
        raise InvalidRequest("times must include a timezone")
    try:
        with transaction.atomic():
            _lock_server_type(reservation.server_type)
            reservation = Reservation.objects.select_for_update().get(pk=reservation.pk)
            if reservation.state not in OPEN_RESERVATION_STATES:
                raise InvalidRequest(
                    f"reservation {reservation.pk} is {reservation.state}; it cannot be extended"
                )
            if reservation.ends_at is None:
                raise InvalidRequest("this reservation has no end; release it when done")
            if ends_at <= reservation.ends_at:
                raise InvalidRequest("the new end must be later than the current end")
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

    A node still being cleaned from its previous lease is started on a later pass.
    """
    actor = actor or Actor.system("scheduler")
    started = 0
    now = timezone.now()
    for reservation in Reservation.objects.filter(state=ReservationState.SCHEDULED, starts_at__lte=now):
        with transaction.atomic():
            pending = list(
                Allocation.objects.filter(reservation=reservation, active=True)
                .select_related("node")
                .exclude(node__reservation=reservation)
            )
            for alloc in pending:
                if alloc.node.state != NodeState.AVAILABLE:
                    continue
                try:
                    _start_provisioning(reservation, alloc.node, actor)
                    started += 1
                except IllegalTransition:
                    continue
            if (
                not Allocation.objects.filter(reservation=reservation, active=True)
                .exclude(node__reservation=reservation)
                .exists()
            ):
                Reservation.objects.filter(pk=reservation.pk).update(state=ReservationState.PROVISIONING)
    return started


def expire_reservations(actor: Actor | None = None) -> int:
    """Release reservations whose window has ended. Returns how many were released."""
    actor = actor or Actor.system("scheduler")
    now = timezone.now()
    expired = Reservation.objects.filter(
        state__in=OPEN_RESERVATION_STATES, ends_at__isnull=False, ends_at__lte=now
    )
    count = 0
    for reservation in expired:
        release_reservation(reservation, actor=actor, reason="reservation window ended")
        count += 1
    return count
