"""The event stream: one append-only, typed, versioned record of what happened, for machines (billing,
usage, alerting) as the audit trail is for people.

Each event is written in the transaction of the change it describes (provisioner.events), so a crash or a
rollback never separates the two. Readers page by ``sequence``, a number given to events in commit order
(provisioner.events.sequence_committed): the row's own id is drawn when it is inserted, and on PostgreSQL
concurrent transactions commit in another order than they drew their ids, so a reader paging by id would
skip an event that commits after a later one was read.
"""

from __future__ import annotations

from typing import Any

from django.db import models

from provisioner.models.tenancy import OrgScopedQuerySet


class EventQuerySet(OrgScopedQuerySet):
    org_field = "organization"

    def sequenced(self) -> EventQuerySet:
        """Events readers may see: those given their place in the stream, in that order."""
        return self.filter(sequence__isnull=False).order_by("sequence")


class Event(models.Model):
    class Type(models.TextChoices):
        NODE_TRANSITION = "node.transition", "A server moved from one lifecycle state to another"
        RESERVATION_CREATED = "reservation.created", "A reservation was booked"
        RESERVATION_RELEASED = "reservation.released", "A reservation was released"
        OPERATION_FINISHED = "operation.finished", "An operation succeeded, failed or was cancelled"
        BURNIN_VERDICT = "burnin.verdict", "A burn-in passed or failed"
        API_TOKEN_CREATED = "api_token.created", "An API token was issued"
        API_TOKEN_REVOKED = "api_token.revoked", "An API token was revoked"

    type = models.CharField(max_length=50, choices=Type.choices)
    # The payload's schema version for this type: a consumer reads the versions it knows and skips others.
    version = models.PositiveSmallIntegerField()
    # Whose event it is; null for fleet-only events (operators see those).
    organization = models.ForeignKey(
        "provisioner.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    payload = models.JSONField()
    created_at = models.DateTimeField(db_index=True)
    # PostgreSQL: the writing transaction's id, so that the sequencer numbers only events whose
    # transactions, and all older ones, have ended. Null on SQLite, where writers take turns.
    txid = models.BigIntegerField(null=True, blank=True)
    # The cursor: the event's place in the stream, given in commit order after it committed.
    sequence = models.BigIntegerField(null=True, blank=True, unique=True)

    objects = EventQuerySet.as_manager()

    class Meta:
        ordering = ["sequence"]
        indexes = [
            models.Index(
                fields=["txid", "id"], name="event_unsequenced", condition=models.Q(sequence__isnull=True)
            ),
            models.Index(fields=["organization", "sequence"], name="event_org_sequence"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence or '?'} {self.type} v{self.version}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Events are appended, never edited: a consumer that read one must be able to trust it."""
        if self.pk is not None and not self._state.adding:
            raise ValueError("events are append-only: an event that exists is never changed")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ValueError("events are append-only: they are never deleted one by one")
