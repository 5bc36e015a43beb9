"""Who is acting: a user (with the request that made the change) or a part of the system."""

from __future__ import annotations

import dataclasses
from typing import Any

from provisioner.models import AuditEvent


@dataclasses.dataclass(frozen=True)
class Actor:
    user: Any = None  # a User, or None for the system
    label: str = ""  # "worker:ab12", "scheduler", "cli", or the username
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
    return AuditEvent.objects.create(
        actor=actor.user,
        actor_label=str(actor),
        request_id=actor.request_id,
        action=action,
        reason=reason,
        **fields,
    )
