"""Fast-track (Ironic's ``fast_track``): the deploy agent that wiped a server stays up in the ramdisk,
heartbeating, and the next deploy of that server hands it a new ticket instead of power cycling the server
through its firmware's self-test into the ramdisk again.

The node records it: ``fast_track_ticket`` (the wipe's ticket, whose token the agent heartbeats with),
``agent_heartbeat_at`` and ``fast_track_until`` (the last heartbeat plus the heartbeats it may miss). The
boot service starts it when the agent reports a wipe whose instructions asked for it (:func:`start`, in the
transaction that records the result, so the agent's first heartbeat finds it), each heartbeat moves the
deadline on and hands over a ticket a deploy opened meanwhile (:func:`heartbeat`), and the scheduler powers off
an agent whose deadline passed (``services.fast_track.expire``). Each of those changes the node's fast-track
fields by a conditional update on the values it read, so exactly one of them wins a race.
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from provisioner.boot.tickets import TICKET_LIFETIME, _hash, _still_open
from provisioner.models import DeployTicket, Node
from provisioner.states import NodeState

# States in which a fast-tracked agent keeps waiting for its next ticket: idle, or on the way to a deploy or a
# wipe (a reservation, the warm pool, a release).
MAY_DEPLOY_STATES = frozenset(
    {
        NodeState.AVAILABLE,
        NodeState.RESERVED,
        NodeState.DEPLOYING,
        NodeState.WARMING,
        NodeState.RELEASING,
        NodeState.CLEANING,
    }
)


def enabled() -> bool:
    return bool(settings.NEOCLOUD_FAST_TRACK)


def heartbeat_seconds() -> float:
    return float(settings.NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS)


def deadline_after(moment: dt.datetime) -> dt.datetime:
    """When an agent that heartbeated at ``moment`` counts as gone: after the heartbeats it may miss."""
    return moment + dt.timedelta(seconds=heartbeat_seconds() * settings.NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS)


def erase_instructions(node_name: str) -> dict[str, Any]:
    """The agent's instructions for a wipe: with fast-track on, it stays up afterwards and heartbeats."""
    instructions: dict[str, Any] = {"action": "erase", "node": node_name}
    if enabled():
        instructions["fast_track"] = {"heartbeat_seconds": heartbeat_seconds()}
    return instructions


def start(ticket: DeployTicket, result: dict[str, Any]) -> bool:
    """Record that the agent of ``ticket`` stays up, when it reported a successful wipe whose instructions
    asked it to (call in the transaction that records the result). Returns whether it did."""
    instructions = ticket.instructions or {}
    if result.get("status") != "ok" or instructions.get("action") != "erase":
        return False
    if not instructions.get("fast_track"):
        return False
    now = timezone.now()
    Node.objects.filter(pk=ticket.node_id).update(
        fast_track_ticket=ticket, agent_heartbeat_at=now, fast_track_until=deadline_after(now)
    )
    return True


def is_fast_tracked(node: Node, now: dt.datetime | None = None) -> bool:
    """Whether a deploy may hand ``node``'s running agent its ticket (read from the database, not ``node``)."""
    now = now or timezone.now()
    return Node.objects.filter(pk=node.pk, fast_track_ticket__isnull=False, fast_track_until__gt=now).exists()


def end(node_id: int) -> None:
    """Forget the node's fast-track (its power is changed by other means: a netboot, a power action)."""
    Node.objects.filter(pk=node_id).exclude(fast_track_ticket=None, fast_track_until=None).update(
        fast_track_ticket=None, fast_track_until=None
    )


def heartbeat(ticket: DeployTicket) -> dict[str, Any] | None:
    """An agent's heartbeat with ``ticket``'s token. None when its node is not fast-tracked with that ticket
    (any more): the agent stops (the view answers 410). Else ``{"action": "run", "token": ...}`` with the
    fresh token of a ticket a deploy opened for the node (claimed here as a PXE boot would claim it: the
    node's fast-track ends, the agent runs that ticket), or ``{"action": "wait", "interval": s}``."""
    now = timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=ticket.node_id).first()
        if (
            node is None
            or node.fast_track_ticket_id != ticket.pk
            or node.fast_track_until is None
            or node.fast_track_until <= now
        ):
            return None
        if node.state not in MAY_DEPLOY_STATES:
            # held by an operator, quarantined, failed: the deadline is not moved on, and once it passes
            # the scheduler powers the server off
            return None
        waiting = _still_open(now).filter(node=node, script_served_at__isnull=True).order_by("-created_at")
        following = waiting.first()
        if following is not None:
            token = secrets.token_urlsafe(32)
            claimed = waiting.filter(pk=following.pk).update(script_served_at=now, token_hash=_hash(token))
            if claimed == 1:
                Node.objects.filter(pk=node.pk).update(
                    agent_heartbeat_at=now, fast_track_ticket=None, fast_track_until=None
                )
                return {"action": "run", "token": token}
        Node.objects.filter(pk=node.pk).update(agent_heartbeat_at=now, fast_track_until=deadline_after(now))
        # the wipe's ticket stays usable for the heartbeats as long as the agent keeps sending them
        DeployTicket.objects.filter(pk=ticket.pk).update(expires_at=now + TICKET_LIFETIME)
    return {"action": "wait", "interval": heartbeat_seconds()}
