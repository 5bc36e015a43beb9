"""provisioner.usage: seconds split at months and price changes, rounded half up per record, totals that
are the sum of the records."""

from __future__ import annotations

import datetime as dt

import pytest

from provisioner import usage

UTC = dt.UTC


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def interval(start: dt.datetime, end: dt.datetime, kind: str = usage.Kind.ON_DEMAND) -> usage.Interval:
    return usage.Interval(1, "node-1", "h100-8x", kind, start, end, gpus=8)


def test_amount_is_rounded_half_up_in_integers():
    assert usage.amount_cents(3600, 100) == 100
    assert usage.amount_cents(18, 100) == 1  # 0.5 cent rounds up
    assert usage.amount_cents(17, 100) == 0  # 0.472 cent rounds down
    assert usage.amount_cents(1, 7200) == 2
    assert usage.amount_cents(0, 999) == 0


def test_an_interval_across_two_month_boundaries_counts_each_second_once():
    start, end = at(2026, 10, 31, 23, 0, 0), at(2026, 12, 1, 0, 30, 0)
    prices = [usage.Price("h100-8x", at(2020, 1, 1), 1000, "USD")]
    records = usage.price_intervals([interval(start, end)], prices)
    assert [(r.start, r.end) for r in records] == [
        (start, at(2026, 11, 1)),
        (at(2026, 11, 1), at(2026, 12, 1)),
        (at(2026, 12, 1), end),
    ]
    assert sum(r.seconds for r in records) == int((end - start).total_seconds())
    november = usage.price_intervals([interval(start, end)], prices, period=usage.month_bounds(2026, 11))
    assert [r.seconds for r in november] == [30 * 86400]


def test_a_price_change_splits_the_record_and_is_not_retroactive():
    prices = [
        usage.Price("h100-8x", at(2026, 11, 1), 1000, "USD"),
        usage.Price("h100-8x", at(2026, 11, 10, 12), 2000, "USD"),
    ]
    records = usage.price_intervals([interval(at(2026, 11, 10, 10), at(2026, 11, 10, 14))], prices)
    assert [(r.seconds, r.cents_per_hour, r.amount_cents) for r in records] == [
        (7200, 1000, 2000),
        (7200, 2000, 4000),
    ]


def test_time_before_the_first_price_is_recorded_unpriced():
    prices = [usage.Price("h100-8x", at(2026, 11, 1, 1), 1000, "USD")]
    records = usage.price_intervals([interval(at(2026, 11, 1), at(2026, 11, 1, 2))], prices)
    assert [(r.priced, r.amount_cents) for r in records] == [(False, 0), (True, 1000)]


def test_microseconds_are_dropped_and_totals_are_the_sum_of_records():
    prices = [usage.Price("h100-8x", at(2020, 1, 1), 333, "USD")]
    intervals = [
        usage.Interval(i, f"node-{i}", "h100-8x", usage.Kind.ON_DEMAND,
                       at(2026, 11, 1) + dt.timedelta(seconds=i, microseconds=999_999),
                       at(2026, 11, 1) + dt.timedelta(seconds=7 + 3 * i))
        for i in range(1, 40)
    ]  # fmt: skip
    records = usage.price_intervals(intervals, prices)
    assert all(r.start.microsecond == 0 and r.end.microsecond == 0 for r in records)
    assert usage.total_cents(records) == sum(usage.amount_cents(r.seconds, 333) for r in records)


def test_gpu_hours_are_split_at_midnight():
    prices = [usage.Price("h100-8x", at(2020, 1, 1), 1000, "USD")]
    records = usage.price_intervals([interval(at(2026, 11, 1, 23), at(2026, 11, 2, 1))], prices)
    assert usage.gpu_seconds_per_day(records) == {
        dt.date(2026, 11, 1): {"h100-8x": 8 * 3600},
        dt.date(2026, 11, 2): {"h100-8x": 8 * 3600},
    }


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        usage.whole_second(dt.datetime(2026, 1, 1))
