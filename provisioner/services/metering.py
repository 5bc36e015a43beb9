"""Metering: prices set by operators, usage derived from what the domain records, monthly statements, and the
money quota checked when servers are booked.

Usage is never stored: it is read from the allocations (which server was bound to which reservation, for
which window, and when that ended) and the handovers (the audit record of a server's first transition to
``active`` for a reservation), then priced by provisioner.usage. A statement read twice therefore says the
same, and a statement can never disagree with the reservations it bills. docs/metering.md has the rules.

- On demand (a reservation without an end): each server from its handover to the end of its allocation
  (release, or replacement of a failed server), or until it went out of service (quarantined, in error or
  on hold) if that came first; a server never handed over costs nothing.
- Reserved (a reservation with a window): each allocated server for its booked window, from the allocation's
  start to the window's end, even if released early; a server replaced before the end is billed until it was
  replaced (its spare from then on); a window released before it started costs nothing.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import re
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from provisioner import usage
from provisioner.errors import InvalidRequest, QuotaExceeded
from provisioner.lifecycle import Actor, record
from provisioner.models import Allocation, AuditEvent, Organization, Reservation, ServerType, ServerTypePrice
from provisioner.states import NodeState

# A price may start this far in the past (the clock of the operator's client, the request's travel).
PRICE_START_SLACK = dt.timedelta(seconds=60)
MONTH_RE = re.compile(r"^(\d{4})-(\d{2})$")


def currency() -> str:
    """The installation's currency (NEOCLOUD_CURRENCY)."""
    return str(settings.NEOCLOUD_CURRENCY)


# --- prices ----------------------------------------------------------------------------------------------


def set_price(
    server_type: ServerType,
    cents_per_hour: int,
    *,
    actor: Actor,
    effective_from: dt.datetime | None = None,
    currency_code: str | None = None,
) -> ServerTypePrice:
    """Price ``server_type`` at ``cents_per_hour`` per server from ``effective_from`` (default: now) on.

    Not retroactive: a start in the past is refused, so time already used keeps the price it was used at.
    A price that starts now also becomes the catalog's price (``ServerType.hourly_price_cents``).

    :raises InvalidRequest: a negative price, another currency than NEOCLOUD_CURRENCY, a start in the past or
        a naive one, or a price of this type starting at that very second already.
    """
    now = timezone.now()
    if cents_per_hour < 0:
        raise InvalidRequest("a price is never negative")
    code = currency_code or currency()
    if code != currency():
        raise InvalidRequest(f"prices are in {currency()} (NEOCLOUD_CURRENCY), not {code}")
    start = effective_from or now
    if timezone.is_naive(start):
        raise InvalidRequest("times must include a timezone (e.g. 2026-12-01T00:00:00Z)")
    if start < now - PRICE_START_SLACK:
        raise InvalidRequest("a price cannot start in the past: time already used keeps its price")
    start = usage.whole_second(max(start, now))
    with transaction.atomic():
        if ServerTypePrice.objects.filter(server_type=server_type, effective_from=start).exists():
            raise InvalidRequest(f"{server_type.slug} already has a price starting at {start.isoformat()}")
        price = ServerTypePrice.objects.create(
            server_type=server_type,
            cents_per_hour=cents_per_hour,
            currency=code,
            effective_from=start,
            created_by=str(actor)[:100],
        )
        if start <= now:
            ServerType.objects.filter(pk=server_type.pk).update(hourly_price_cents=cents_per_hour)
        record(
            actor,
            "set_price",
            reason=f"{server_type.slug}: {cents_per_hour} {code} cents per hour from {start.isoformat()}",
            data={"server_type": server_type.slug, "cents_per_hour": cents_per_hour, "currency": code},
        )
    return price


def prices(server_types: Iterable[str] | None = None) -> list[usage.Price]:
    """Every price (of the server types with these slugs), as provisioner.usage takes them."""
    rows = ServerTypePrice.objects.all()
    if server_types is not None:
        rows = rows.filter(server_type__slug__in=list(server_types))
    return [
        usage.Price(slug, start, cents, code)
        for slug, start, cents, code in rows.values_list(
            "server_type__slug", "effective_from", "cents_per_hour", "currency"
        )
    ]


def price_now(server_type: ServerType, now: dt.datetime | None = None) -> ServerTypePrice | None:
    """The price of ``server_type`` in force now (None: it has none yet)."""
    return (
        ServerTypePrice.objects.filter(server_type=server_type, effective_from__lte=now or timezone.now())
        .order_by("-effective_from")
        .first()
    )


# --- usage -----------------------------------------------------------------------------------------------


def _handover() -> Subquery:
    """When the allocation's node was first handed over (moved to active) for the allocation's reservation."""
    return Subquery(
        AuditEvent.objects.filter(
            node_id=OuterRef("node_id"),
            reservation_id=OuterRef("reservation_id"),
            action="transition",
            to_state=NodeState.ACTIVE,
        )
        .order_by("created_at", "id")
        .values("created_at")[:1]
    )


# States in which a handed-over server no longer serves its customer though its reservation may still hold it
# (an operator's forced quarantine, a failed reimage): on-demand billing stops at the first of them.
OUT_OF_SERVICE_STATES = (NodeState.QUARANTINED, NodeState.ERROR, NodeState.MAINTENANCE)


def _out_of_service() -> Subquery:
    """When the allocation's node, once handed over, first went out of service for its reservation."""
    return Subquery(
        AuditEvent.objects.filter(
            node_id=OuterRef("node_id"),
            reservation_id=OuterRef("reservation_id"),
            action="transition",
            to_state__in=OUT_OF_SERVICE_STATES,
            created_at__gte=OuterRef("handed_over_at"),
        )
        .order_by("created_at", "id")
        .values("created_at")[:1]
    )


def intervals(allocations: QuerySet[Allocation], now: dt.datetime | None = None) -> list[usage.Interval]:
    """The billable time of each allocation (see the module's docstring), in one query. An on-demand server
    still held is counted until ``now``."""
    now = now or timezone.now()
    rows = (
        allocations.annotate(handed_over_at=_handover())
        .annotate(out_of_service_at=_out_of_service())
        .values(
            "reservation_id",
            "node__name",
            "reservation__server_type__slug",
            "reservation__server_type__gpu_count",
            "reservation__ends_at",
            "starts_at",
            "ends_at",
            "ended_at",
            "end_reason",
            "handed_over_at",
            "out_of_service_at",
        )
        .order_by("starts_at", "pk")
    )
    out = []
    for row in rows:
        window_end = row["reservation__ends_at"]
        ended = row["ended_at"]
        if window_end is not None:
            kind = usage.Kind.RESERVED
            start = row["starts_at"]
            end = row["ends_at"] or window_end
            if ended is not None and row["end_reason"].startswith("replaced"):
                end = min(end, ended)
            if ended is not None and ended <= start:
                continue  # let go (released, replaced) before its window began
        else:
            kind = usage.Kind.ON_DEMAND
            start = row["handed_over_at"]
            if start is None:
                continue  # never handed over: nothing used
            end = min(t for t in (ended, row["out_of_service_at"], now) if t is not None)
        if end <= start:
            continue
        out.append(
            usage.Interval(
                reservation_id=row["reservation_id"],
                server=row["node__name"],
                server_type=row["reservation__server_type__slug"],
                kind=kind,
                start=start,
                end=end,
                gpus=row["reservation__server_type__gpu_count"],
            )
        )
    return out


def _org_allocations(org_id: int, start: dt.datetime, end: dt.datetime) -> QuerySet[Allocation]:
    """Allocations of the organization that may have billable time in [start, end) (a superset)."""
    return Allocation.objects.filter(reservation__organization_id=org_id, starts_at__lt=end).filter(
        Q(ends_at__isnull=True, ended_at__isnull=True) | Q(ends_at__gt=start) | Q(ended_at__gt=start)
    )


def _priced(found: list[usage.Interval], period: tuple[dt.datetime, dt.datetime]) -> list[usage.UsageRecord]:
    if not found:
        return []
    return usage.price_intervals(
        found, prices({i.server_type for i in found}), period=period, currency=currency()
    )


def reservation_spend(reservation: Reservation, now: dt.datetime | None = None) -> int:
    """What the reservation has cost so far, in cents of NEOCLOUD_CURRENCY (every month, until now). One not
    started yet (Reservation.not_started) has cost nothing: no query."""
    now = now or timezone.now()
    if reservation.not_started(now):
        return 0
    return spend_by_reservation([reservation.pk], now).get(reservation.pk, 0)


def spend_by_reservation(reservation_ids: Iterable[int], now: dt.datetime | None = None) -> dict[int, int]:
    """What each reservation has cost so far (those that cost nothing may be missing), in two queries
    whatever their number: a page of reservations shows its spend without a query per row."""
    now = now or timezone.now()
    found = intervals(Allocation.objects.filter(reservation_id__in=list(reservation_ids)), now)
    if not found:
        return {}
    out: dict[int, int] = {}
    for r in _priced(found, (min(i.start for i in found), now)):
        out[r.reservation_id] = out.get(r.reservation_id, 0) + r.amount_cents
    return out


# --- statements ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Statement:
    """An organization's usage in one calendar month (UTC), until ``as_of`` while the month is running."""

    organization: Organization
    year: int
    month: int
    start: dt.datetime
    end: dt.datetime
    as_of: dt.datetime
    currency: str
    records: list[usage.UsageRecord]

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def complete(self) -> bool:
        """Whether the month is over (its statement no longer changes)."""
        return self.as_of >= self.end

    @property
    def total_cents(self) -> int:
        return usage.total_cents(self.records)

    def by_server_type(self) -> list[dict[str, object]]:
        """Seconds, GPU-hours and amount per server type, sorted by type."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            row = out.setdefault(r.server_type, {"seconds": 0, "gpu_seconds": 0, "amount_cents": 0})
            row["seconds"] += r.seconds
            row["gpu_seconds"] += r.seconds * r.gpus
            row["amount_cents"] += r.amount_cents
        return [
            {
                "server_type": slug,
                "seconds": row["seconds"],
                "gpu_hours": round(row["gpu_seconds"] / 3600, 4),
                "amount_cents": row["amount_cents"],
            }
            for slug, row in sorted(out.items())
        ]

    def gpu_hours_per_day(self) -> list[dict[str, object]]:
        """GPU-hours per UTC day and server type, every day of the month up to ``as_of`` (zeros included)."""
        used = usage.gpu_seconds_per_day(self.records)
        types = sorted({r.server_type for r in self.records})
        days: list[dict[str, object]] = []
        day = self.start.date()
        last = min(self.end, max(self.as_of, self.start + dt.timedelta(seconds=1))) - dt.timedelta(seconds=1)
        while day <= last.date():
            per_type = used.get(day, {})
            days.append(
                {
                    "date": day.isoformat(),
                    "gpu_hours": {t: round(per_type.get(t, 0) / 3600, 4) for t in types},
                }
            )
            day += dt.timedelta(days=1)
        return days


def parse_month(text: str) -> tuple[int, int]:
    """``YYYY-MM`` as (year, month).

    :raises InvalidRequest: not a month.
    """
    match = MONTH_RE.match(text)
    if not match or not 1 <= int(match.group(2)) <= 12 or not 1970 <= int(match.group(1)) <= 9998:
        raise InvalidRequest(f"{text!r} is no month: write YYYY-MM, e.g. 2026-12")
    return int(match.group(1)), int(match.group(2))


def statement(org: Organization, year: int, month: int, *, now: dt.datetime | None = None) -> Statement:
    """The organization's statement of a month: its usage records until the month's end or ``now``."""
    now = usage.whole_second(now or timezone.now())
    start, end = usage.month_bounds(year, month)
    until = max(start, min(end, now))
    found = intervals(_org_allocations(org.pk, start, until), now) if until > start else []
    records = _priced(found, (start, until))
    records.sort(key=lambda r: (r.start, r.reservation_id, r.server))
    return Statement(org, year, month, start, end, until, currency(), records)


def statement_months(org: Organization, *, now: dt.datetime | None = None) -> list[tuple[int, int]]:
    """The months the organization has statements for, newest first: from its first allocation's month (or
    this month, without one) to this month."""
    now = now or timezone.now()
    first = (
        Allocation.objects.filter(reservation__organization=org)
        .order_by("starts_at")
        .values("starts_at")
        .first()
    )
    begin = usage.month_start(min(first["starts_at"], now) if first else now)
    months = [(m.year, m.month) for m in usage.months_between(begin, now)]
    return months[::-1] or [(now.year, now.month)]


def monthly_totals(org: Organization, *, now: dt.datetime | None = None) -> dict[tuple[int, int], int]:
    """Each month's statement total so far (months without usage may be missing), in two queries: what
    ``statement(org, y, m).total_cents`` says for each, as the records are the same."""
    now = usage.whole_second(now or timezone.now())
    found = intervals(Allocation.objects.filter(reservation__organization=org, starts_at__lt=now), now)
    if not found:
        return {}
    out: dict[tuple[int, int], int] = {}
    for r in _priced(found, (min(i.start for i in found), now)):
        key = (r.start.year, r.start.month)
        out[key] = out.get(key, 0) + r.amount_cents
    return out


CSV_COLUMNS = (
    "reservation",
    "server",
    "server_type",
    "kind",
    "start",
    "end",
    "seconds",
    "cents_per_hour",
    "currency",
    "amount_cents",
)


def record_data(record: usage.UsageRecord) -> dict[str, object]:
    """One usage record as the API and the CSV give it."""
    return {
        "reservation": record.reservation_id,
        "server": record.server,
        "server_type": record.server_type,
        "kind": record.kind,
        "start": record.start.isoformat().replace("+00:00", "Z"),
        "end": record.end.isoformat().replace("+00:00", "Z"),
        "seconds": record.seconds,
        "cents_per_hour": record.cents_per_hour,
        "currency": record.currency,
        "amount_cents": record.amount_cents,
    }


def statement_csv(stmt: Statement) -> str:
    """The statement as CSV: a header, one row per usage record, and a last row ``total`` with the sum."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in stmt.records:
        data = record_data(r)
        writer.writerow([data[c] for c in CSV_COLUMNS])
    writer.writerow(["total", "", "", "", "", "", sum(r.seconds for r in stmt.records), "", stmt.currency,
                     stmt.total_cents])  # fmt: skip
    return buffer.getvalue()


# --- the money quota -------------------------------------------------------------------------------------


def committed_cents(org_id: int, month: dt.datetime, now: dt.datetime) -> int:
    """What the organization has spent or committed to in ``month``: on-demand use until ``now``, reserved
    windows as booked to the month's end."""
    start, end = month, usage.next_month(month)
    found = intervals(_org_allocations(org_id, start, end), now)
    return usage.total_cents(_priced(found, (start, end)))


def check_spend_limit(
    org: Organization,
    limit_cents: int,
    server_type: ServerType,
    count: int,
    starts_at: dt.datetime,
    ends_at: dt.datetime | None,
) -> None:
    """Refuse a booking of ``count`` servers for [starts_at, ends_at) that would take the organization past
    its monthly spend limit in a month it touches. The projected cost is the booking at the prices in force
    then, for its window (an open-ended booking: until the end of the month it starts in, the most it can cost
    there before the next month's limit applies). Call under the organization's lock (reservations'
    _check_quota), so two bookings cannot both see room for themselves.

    :raises QuotaExceeded:
    """
    now = timezone.now()
    start = max(starts_at, now)
    end = ends_at or usage.next_month(start)
    projected_intervals = [
        usage.Interval(0, f"new-{i}", server_type.slug, usage.Kind.RESERVED, start, end) for i in range(count)
    ]
    projected = usage.price_intervals(projected_intervals, prices([server_type.slug]), currency=currency())
    for month in usage.months_between(start, end):
        adding = usage.total_cents(r for r in projected if usage.month_start(r.start) == month)
        if not adding:
            continue
        committed = committed_cents(org.pk, month, now)
        if committed + adding > limit_cents:
            raise QuotaExceeded(
                f"{org.name} may spend at most {format_cents(limit_cents)} in {month:%B %Y}; it has used or "
                f"booked {format_cents(committed)} there and this booking would add "
                f"{format_cents(adding)}"
            )


def format_cents(cents: int, code: str | None = None) -> str:
    """``cents`` for people: ``1234`` → ``12.34 USD``."""
    return f"{cents // 100:,}.{cents % 100:02d} {code or currency()}"
