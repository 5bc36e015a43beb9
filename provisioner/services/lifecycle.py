"""The single writer of ``Node.state``: every transition is looked up in states.TRANSITIONS and audited."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from provisioner.errors import IllegalTransition
from provisioner.models import Node, Operation
from provisioner.services.audit import Actor, record
from provisioner.states import NodeEvent, allowed_events, next_state


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
