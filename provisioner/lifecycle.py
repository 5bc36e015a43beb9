"""The node lifecycle's writer and its audit: who acts (Actor), what they did (record), and the one function
that changes ``Node.state`` (process_event), checked against the table in states.py and audited in the same
transaction; process_events does the same for several nodes moved by one event, in a few statements, with the
same checks. Below both the engine and the services, which each move nodes through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from django.db import transaction
from django.utils import timezone

from provisioner import events
from provisioner.errors import IllegalTransition
from provisioner.models import AuditEvent, Node, Operation
from provisioner.states import NodeEvent, NodeState, allowed_events, next_state


@dataclasses.dataclass(frozen=True)
class Actor:
    user: Any = None  # a User, or None for the system
    label: str = ""  # "engine", "scheduler", "cli", "operator <name>", or the username
    request_id: str = ""

    @classmethod
    def system(cls, label: str) -> Actor:
        return cls(user=None, label=label)

    @classmethod
    def from_request(cls, request: Any) -> Actor:
        user = request.user if request.user.is_authenticated else None
        return cls(
            user=user,
            label=getattr(user, "username", "anonymous"),
            request_id=getattr(request, "request_id", ""),
        )

    @classmethod
    def operator_from_request(cls, request: Any) -> Actor:
        """An operator acting through the operator API or pages. The audit trail, which the customer whose
        servers or reservation it touches reads too, says an operator did it, by name."""
        actor = cls.from_request(request)
        return dataclasses.replace(actor, label=f"operator {actor.label}")

    def __str__(self) -> str:
        return self.label or (self.user.username if self.user else "system")


def record(actor: Actor, action: str, *, reason: str = "", **fields: Any) -> AuditEvent:
    """Write one audit event. ``fields`` are AuditEvent columns (node, reservation, operation, ...)."""
    audit = _audit_event(actor, action, reason=reason, **fields)
    # The event the stream derives from it, if any, commits or rolls back with it (and with the change).
    with transaction.atomic(savepoint=False):
        audit.save(force_insert=True)
        events.from_audit(audit)
    return audit


def _audit_event(actor: Actor, action: str, *, reason: str = "", **fields: Any) -> AuditEvent:
    """The audit event ``record`` writes, unsaved (process_events inserts several at once)."""
    if "organization" not in fields:
        reservation = fields.get("reservation")
        if reservation is not None:
            fields["organization"] = reservation.organization
    return AuditEvent(
        actor=actor.user,
        actor_label=str(actor),
        request_id=actor.request_id,
        action=action,
        reason=reason,
        **fields,
    )


def process_event(
    node: Node,
    event: NodeEvent | str,
    *,
    actor: Actor,
    reason: str = "",
    operation: Operation | None = None,
    expected_state: str | None = None,
    **changes: Any,
) -> Node:
    """Advance ``node`` by ``event`` and record an AuditEvent. ``changes`` are other Node fields written in
    the same update (owner, reservation, ...).

    The update is conditional on the state the node is in now (compare-and-set), so two processes racing
    to move the same node cannot both succeed: the loser gets IllegalTransition.

    :raises IllegalTransition: the table has no such transition from the node's current state, or the state
        changed underneath us.
    """
    event = NodeEvent(event)
    with transaction.atomic():
        current = Node.objects.filter(pk=node.pk).values_list("state", flat=True).first()
        target = _target(node, current, event, expected_state)
        assert current is not None  # _target refuses a node that is gone
        now = timezone.now()
        updated = Node.objects.filter(pk=node.pk, state=current).update(
            state=target, state_changed_at=now, state_reason=reason, **changes
        )
        if updated != 1:
            raise IllegalTransition(f"node {node.name} changed state while moving it to {target}; try again")
        audit = _transition_event(node, current, target, event, actor, reason, operation, changes)
        audit.save(force_insert=True)
        events.from_audit(audit)  # the stream's event, in the same transaction
    node.refresh_from_db()
    return node


def process_events(
    nodes: Sequence[Node],
    event: NodeEvent | str,
    *,
    actor: Actor,
    reason: str = "",
    operation: Operation | None = None,
    expected_state: str | None = None,
    **changes: Any,
) -> list[Node]:
    """Advance every one of ``nodes`` by the same ``event``, all or none: what process_event does for each,
    with its checks (the table, ``expected_state``, compare-and-set) and the same audit events, in a few
    statements whatever their number: one read of their states, one conditional update per state they
    are in, one insert of their audit events. A booking or a release moves all of a reservation's nodes
    at once. The nodes get the fields written (``state``, ``state_changed_at``, ``state_reason`` and
    ``changes``); nothing else of them is read again.

    :raises IllegalTransition: process_event would refuse one of them, or one changed state underneath us;
        then none is moved.
    :raises ValueError: a node is listed twice.
    """
    event = NodeEvent(event)
    if len({node.pk for node in nodes}) != len(nodes):
        raise ValueError("process_events moves each node once: a node is listed twice")
    if not nodes:
        return []
    with transaction.atomic():
        current = dict(Node.objects.filter(pk__in=[node.pk for node in nodes]).values_list("pk", "state"))
        by_state: dict[str, list[int]] = {}
        targets = {}
        for node in nodes:
            targets[node.pk] = _target(node, current.get(node.pk), event, expected_state)
            by_state.setdefault(current[node.pk], []).append(node.pk)
        now = timezone.now()
        for state, pks in by_state.items():
            target = targets[pks[0]]
            updated = Node.objects.filter(pk__in=pks, state=state).update(
                state=target, state_changed_at=now, state_reason=reason, **changes
            )
            if updated != len(pks):
                names = ", ".join(sorted(node.name for node in nodes if node.pk in pks))
                raise IllegalTransition(
                    f"a node of {names} changed state while moving them to {target}; try again"
                )
        audits = AuditEvent.objects.bulk_create(
            _transition_event(
                node, current[node.pk], targets[node.pk], event, actor, reason, operation, changes
            )
            for node in nodes
        )
        for audit in audits:  # the stream's events, in the same transaction (one per transition, as record)
            events.from_audit(audit)
    for node in nodes:
        node.state, node.state_changed_at, node.state_reason = targets[node.pk], now, reason
        for field, value in changes.items():
            setattr(node, field, value)
    return list(nodes)


def _target(node: Node, current: str | None, event: NodeEvent, expected_state: str | None) -> NodeState:
    """Where ``event`` takes ``node`` from ``current`` (its state in the database; None: it is gone), by the
    table in states.py: process_event's and process_events' one check.

    :raises IllegalTransition: it is gone, not in ``expected_state``, or the table has no such transition.
    """
    if current is None:
        raise IllegalTransition(f"node {node.name} no longer exists")
    if expected_state is not None and current != expected_state:
        raise IllegalTransition(f"node {node.name} is {current}, not {expected_state}; cannot {event.label}")
    target = next_state(current, event)
    if target is None:
        allowed = ", ".join(e.value for e in allowed_events(current)) or "none"
        raise IllegalTransition(
            f"node {node.name} is {current}: '{event.value}' is not allowed from there (allowed: {allowed})"
        )
    return target


def _transition_event(
    node: Node,
    current: str,
    target: str,
    event: NodeEvent,
    actor: Actor,
    reason: str,
    operation: Operation | None,
    changes: dict[str, Any],
) -> AuditEvent:
    """The audit event of one transition, unsaved."""
    return _audit_event(
        actor,
        "transition",
        node=node,
        operation=operation,
        reservation=changes.get("reservation") or node.reservation,
        # the customer who holds (or just gave up) the node sees its transitions in their audit trail
        organization=changes.get("owner") or node.owner,
        from_state=current,
        to_state=target,
        reason=reason or event.label,
        data={"event": event.value},
    )
