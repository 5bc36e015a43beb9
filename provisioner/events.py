"""Writing the event stream, and numbering it for readers.

Events are derived from what is already recorded, not from copies of the logic: the audit trail's
transitions, bookings and releases (``from_audit``, called by ``lifecycle.record``), the engine's final
write of an operation, the burn-in report's row, and the token service. Each is written in the transaction
of its change (``emit`` refuses to run outside one), so an event is never lost or invented by a crash.

Payloads are typed and versioned: ``PAYLOAD_VERSIONS`` holds the version each type is written with now. A
change that removes or renames a key is a new version; adding a key is not. docs/events-and-metrics.md
describes every type and version.

Numbering (``sequence_committed``): readers page by ``Event.sequence``, not by the row's id. On
PostgreSQL two transactions draw ids in one order and may commit in the other; a reader that had read
id 11 would then never see id 10. The sequencer numbers only events whose transaction and every older one
have ended (their transaction id below the oldest running one: ``pg_snapshot_xmin``), in transaction
order, so every event numbered later gets a larger number. On SQLite writers take turns (one write lock
from the first write to the commit), so ids are drawn in commit order and the id is the number.
"""

from __future__ import annotations

from typing import Any

from django.db import connection, transaction
from django.db.models import BigIntegerField, F, Func
from django.utils import timezone

from provisioner.models import ApiToken, AuditEvent, BurnInReport, Event, Membership, Operation, Reservation
from provisioner.transactions import requires_transaction

PAYLOAD_VERSIONS: dict[str, int] = {
    Event.Type.NODE_TRANSITION: 1,
    Event.Type.RESERVATION_CREATED: 1,
    Event.Type.RESERVATION_RELEASED: 1,
    Event.Type.OPERATION_FINISHED: 1,
    Event.Type.BURNIN_VERDICT: 1,
    Event.Type.API_TOKEN_CREATED: 1,
    Event.Type.API_TOKEN_REVOKED: 1,
}

# pg_advisory lock key of the sequencer ("neoev" in ASCII): one numbering pass at a time.
_SEQUENCER_LOCK = 0x6E656F6576
# Most events numbered in one pass; the rest wait for the next (the order stays right).
SEQUENCE_BATCH = 10_000


class _CurrentTransactionId(Func):
    """PostgreSQL's id of the writing (top-level) transaction, as a number."""

    template = "pg_current_xact_id()::text::bigint"
    output_field = BigIntegerField()


@requires_transaction
def emit(type: str, payload: dict[str, Any], *, organization_id: int | None = None) -> Event:
    """Append one event of ``type`` (an Event.Type) at its current payload version, in the caller's
    transaction: it commits or rolls back with the change it describes.

    :raises NotInTransaction: called outside ``transaction.atomic()``.
    """
    txid = _CurrentTransactionId() if connection.vendor == "postgresql" else None
    return Event.objects.create(
        type=type,
        version=PAYLOAD_VERSIONS[type],
        organization_id=organization_id,
        payload=payload,
        created_at=timezone.now(),
        txid=txid,
    )


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _reservation(reservation: Reservation) -> dict[str, Any]:
    return {
        "id": reservation.pk,
        "name": reservation.name,
        "server_type": reservation.server_type.slug,
        "count": reservation.count,
        "starts_at": _iso(reservation.starts_at),
        "ends_at": _iso(reservation.ends_at),
        "state": reservation.state,
    }


def from_audit(audit: AuditEvent) -> Event | None:
    """The event an audit record stands for, if it is one the stream carries (a transition, a booking, a
    release); called by ``lifecycle.record`` in the same transaction."""
    actor = {"label": audit.actor_label, "request_id": audit.request_id}
    if audit.action == "transition":
        node = audit.node
        return emit(
            Event.Type.NODE_TRANSITION,
            {
                "node": {"id": audit.node_id, "name": node.name if node is not None else ""},
                "from_state": audit.from_state,
                "to_state": audit.to_state,
                "event": audit.data.get("event", ""),
                "reason": audit.reason,
                "reservation": audit.reservation_id,
                "operation": audit.operation_id,
                "actor": actor,
                "at": _iso(audit.created_at),
            },
            organization_id=audit.organization_id,
        )
    if audit.action in ("reserve", "release") and audit.reservation is not None:
        created = audit.action == "reserve"
        return emit(
            Event.Type.RESERVATION_CREATED if created else Event.Type.RESERVATION_RELEASED,
            {
                "reservation": _reservation(audit.reservation),
                "reason": audit.reason,
                "actor": actor,
                "at": _iso(audit.created_at),
            },
            organization_id=audit.reservation.organization_id,
        )
    return None


@requires_transaction
def operation_finished(operation_id: int) -> Event:
    """The event for an operation that just reached its final state (the engine's last write of it)."""
    op = Operation.objects.select_related("node", "reservation").get(pk=operation_id)
    reservation = op.reservation
    return emit(
        Event.Type.OPERATION_FINISHED,
        {
            "operation": {
                "id": op.pk,
                "kind": op.kind,
                "state": op.state,
                "error_code": op.error_code,
                "error": op.error,
                "created_at": _iso(op.created_at),
                "started_at": _iso(op.started_at),
                "finished_at": _iso(op.finished_at),
            },
            "node": {"id": op.node_id, "name": op.node.name},
            "reservation": op.reservation_id,
            "rollout": op.rollout_id,
        },
        organization_id=reservation.organization_id if reservation is not None else None,
    )


def burnin_verdict(report: BurnInReport) -> Event:
    """The event for a burn-in report just written (same transaction)."""
    reservation = report.reservation
    return emit(
        Event.Type.BURNIN_VERDICT,
        {
            "node": {"id": report.node_id, "name": report.node.name},
            "operation": report.operation_id,
            "reservation": report.reservation_id,
            "passed": report.passed,
            "summary": report.summary,
            "failed_checks": report.failed_checks,
        },
        organization_id=reservation.organization_id if reservation is not None else None,
    )


def api_token_changed(token: ApiToken, *, created: bool, actor_label: str) -> list[Event]:
    """Events for a token issued or revoked. Tokens are personal, but they act in every organization
    their user belongs to: each of those organizations gets the event (a user in none: one fleet event).
    Never the token itself: its name, hint and lifetime only."""
    payload = {
        "token": {
            "id": token.pk,
            "name": token.name,
            "hint": token.hint,
            "user": token.user.get_username(),
            "created_at": _iso(token.created_at),
            "expires_at": _iso(token.expires_at),
            "revoked_at": _iso(token.revoked_at),
        },
        "actor": {"label": actor_label},
    }
    type = Event.Type.API_TOKEN_CREATED if created else Event.Type.API_TOKEN_REVOKED
    orgs: list[int | None] = list(
        Membership.objects.filter(user=token.user).values_list("organization_id", flat=True)
    )
    return [emit(type, payload, organization_id=org) for org in orgs or [None]]


# Numbers the oldest settled events, after the highest number given so far, in transaction order
# (the sequencer's lock is held: no one else numbers meanwhile).
_NUMBER_SETTLED = """
WITH settled AS (
    SELECT id, row_number() OVER (ORDER BY txid, id) AS n FROM provisioner_event
    WHERE sequence IS NULL AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
    ORDER BY txid, id LIMIT %s
), top AS (SELECT coalesce(max(sequence), 0) AS last FROM provisioner_event)
UPDATE provisioner_event AS e SET sequence = top.last + settled.n
FROM settled, top WHERE e.id = settled.id
"""


def sequence_committed(batch: int = SEQUENCE_BATCH) -> int:
    """Number the events whose place in the stream is settled; returns how many it numbered. Cheap when
    there is nothing to do (one indexed look-up); readers call it before reading. Two at once do not
    wait for each other on PostgreSQL: the one that does not get the lock numbers nothing, and its
    reader sees the stream as numbered so far (never with a gap)."""
    with transaction.atomic():
        if connection.vendor != "postgresql":
            return Event.objects.filter(sequence__isnull=True).update(sequence=F("id"))
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [_SEQUENCER_LOCK])
            if not cursor.fetchone()[0]:
                return 0
            cursor.execute(_NUMBER_SETTLED, [batch])
            return cursor.rowcount
