"""Operator actions on nodes: maintenance, quarantine review, reimage, burn-in re-run, power."""

from __future__ import annotations

from django.db import transaction

from provisioner import hardware
from provisioner.engine.locks import held_by
from provisioner.engine.queue import create_operation, enqueue
from provisioner.errors import IllegalTransition, InvalidRequest
from provisioner.lifecycle import Actor, process_event, record
from provisioner.models import Node, Operation
from provisioner.states import (
    LEASED_STATES,
    TRANSIENT_STATES,
    NodeEvent,
    NodeState,
    OperationKind,
)
from provisioner.transactions import requires_transaction


def busy(node: Node) -> bool:
    """An operation holds the node (engine.locks.held_by: pending, running or waiting, or its lease)."""
    return bool(held_by(node))


def _refuse_if_busy(node: Node, doing: str) -> Node:
    """Refuse when an operation is working on the (locked) node: an operator decision taken mid-operation
    would be undone by, or would undo, that operation's steps.

    :raises IllegalTransition: an operation on the node is pending or running.
    """
    if busy(node):
        raise IllegalTransition(f"{node.name} is busy with another operation; {doing} when it finishes")
    return node


@requires_transaction
def _lock_idle(node: Node, doing: str) -> Node:
    """Lock the node's row (call inside a transaction) and refuse when an operation is working on it.

    :raises IllegalTransition: an operation on the node is pending or running.
    """
    return _refuse_if_busy(Node.objects.select_for_update().get(pk=node.pk), doing)


def why_not_idle(node: Node, *, enrolling: bool = False) -> str:
    """Why an inventory source (NetBox, the inventory file) must not change ``node``'s identity now:
    "leased", "mid-operation", or "" when it may. ``enrolling``: the caller is the enrollment itself, so
    the enrolling state is no operation of someone else's."""
    if node.state in LEASED_STATES or node.reservation_id is not None:
        return "leased"
    working = node.state in TRANSIENT_STATES and not (enrolling and node.state == NodeState.ENROLLING)
    if working or busy(node):
        return "mid-operation"
    return ""


def _refuse_if_leased(node: Node, doing: str, force: bool) -> None:
    """A customer's live server is not to be disrupted by an operator action unless ``force`` says so.

    :raises IllegalTransition: the node is leased (reserved, deploying, burning in or active) and not force.
    """
    if node.state in LEASED_STATES and not force:
        raise IllegalTransition(
            f"{node.name} is leased to a customer ({node.state}); pass force to {doing} anyway"
        )


def _refuse_if_held(node: Node, doing: str) -> None:
    """A node a reservation still holds (e.g. quarantined while leased) must not be wiped into the pool.

    :raises IllegalTransition: the node still belongs to a reservation.
    """
    if node.reservation_id is not None:
        raise IllegalTransition(
            f"{node.name} is still held by reservation {node.reservation_id}; {doing} once that "
            "reservation has released it"
        )


@transaction.atomic
def set_maintenance(node: Node, on: bool, *, actor: Actor, reason: str = "", when_free: bool = False) -> Node:
    """Put a node on operator hold, or lift the hold (the node is wiped before it is leased again).

    ``when_free``: a node that is not free now (a customer holds it, or it is being prepared, released or
    wiped) gets the hold as soon as its wipe ends, instead of going back to the pool; meanwhile it takes no
    new bookings (``hold_requested``). A free node is put on hold at once. Lifting the hold of a node that
    is not on hold yet withdraws the request.

    :raises IllegalTransition: an operation is working on the node, the lifecycle table forbids it, or
        (lifting the hold) a reservation still holds the node.
    """
    if on:
        locked = Node.objects.select_for_update().get(pk=node.pk)
        if when_free and locked.state in HOLD_WHEN_FREE_STATES:
            return request_hold(locked, actor=actor, reason=reason or "operator hold")
        node = _refuse_if_busy(locked, "put it on hold")
        return process_event(
            node, NodeEvent.MAINTAIN, actor=actor, reason=reason or "operator hold", hold_requested=""
        )
    locked = Node.objects.select_for_update().get(pk=node.pk)
    if locked.state != NodeState.MAINTENANCE and locked.hold_requested:
        # only a flag: withdrawn whatever the node is doing (finish_clean reads it under the same lock)
        Node.objects.filter(pk=locked.pk).update(hold_requested="")
        record(actor, "hold_withdrawn", node=locked, reason=reason or f"withdrawn: {locked.hold_requested}")
        locked.refresh_from_db()
        return locked
    node = _refuse_if_busy(locked, "lift the hold")
    _refuse_if_held(node, "lift the hold")
    node = process_event(node, NodeEvent.UNMAINTAIN, actor=actor, reason=reason or "hold lifted")
    enqueue(create_operation(OperationKind.CLEAN, node, requested_by=actor.user))
    return node


# Where a hold asked for "when free" waits: the node comes back through a wipe (CLEANING -> MAINTENANCE).
HOLD_WHEN_FREE_STATES = frozenset(
    {
        NodeState.RESERVED,
        NodeState.DEPLOYING,
        NodeState.BURNING_IN,
        NodeState.ACTIVE,
        NodeState.RELEASING,
        NodeState.CLEANING,
    }
)


@requires_transaction
def request_hold(node: Node, *, actor: Actor, reason: str) -> Node:
    """Record that ``node`` goes on hold when its wipe ends (call with its row locked, in a transaction)."""
    Node.objects.filter(pk=node.pk).update(hold_requested=reason[:300])
    record(
        actor,
        "hold_requested",
        node=node,
        reason=f"{reason} (applied when the server is free and wiped)",
        data={"state": node.state},
    )
    node.refresh_from_db()
    return node


@transaction.atomic
def return_from_quarantine(node: Node, *, actor: Actor, reason: str) -> Node:
    """After repair: wipe and return the node to the pool."""
    if not reason:
        raise InvalidRequest("say what was repaired: a reason is required to return a quarantined server")
    node = _lock_idle(node, "return it to the pool")
    _refuse_if_held(node, "return it to the pool")
    node = process_event(node, NodeEvent.UNQUARANTINE, actor=actor, reason=reason)
    enqueue(create_operation(OperationKind.CLEAN, node, requested_by=actor.user))
    return node


@transaction.atomic
def keep_in_quarantine(node: Node, *, actor: Actor, reason: str = "") -> Node:
    """Quarantine review: the node stays out of the pool; the operator's note goes in its timeline.

    :raises IllegalTransition: the node is not quarantined (e.g. another operator returned it to the pool
        meanwhile): there is nothing to keep out.
    """
    node = Node.objects.select_for_update().get(pk=node.pk)
    if node.state != NodeState.QUARANTINED:
        raise IllegalTransition(f"{node.name} is {node.state}, not quarantined: there is nothing to keep out")
    record(actor, "quarantine_review", node=node, reason=reason or "kept out of the pool after review")
    return node


@transaction.atomic
def quarantine(node: Node, *, actor: Actor, reason: str, force: bool = False) -> Node:
    """Take a node out of service for review. A node leased to a customer (its server is live) is refused
    unless ``force``; it stays held by its reservation (no burn-in re-run or return to the pool until the
    reservation lets it go).

    :raises IllegalTransition: an operation is working on the node, it is leased and not ``force``, or the
        lifecycle table forbids it.
    """
    node = _lock_idle(node, "quarantine it")
    _refuse_if_leased(node, "quarantine it", force)
    reason = reason or "quarantined by operator"
    if node.state in LEASED_STATES:
        reason = f"{reason} (forced: leased to a customer)"
    return process_event(node, NodeEvent.QUARANTINE, actor=actor, reason=reason)


@transaction.atomic
def recover(node: Node, *, actor: Actor, reason: str = "") -> Node:
    """Retry a node in error: wipe it and put it back in the pool.

    :raises IllegalTransition: an operation is working on the node, a reservation still holds it, or it is
        not in error.
    """
    node = _lock_idle(node, "retry it")
    _refuse_if_held(node, "retry it")
    node = process_event(node, NodeEvent.RECOVER, actor=actor, reason=reason or "operator retry")
    enqueue(create_operation(OperationKind.CLEAN, node, requested_by=actor.user))
    return node


@transaction.atomic
def rerun_burnin(node: Node, *, actor: Actor) -> Operation:
    """Run burn-in again on a quarantined node (it stays quarantined).

    :raises IllegalTransition: the node is not quarantined (now: its row is locked and read again), an
        operation is working on it, or a reservation still holds it (a customer's server quarantined while
        leased: burn-in would run on it live).
    """
    node = Node.objects.select_for_update().get(pk=node.pk)
    if node.state != NodeState.QUARANTINED:
        raise IllegalTransition(f"burn-in can be re-run on quarantined servers; {node.name} is {node.state}")
    _refuse_if_busy(node, "re-run burn-in")
    _refuse_if_held(node, "re-run burn-in")
    op = create_operation(OperationKind.BURNIN, node, requested_by=actor.user)
    record(actor, "burnin_rerun", node=node, operation=op, reason="operator re-run of burn-in")
    enqueue(op)
    return op


# The states a server can be reimaged from: idle (wiped back into the pool) or leased and handed over
# (the customer's image written again). Rollouts by filter take only these.
REIMAGEABLE_STATES = (NodeState.AVAILABLE, NodeState.ACTIVE)


@transaction.atomic
def reimage(
    node: Node, *, actor: Actor, image=None, force: bool = False, rollout=None, reason: str = ""
) -> Operation:
    """Reimage one node. A leased node (a customer's) is refused unless ``force``; an idle node is wiped
    (clean) so it returns to the pool fresh.

    :raises IllegalTransition: leased without force, busy, or in a state that cannot be reimaged.
    :raises InvalidNodeData: the node's record fails the validation of the drivers the work uses (for an
        active node: its BMC, the deploy with ``image`` or its own, the burn-in; for an idle one: its BMC
        and the wipe), checked before anything changes.
    """
    node = Node.objects.select_for_update().get(pk=node.pk)
    if busy(node):
        raise IllegalTransition(f"{node.name} is busy with another operation; try again when it finishes")
    _refuse_if_leased(node, "reimage it", force)
    if node.state in REIMAGEABLE_STATES:
        kind = OperationKind.REIMAGE if node.state == NodeState.ACTIVE else OperationKind.CLEAN
        hardware.validate_for(node, kind, image=image)
    params = {"reason": reason or "reimage requested"}
    if image is not None:
        params["image_id"] = image.pk
    if node.state == NodeState.ACTIVE:
        op = create_operation(
            OperationKind.REIMAGE,
            node,
            reservation=node.reservation,
            requested_by=actor.user,
            params=params,
            rollout=rollout,
        )
    elif node.state == NodeState.AVAILABLE:
        process_event(node, NodeEvent.CLEAN, actor=actor, reason=params["reason"])
        op = create_operation(
            OperationKind.CLEAN, node, requested_by=actor.user, params=params, rollout=rollout
        )
    else:
        raise IllegalTransition(
            f"{node.name} is {node.state}; only active or available servers can be reimaged"
        )
    record(actor, "reimage", node=node, operation=op, reason=params["reason"], data={"force": force})
    enqueue(op)
    return op


# Power actions that take a live server down (or boot it into the installer next time), in words.
_DISRUPTIVE_POWER_ACTIONS = {
    "off": "power it off",
    "reset": "reset it",
    "pxe": "set it to boot from the network (pxe)",
}


@transaction.atomic
def power(node: Node, action: str, *, actor: Actor, force: bool = False) -> Operation:
    """Queue a power action on the node's BMC. Off, reset and pxe on a node leased to a customer are
    refused unless ``force``; on is always allowed.

    :raises InvalidRequest: an unknown action.
    :raises IllegalTransition: an operation is working on the node, or it is leased and not ``force``.
    """
    if action not in {"on", "off", "reset", "pxe"}:
        raise InvalidRequest("power action must be on, off, reset or pxe")
    node = _lock_idle(node, f"power {action}")
    if action in _DISRUPTIVE_POWER_ACTIONS:
        _refuse_if_leased(node, _DISRUPTIVE_POWER_ACTIONS[action], force)
    op = create_operation(OperationKind.POWER, node, requested_by=actor.user, params={"action": action})
    record(actor, "power", node=node, operation=op, reason=action, data={"force": force})
    enqueue(op)
    return op
