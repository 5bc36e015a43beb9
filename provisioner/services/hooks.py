"""What happens after an operation ends: reservation bookkeeping, quarantine and substitution."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Exists, F, OuterRef, Q, Subquery
from django.utils import timezone

from provisioner.engine.outcomes import OperationEnded
from provisioner.errors import BurnInFailed, CapacityError, IllegalTransition
from provisioner.models import Allocation, LogLine, Node, Operation, Reservation, Step
from provisioner.services.audit import Actor, record
from provisioner.services.lifecycle import process_event
from provisioner.services.reservations import (
    _lock_server_type,
    _start_provisioning,
    free_nodes,
    settle_reservation,
    take_node_out,
    unfit_node_ids,
)
from provisioner.states import (
    OPEN_OPERATION_STATES,
    TRANSIENT_STATES,
    NodeEvent,
    NodeState,
    OperationKind,
    OperationState,
    ReservationState,
)

log = logging.getLogger(__name__)

PROVISIONING_KINDS = (OperationKind.PROVISION, OperationKind.REIMAGE)


def _advance_rollout(op: Operation, actor: Actor) -> None:
    if op.rollout_id:
        from provisioner.services.rollouts import advance_rollout

        advance_rollout(op.rollout_id, actor=actor)


def operation_succeeded(op: Operation, actor: Actor) -> None:
    _advance_rollout(op, actor)
    reservation = op.reservation
    if reservation is None:
        return
    if op.kind in PROVISIONING_KINDS:
        mark_reservation_active_if_ready(reservation)
    elif op.kind == OperationKind.RELEASE:
        settle_reservation(Reservation.objects.get(pk=reservation.pk))


def mark_reservation_active_if_ready(reservation: Reservation) -> None:
    allocs = Allocation.objects.filter(reservation=reservation, active=True).select_related("node")
    if allocs.count() == reservation.count and all(
        a.node.state == NodeState.ACTIVE and a.node.reservation_id == reservation.pk for a in allocs
    ):
        Reservation.objects.filter(
            pk=reservation.pk, state__in=[ReservationState.PROVISIONING, ReservationState.WAITING]
        ).update(state=ReservationState.ACTIVE)


def operation_cancelled(op: Operation, actor: Actor) -> None:
    _advance_rollout(op, actor)


def operation_ended(ended: OperationEnded) -> None:
    """The engine's announcement (provisioner.engine.outcomes), registered in ProvisionerConfig.ready."""
    if ended.state == OperationState.SUCCEEDED:
        operation_succeeded(ended.operation, ended.actor)
    elif ended.state == OperationState.CANCELLED:
        operation_cancelled(ended.operation, ended.actor)
    else:
        operation_failed(ended.operation, ended.step, ended.error, ended.actor, message=ended.message)


def operation_failed(
    op: Operation, step: Step | None, error: BaseException | None, actor: Actor, *, message: str = ""
) -> None:
    """Leave nothing half-done: the node goes to quarantine (failed burn-in) or error (anything else),
    and a customer's reservation gets a spare where one is free."""
    node = Node.objects.get(pk=op.node_id)
    reason = message or op.error or (str(error) if error else "operation failed")
    event = _failure_event(op, node, error)
    if event == NodeEvent.BURNIN_FAILED:
        process_event(node, event, actor=actor, reason=reason, operation=op)
    elif event is not None:
        # someone else may have moved it meanwhile (e.g. a release): their transition stands
        with contextlib.suppress(IllegalTransition):
            process_event(node, event, actor=actor, reason=reason, operation=op)
    _after_failure(op, node, actor, reason)


def _failure_event(op: Operation, node: Node, error: BaseException | None) -> NodeEvent | None:
    """Where a failed operation sends its node: quarantine after a failed burn-in (told by the error, or by
    the code the operation recorded when the error is gone), error from any other transient state."""
    burnin_failed = isinstance(error, BurnInFailed) or op.error_code == BurnInFailed.code
    if burnin_failed and node.state == NodeState.BURNING_IN:
        return NodeEvent.BURNIN_FAILED
    if node.state in TRANSIENT_STATES:
        return NodeEvent.FAIL
    return None


def _after_failure(op: Operation, node: Node, actor: Actor, reason: str) -> None:
    _advance_rollout(op, actor)
    if op.kind in PROVISIONING_KINDS and op.reservation_id and not op.cancel_requested:
        replace_failed_node(
            Node.objects.get(pk=node.pk), Reservation.objects.get(pk=op.reservation_id), actor, reason
        )
    elif op.kind == OperationKind.RELEASE and op.reservation_id:
        settle_reservation(Reservation.objects.get(pk=op.reservation_id))


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
            _lock_server_type(reservation.server_type)
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
            _start_provisioning(reservation, spare, actor)
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


def settle_finished_reservations() -> int:
    """Do what a finished operation's hook does for its reservation where that hook never ran (its worker
    died between marking the operation finished and running it): a reservation whose servers are all up
    turns active, a release whose wipes have all ended turns released. Returns how many changed."""
    ready = Q(
        allocations__active=True,
        allocations__node__state=NodeState.ACTIVE,
        allocations__node__reservation=F("pk"),
    )
    up = (
        Reservation.objects.filter(state__in=[ReservationState.PROVISIONING, ReservationState.WAITING])
        .annotate(
            held=Count("allocations", filter=Q(allocations__active=True)),
            ready=Count("allocations", filter=ready),
        )
        .filter(held=F("count"), ready=F("count"))
    )
    wiping = Operation.objects.filter(
        reservation=OuterRef("pk"),
        kind=OperationKind.RELEASE,
        state__in=OPEN_OPERATION_STATES,
    )
    wiped = Reservation.objects.filter(state=ReservationState.RELEASING).exclude(Exists(wiping))
    changed = 0
    for reservation in up:
        mark_reservation_active_if_ready(reservation)
        changed += 1
    for reservation in wiped:
        settle_reservation(reservation)
        changed += 1
    return changed


# The states an operation's steps move a node into and out of again (enrolling belongs to the inventory
# services, which run no operation).
OPERATION_STATES = (NodeState.DEPLOYING, NodeState.BURNING_IN, NodeState.RELEASING, NodeState.CLEANING)


def settle_stranded_nodes(now=None, actor: Actor | None = None) -> int:
    """Do what a failed operation's handling does for its node where that handling never ran: its worker
    died between marking the operation failed and running operation_failed, so the node sat deploying,
    burning in, releasing or cleaning with nothing running on it, and its reservation got no spare.

    Stranded means: in one of those states, no operation pending or running on it, and both its last
    operation's end and its last transition older than a lease TTL (a worker gets that long to run the
    handling itself). A failed last operation gets the engine's handling: quarantine after a failed burn-in,
    error otherwise, then a spare for its reservation or the release settled. A node left so after an
    operation that succeeded or was cancelled (whose handling never moves a node) goes to error the same
    way, for an operator, rather than stay there forever. Each node is claimed by its transition (compare
    and set on the state seen), so that a node is settled once. Returns how many were.
    """
    actor = actor or Actor.system("scheduler")
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.NEOCLOUD_LEASE_TTL_SECONDS)
    in_flight = Operation.objects.filter(node=OuterRef("pk"), state__in=OPEN_OPERATION_STATES)
    last = Operation.objects.filter(node=OuterRef("pk")).order_by("-created_at", "-pk").values("pk")[:1]
    stranded = (
        Node.objects.filter(state__in=OPERATION_STATES, state_changed_at__lt=cutoff)
        .exclude(Exists(in_flight))
        .annotate(last_operation=Subquery(last))
        .filter(last_operation__isnull=False)
    )
    settled = 0
    for node in stranded:
        op = Operation.objects.get(pk=node.last_operation)
        if op.finished_at is None or op.finished_at >= cutoff:
            continue
        if op.state == OperationState.FAILED:
            reason = op.error or "operation failed"
            event = _failure_event(op, node, None)
        else:
            reason = f"left {node.state} with nothing running after its {op.kind} {op.state}"
            event = NodeEvent.FAIL
        if event is None:
            continue
        left_in = node.state
        try:
            process_event(node, event, actor=actor, reason=reason, operation=op, expected_state=node.state)
        except IllegalTransition:
            continue  # moved meanwhile (a release, another scheduler): that transition stands
        LogLine.objects.create(
            operation=op,
            level=LogLine.Level.WARNING,
            message=f"{node.name} was left {left_in} after this operation ended; moved it on: {reason}",
        )
        log.warning("node %s stranded after operation %s (%s): %s", node.name, op.pk, op.state, reason)
        _after_failure(op, node, actor, reason)
        settled += 1
    return settled


def fill_waiting_reservations(actor: Actor | None = None) -> int:
    """Add spares to started reservations short of servers: those waiting for one, and those that took a
    server out but never asked for its spare (a worker or scheduler killed in between). Returns how many
    spares were added."""
    actor = actor or Actor.system("scheduler")
    filled = 0
    short = Reservation.objects.annotate(
        held=Count("allocations", filter=Q(allocations__active=True))
    ).filter(
        Q(state=ReservationState.WAITING)
        | Q(state__in=[ReservationState.PROVISIONING, ReservationState.ACTIVE], held__lt=F("count"))
    )
    for reservation in short:
        while add_spare(reservation, actor, why=None) is not None:
            filled += 1
    return filled
