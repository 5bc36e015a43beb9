"""The node lifecycle's writer and its audit: who acts (Actor), what they did (record), and the one function
that changes ``Node.state`` (process_event), checked against the table in states.py and audited in the same
transaction. Below both the engine and the services, which each move nodes through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.db import transaction
from django.utils import timezone

from provisioner import events
from provisioner.errors import IllegalTransition
from provisioner.models import AuditEvent, Node, Operation
from provisioner.states import NodeEvent, allowed_events, next_state


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
    if "organization" not in fields:
        reservation = fields.get("reservation")
        if reservation is not None:
            fields["organization"] = reservation.organization
    # The event the stream derives from it, if any, commits or rolls back with it (and with the change).
    with transaction.atomic(savepoint=False):
        audit = AuditEvent.objects.create(
            actor=actor.user,
            actor_label=str(actor),
            request_id=actor.request_id,
            action=action,
            reason=reason,
            **fields,
        )
        events.from_audit(audit)
    return audit


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
        if current is None:
            raise IllegalTransition(f"node {node.name} no longer exists")
        if expected_state is not None and current != expected_state:
            raise IllegalTransition(
                f"node {node.name} is {current}, not {expected_state}; cannot {event.label}"
            )
        target = next_state(current, event)
        if target is None:
            allowed = ", ".join(e.value for e in allowed_events(current)) or "none"
            raise IllegalTransition(
                f"node {node.name} is {current}: '{event.value}' is not allowed from there (allowed: {allowed})"
            )
        now = timezone.now()
        updated = Node.objects.filter(pk=node.pk, state=current).update(
            state=target, state_changed_at=now, state_reason=reason, **changes
        )
        if updated != 1:
            raise IllegalTransition(f"node {node.name} changed state while moving it to {target}; try again")
        record(
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
    node.refresh_from_db()
    return node
