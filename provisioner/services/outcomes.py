"""What an operation's end means for the fleet (the services' listener to the engine's announcement,
registered in ProvisionerConfig.ready): a reservation turns active when its last server is up; a server that
failed burn-in is quarantined and one that failed otherwise goes to error, and its reservation gets a healthy
spare; a release's last wipe settles the reservation; a rollout moves on."""

from __future__ import annotations

import contextlib

from provisioner.engine.outcomes import OperationEnded
from provisioner.errors import BurnInFailed, IllegalTransition
from provisioner.lifecycle import Actor, process_event
from provisioner.models import Allocation, Node, Operation, Reservation, Step
from provisioner.services.reservations import replace_failed_node, settle_reservation
from provisioner.states import (
    TRANSIENT_STATES,
    NodeEvent,
    NodeState,
    OperationKind,
    OperationState,
    ReservationState,
)

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
    event = failure_event(op, node, error)
    if event == NodeEvent.BURNIN_FAILED:
        process_event(node, event, actor=actor, reason=reason, operation=op)
    elif event is not None:
        # someone else may have moved it meanwhile (e.g. a release): their transition stands
        with contextlib.suppress(IllegalTransition):
            process_event(node, event, actor=actor, reason=reason, operation=op)
    after_failure(op, node, actor, reason)


def failure_event(op: Operation, node: Node, error: BaseException | None) -> NodeEvent | None:
    """Where a failed operation sends its node: quarantine after a failed burn-in (told by the error, or by
    the code the operation recorded when the error is gone), error from any other transient state."""
    burnin_failed = isinstance(error, BurnInFailed) or op.error_code == BurnInFailed.code
    if burnin_failed and node.state in (NodeState.BURNING_IN, NodeState.WARMING):
        return NodeEvent.BURNIN_FAILED
    if node.state in TRANSIENT_STATES:
        return NodeEvent.FAIL
    return None


def after_failure(op: Operation, node: Node, actor: Actor, reason: str) -> None:
    _advance_rollout(op, actor)
    if op.kind in PROVISIONING_KINDS and op.reservation_id and not op.cancel_requested:
        replace_failed_node(
            Node.objects.get(pk=node.pk), Reservation.objects.get(pk=op.reservation_id), actor, reason
        )
    elif op.kind == OperationKind.RELEASE and op.reservation_id:
        settle_reservation(Reservation.objects.get(pk=op.reservation_id))
