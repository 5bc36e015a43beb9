"""Pricing usage: intervals of server time and hourly prices in, usage records in integer cents out.

No Django here: the services module (provisioner.services.metering) reads the intervals and prices from the
database and hands them to ``price_intervals``; tests check the arithmetic without one.

The rules, in one place (docs/metering.md says the same for customers):

- Time is counted in whole seconds of UTC: each interval's start and end are truncated to the second
  before anything else, so an interval split anywhere on a second boundary gives pieces whose seconds add
  up to the whole, and a second lies in exactly one month.
- An interval is split at the start of every calendar month (UTC) and at every price change inside it; each
  piece is one record with one unit price.
- A record's amount is ``seconds * cents_per_hour / 3600`` rounded half up to a whole cent, computed in
  integers (no floating point): ``(2 * seconds * cents_per_hour + 3600) // 7200``.
- A total is the sum of its records' amounts, never a rounding of summed seconds: a statement's total
  reconciles exactly with the records it lists.
- Time before a server type's first price is recorded at 0 cents per hour (``priced`` is false).
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence

SECONDS_PER_HOUR = 3600


class Kind:
    """How a reservation is billed."""

    ON_DEMAND = "on_demand"  # as used: from handover to release
    RESERVED = "reserved"  # as booked: the window


@dataclasses.dataclass(frozen=True)
class Interval:
    """One server's billable time for one reservation: [start, end)."""

    reservation_id: int
    server: str
    server_type: str
    kind: str
    start: dt.datetime
    end: dt.datetime
    gpus: int = 0


@dataclasses.dataclass(frozen=True)
class Price:
    """``cents_per_hour`` for one server of ``server_type`` from ``effective_from`` until the next price."""

    server_type: str
    effective_from: dt.datetime
    cents_per_hour: int
    currency: str


@dataclasses.dataclass(frozen=True)
class UsageRecord:
    """One priced piece of an interval: one server, one reservation, one month, one unit price."""

    reservation_id: int
    server: str
    server_type: str
    kind: str
    start: dt.datetime
    end: dt.datetime
    seconds: int
    cents_per_hour: int
    currency: str
    amount_cents: int
    gpus: int = 0
    priced: bool = True


def whole_second(moment: dt.datetime) -> dt.datetime:
    """``moment`` in UTC, truncated to the second (the unit usage is counted in)."""
    if moment.tzinfo is None:
        raise ValueError("usage times must be aware (UTC)")
    return moment.astimezone(dt.UTC).replace(microsecond=0)


def month_start(moment: dt.datetime) -> dt.datetime:
    """The first second of ``moment``'s calendar month, UTC."""
    moment = moment.astimezone(dt.UTC)
    return dt.datetime(moment.year, moment.month, 1, tzinfo=dt.UTC)


def next_month(moment: dt.datetime) -> dt.datetime:
    """The first second of the calendar month after ``moment``'s, UTC."""
    start = month_start(moment)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def month_bounds(year: int, month: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a calendar month, UTC."""
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    return start, next_month(start)


def months_between(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The first second of every month that [start, end) touches."""
    out = []
    current = month_start(start)
    while current < end:
        out.append(current)
        current = next_month(current)
    return out


def amount_cents(seconds: int, cents_per_hour: int) -> int:
    """``seconds`` at ``cents_per_hour``, rounded half up to a whole cent, in integer arithmetic."""
    if seconds < 0 or cents_per_hour < 0:
        raise ValueError("seconds and prices are never negative")
    return (2 * seconds * cents_per_hour + SECONDS_PER_HOUR) // (2 * SECONDS_PER_HOUR)


def _price_pieces(
    start: dt.datetime, end: dt.datetime, prices: Sequence[Price]
) -> Iterable[tuple[dt.datetime, dt.datetime, Price | None]]:
    """[start, end) cut at each price change, with the price in force in each piece (None: no price yet).
    ``prices`` are one server type's, sorted by ``effective_from``."""
    starts = [whole_second(p.effective_from) for p in prices]
    i = bisect.bisect_right(starts, start) - 1  # the price in force at ``start`` (-1: none yet)
    cursor = start
    while cursor < end:
        following = starts[i + 1] if i + 1 < len(starts) else None
        piece_end = min(end, following) if following is not None else end
        yield cursor, piece_end, prices[i] if i >= 0 else None
        cursor = piece_end
        i += 1


def price_intervals(
    intervals: Iterable[Interval],
    prices: Iterable[Price],
    *,
    period: tuple[dt.datetime, dt.datetime] | None = None,
    currency: str = "USD",
) -> list[UsageRecord]:
    """Usage records of ``intervals``, clipped to ``period`` [start, end) if given, split at month starts and
    price changes, each priced by the module's rules. ``currency`` names the currency of unpriced time.
    Records come in the order of their intervals, each interval's in time order."""
    by_type: dict[str, list[Price]] = {}
    for listed_price in prices:
        by_type.setdefault(listed_price.server_type, []).append(listed_price)
    for listed in by_type.values():
        listed.sort(key=lambda p: p.effective_from)
    lower = whole_second(period[0]) if period else None
    upper = whole_second(period[1]) if period else None
    records = []
    for interval in intervals:
        start, end = whole_second(interval.start), whole_second(interval.end)
        if lower is not None and start < lower:
            start = lower
        if upper is not None and end > upper:
            end = upper
        if end <= start:
            continue
        for month in months_between(start, end):
            m_start, m_end = max(start, month), min(end, next_month(month))
            for p_start, p_end, price in _price_pieces(m_start, m_end, by_type.get(interval.server_type, [])):
                seconds = int((p_end - p_start).total_seconds())
                if seconds <= 0:
                    continue
                rate = price.cents_per_hour if price else 0
                records.append(
                    UsageRecord(
                        reservation_id=interval.reservation_id,
                        server=interval.server,
                        server_type=interval.server_type,
                        kind=interval.kind,
                        start=p_start,
                        end=p_end,
                        seconds=seconds,
                        cents_per_hour=rate,
                        currency=price.currency if price else currency,
                        amount_cents=amount_cents(seconds, rate),
                        gpus=interval.gpus,
                        priced=price is not None,
                    )
                )
    return records


def total_cents(records: Iterable[UsageRecord]) -> int:
    """The total of ``records``: the sum of their amounts (what reconciles)."""
    return sum(r.amount_cents for r in records)


def gpu_seconds_per_day(records: Iterable[UsageRecord]) -> dict[dt.date, dict[str, int]]:
    """GPU-seconds used per UTC day and server type (a record's seconds times its GPUs, split at midnight)."""
    out: dict[dt.date, dict[str, int]] = {}
    for record in records:
        cursor = record.start
        while cursor < record.end:
            midnight = dt.datetime.combine(cursor.date() + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
            piece_end = min(record.end, midnight)
            seconds = int((piece_end - cursor).total_seconds())
            day = out.setdefault(cursor.date(), {})
            day[record.server_type] = day.get(record.server_type, 0) + seconds * record.gpus
            cursor = piece_end
    return out
