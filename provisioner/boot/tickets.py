"""Deploy tickets: one per deploy attempt of a node.

The engine opens a ticket (with the instructions the agent will need) before it PXE-boots the node.
The node's first ``GET /boot/<mac>.ipxe`` claims the ticket and gets a script carrying a fresh agent token;
the ticket never hands out a second one. The agent fetches its instructions once with that token, reports
progress, and posts one result, which the engine waits for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from provisioner.models import DeployTicket, Node, Operation

TICKET_LIFETIME = dt.timedelta(minutes=30)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def watch_key(ticket_id: int) -> str:
    """The capability to read one ticket's progress and result (what the engine's wait task polls with).
    An HMAC of the ticket id under the secret key: nothing to store, useless for any other ticket."""
    from django.utils.crypto import salted_hmac

    return salted_hmac("neocloud.deploy-ticket.watch", str(ticket_id), algorithm="sha256").hexdigest()


def check_watch_key(ticket_id: int, key: str) -> bool:
    from django.utils.crypto import constant_time_compare

    return constant_time_compare(watch_key(ticket_id), key)


def open_ticket(node: Node, operation: Operation, instructions: dict[str, Any]) -> DeployTicket:
    """Open a new ticket for the node, closing any earlier unfinished one (a retried deploy)."""
    with transaction.atomic():
        DeployTicket.objects.filter(node=node, result_at__isnull=True).update(
            result_at=timezone.now(), result={"status": "superseded"}
        )
        return DeployTicket.objects.create(
            node=node,
            operation=operation,
            instructions=instructions,
            expires_at=timezone.now() + TICKET_LIFETIME,
        )


def _still_open(now: dt.datetime) -> QuerySet[DeployTicket]:
    """Tickets no result closed (superseded included) and not expired at ``now``."""
    return DeployTicket.objects.filter(result_at__isnull=True, expires_at__gt=now)


def claim_for_boot(node: Node) -> tuple[DeployTicket | None, str | None]:
    """For a PXE boot of ``node``: (ticket, new agent token) if a deploy waits for it, else (None, None).
    A ticket whose script was already served yields (ticket, None): the caller refuses."""
    for _ in range(2):  # a retried deploy may replace the ticket between the lookup and the claim: once more
        now = timezone.now()
        ticket = _still_open(now).filter(node=node).order_by("-created_at").first()
        if ticket is None:
            return None, None
        token = secrets.token_urlsafe(32)
        claimed = (
            _still_open(now)
            .filter(pk=ticket.pk, script_served_at__isnull=True)
            .update(script_served_at=now, token_hash=_hash(token))
        )
        if claimed == 1:
            return ticket, token
        if DeployTicket.objects.filter(pk=ticket.pk, script_served_at__isnull=False).exists():
            return ticket, None
    return None, None


def ticket_for_token(token: str) -> DeployTicket | None:
    if not token:
        return None
    return (
        DeployTicket.objects.select_related("node")
        .filter(token_hash=_hash(token), expires_at__gt=timezone.now())
        .first()
    )


def take_instructions(ticket: DeployTicket) -> bool:
    """Mark the instructions fetched. False when they were fetched before (a reused token) or the ticket
    was closed or replaced meanwhile."""
    now = timezone.now()
    return (
        _still_open(now)
        .filter(pk=ticket.pk, instructions_fetched_at__isnull=True)
        .update(instructions_fetched_at=now)
        == 1
    )


def record_progress(ticket: DeployTicket, progress: dict[str, Any]) -> None:
    DeployTicket.objects.filter(pk=ticket.pk, result_at__isnull=True).update(progress=progress)


def record_result(ticket: DeployTicket, result: dict[str, Any]) -> bool:
    """Store the agent's result once. False when a result was already recorded. The boot service's views
    then wake the operation waiting for it (:func:`provisioner.boot.views.record_and_wake`)."""
    return (
        DeployTicket.objects.filter(pk=ticket.pk, result_at__isnull=True).update(
            result=result, result_at=timezone.now()
        )
        == 1
    )
