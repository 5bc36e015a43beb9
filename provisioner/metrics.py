"""Prometheus metrics read from the database when scraped (a custom collector).

Every figure comes from rows every process shares, not from counters kept in one process's memory, so
each web process answers the same and nothing needs prometheus-client's multiprocess mode. Counters
(``_total``) are counts of rows that only grow (finished operations, burn-in reports); gauges are counts
of rows in a state now; failed BMC calls are counted in rows by whichever process made them
(BmcCallErrors). The exceptions, the reserve-to-active and step duration histograms, are folded from the
event stream incrementally (each process remembers how far it read; the stream's numbering makes that
deterministic, so processes agree once each has read to the end).

The names are documented in docs/events-and-metrics.md; docs/grafana/neocloud.json charts them.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from django.db.models import Count, Min, Q, Sum
from django.utils import timezone
from django_tasks_db.models import DBTaskResult, get_date_max
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from provisioner import events
from provisioner.errors import BMC_ERROR_KIND_OTHER, BMC_ERROR_KINDS
from provisioner.models import (
    BmcCallErrors,
    BurnInReport,
    Event,
    Node,
    Operation,
    Reservation,
    Step,
    WebhookAttempt,
    WebhookDelivery,
)
from provisioner.states import (
    FINISHED_OPERATION_STATES,
    OPEN_OPERATION_STATES,
    NodeState,
    OperationKind,
    OperationState,
    StepState,
)

# Seconds from booking (or the window's start) to a server handed over: lab runs take seconds, real
# servers (netboot, image, burn-in) ten minutes to an hour.
RESERVE_TO_ACTIVE_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
# Seconds from an event to its webhook delivery being answered: under a second when all is well, minutes
# to hours while an endpoint is down (retries back off up to an hour).
WEBHOOK_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0)
# Seconds a step takes: bookkeeping steps milliseconds, power and boot seconds, an image write or burn-in
# minutes, a wipe of a large disk hours.
STEP_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 10800.0)
# The kind label of neocloud_bmc_call_errors_total: errors.bmc_error_kind's answers.
BMC_CALL_ERROR_KINDS = (*(kind for kind, _ in BMC_ERROR_KINDS), BMC_ERROR_KIND_OTHER)
# Events folded into the histograms per scrape at most; the rest on the next scrapes.
EVENTS_PER_SCRAPE = 50_000


def _bucket_index(bounds: tuple[float, ...], seconds: float) -> int:
    return next((i for i, bound in enumerate(bounds) if seconds <= bound), len(bounds))


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), running))
    return out


EventRow = tuple[int, int, str, dict[str, Any]]


class ReserveToActive:
    """The reserve-to-active histogram, folded from ``node.transition`` events to ``active`` made by a
    provisioning operation (a reimage's return to active is no handover): each server handed over counts
    once, with the seconds from when its reservation could start (booked, or its window's start if later)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sum = 0.0
        self._buckets = [0] * (len(RESERVE_TO_ACTIVE_BUCKETS) + 1)

    def fold(self, rows: list[EventRow]) -> None:
        handovers = [
            p
            for _, _, type, p in rows
            if type == Event.Type.NODE_TRANSITION
            and p.get("to_state") == NodeState.ACTIVE
            and p.get("operation")
            and p.get("reservation")
        ]
        if not handovers:
            return
        provisions = set(
            Operation.objects.filter(
                pk__in={p["operation"] for p in handovers}, kind=OperationKind.PROVISION
            ).values_list("pk", flat=True)
        )
        starts = {
            pk: max(created, starts_at)
            for pk, created, starts_at in Reservation.objects.filter(
                pk__in={p["reservation"] for p in handovers}
            ).values_list("pk", "created_at", "starts_at")
        }
        for payload in handovers:
            start = starts.get(payload["reservation"])
            if payload["operation"] not in provisions or start is None or not payload.get("at"):
                continue
            seconds = max(0.0, (dt.datetime.fromisoformat(payload["at"]) - start).total_seconds())
            self._buckets[_bucket_index(RESERVE_TO_ACTIVE_BUCKETS, seconds)] += 1
            self._sum += seconds

    def metric(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "neocloud_reserve_to_active_seconds",
            "Seconds from a reservation's start (booked, or its window's start) to each of its servers "
            "being handed over (provisioning's move to active)",
        )
        family.add_metric([], _cumulative(RESERVE_TO_ACTIVE_BUCKETS, self._buckets), sum_value=self._sum)
        return family


class StepDurations:
    """The step duration histograms, by operation kind and step name, folded from ``operation.finished``
    events: when an operation ends its steps are final, so each finished step (succeeded or failed, with
    both times) is counted once, with the seconds of its last attempt (from that attempt's start to its
    end, waits included). Steps of operations still running count when they end."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # (kind, step) -> ([bucket counts], sum)
        self._series: dict[tuple[str, str], tuple[list[int], float]] = {}

    def fold(self, rows: list[EventRow]) -> None:
        operations = {
            p["operation"]["id"]: p["operation"].get("kind", "")
            for _, _, type, p in rows
            if type == Event.Type.OPERATION_FINISHED and isinstance(p.get("operation"), dict)
        }
        if not operations:
            return
        steps = (
            Step.objects.filter(
                operation_id__in=operations,
                state__in=[StepState.SUCCEEDED, StepState.FAILED],
                started_at__isnull=False,
                finished_at__isnull=False,
            )
            .order_by()
            .values_list("operation_id", "name", "started_at", "finished_at")
        )
        for operation_id, name, started, finished in steps:
            if started is None or finished is None:  # filtered out above; for the type checker
                continue
            key = (operations[operation_id], name)
            buckets, total = self._series.get(key) or ([0] * (len(STEP_DURATION_BUCKETS) + 1), 0.0)
            seconds = max(0.0, (finished - started).total_seconds())
            buckets[_bucket_index(STEP_DURATION_BUCKETS, seconds)] += 1
            self._series[key] = (buckets, total + seconds)

    def metric(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "neocloud_step_duration_seconds",
            "Seconds a finished step's last attempt took (waits included), by operation kind and step",
            labels=["kind", "step"],
        )
        for (kind, step), (buckets, total) in sorted(self._series.items()):
            family.add_metric([kind, step], _cumulative(STEP_DURATION_BUCKETS, buckets), sum_value=total)
        return family


class EventFolds:
    """The figures folded from the event stream (reserve to active, step durations): each process reads
    the stream once, then at each scrape only what is new (at most EVENTS_PER_SCRAPE events; the rest on
    the next scrapes). The stream's numbering is deterministic, so processes agree once each has read to
    the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reserve_to_active = ReserveToActive()
        self.step_durations = StepDurations()
        self._after, self._last_pk = 0, 0

    def _fold(self) -> None:
        if self._after and not Event.objects.filter(sequence=self._after, pk=self._last_pk).exists():
            # not the stream it read (a new database): read it again from the start
            self._after, self._last_pk = 0, 0
            self.reserve_to_active.reset()
            self.step_durations.reset()
        # every type, so that the cursor moves on over stretches without a figure
        rows: list[EventRow] = list(
            Event.objects.filter(sequence__gt=self._after)
            .order_by("sequence")
            .values_list("sequence", "pk", "type", "payload")[:EVENTS_PER_SCRAPE]
        )
        if not rows:
            return
        self.reserve_to_active.fold(rows)
        self.step_durations.fold(rows)
        self._after, self._last_pk = rows[-1][0], rows[-1][1]

    def metrics(self) -> list[HistogramMetricFamily]:
        with self._lock:
            self._fold()
            return [self.reserve_to_active.metric(), self.step_durations.metric()]


class NeocloudCollector(Collector):
    """Reads the fleet, the operations, the task queues and burn-in verdicts at scrape time."""

    def __init__(self) -> None:
        self.folds = EventFolds()

    def collect(self) -> Iterator[Metric]:
        now = timezone.now()
        yield self._servers()
        yield from self._operations(now)
        yield from self._queues(now)
        yield from self._burnin()
        yield from self._webhooks(now)
        yield self._bmc_errors()
        events.sequence_committed()
        yield from self.folds.metrics()

    def _bmc_errors(self) -> CounterMetricFamily:
        family = CounterMetricFamily(
            "neocloud_bmc_call_errors",
            "Power and boot-device calls to BMCs that failed, by BMC protocol and kind (timeout, "
            "unreachable, tls, auth, command, unsupported, other), in every process",
            labels=["protocol", "kind"],
        )
        counts = {(p, k): n for p, k, n in BmcCallErrors.objects.values_list("protocol", "kind", "count")}
        # every protocol and kind, zeros included (a rate() needs the series before the first error)
        for protocol in Node.BmcProtocol.values:
            for kind in BMC_CALL_ERROR_KINDS:
                counts.setdefault((protocol, kind), 0)
        for (protocol, kind), n in sorted(counts.items()):
            family.add_metric([protocol, kind], n)
        return family

    def _servers(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            "neocloud_servers",
            "Servers by lifecycle state, server type and site",
            labels=["state", "server_type", "site"],
        )
        counts = Counter(
            {
                (row["state"], row["server_type__slug"], row["rack__site__slug"] or ""): row["n"]
                for row in Node.objects.values("state", "server_type__slug", "rack__site__slug").annotate(
                    n=Count("id")
                )
            }
        )
        # every state of each (type, site) the fleet has, zeros included: a chart's line drops to 0
        # instead of vanishing when the last server leaves a state
        places = {(server_type, site) for _, server_type, site in counts}
        for server_type, site in sorted(places):
            for state in NodeState.values:
                family.add_metric([state, server_type, site], counts[(state, server_type, site)])
        return family

    def _operations(self, now: dt.datetime) -> Iterator[Metric]:
        rows = Operation.objects.values("kind", "state").annotate(n=Count("id"))
        by_kind_state = {(r["kind"], r["state"]): r["n"] for r in rows}
        created = CounterMetricFamily(
            "neocloud_operations_created", "Operations created (started), by kind", labels=["kind"]
        )
        finished = CounterMetricFamily(
            "neocloud_operations_finished",
            "Operations that ended, by kind and final state (succeeded, failed, cancelled)",
            labels=["kind", "state"],
        )
        open_ = GaugeMetricFamily(
            "neocloud_operations_open",
            "Operations not finished, by kind and state (pending, running, waiting)",
            labels=["kind", "state"],
        )
        for kind in OperationKind.values:
            created.add_metric([kind], sum(n for (k, _), n in by_kind_state.items() if k == kind))
            for state in FINISHED_OPERATION_STATES:
                finished.add_metric([kind, state], by_kind_state.get((kind, state), 0))
            for state in OPEN_OPERATION_STATES:
                open_.add_metric([kind, state], by_kind_state.get((kind, state), 0))
        yield created
        yield finished
        yield open_

        waiting = GaugeMetricFamily(
            "neocloud_operations_waiting",
            "Operations parked on the outside world, by what they wait for",
            labels=["wait_for"],
        )
        oldest = GaugeMetricFamily(
            "neocloud_operations_waiting_oldest_seconds",
            "Seconds the longest-waiting operation has waited, by what it waits for",
            labels=["wait_for"],
        )
        for row in (
            Operation.objects.filter(state=OperationState.WAITING)
            .values("wait_for")
            .annotate(n=Count("id"), since=Min("waiting_since"))
            .order_by("wait_for")
        ):
            waiting.add_metric([row["wait_for"]], row["n"])
            since = row["since"]
            oldest.add_metric([row["wait_for"]], max(0.0, (now - since).total_seconds()) if since else 0.0)
        yield waiting
        yield oldest

    def _queues(self, now: dt.datetime) -> Iterator[Metric]:
        ready = GaugeMetricFamily(
            "neocloud_queue_ready_tasks",
            "Tasks ready to run now, waiting for a worker, by queue",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "neocloud_queue_oldest_ready_age_seconds",
            "Seconds the oldest ready task has been ready (since enqueued, or since its run_after), by queue",
            labels=["queue"],
        )
        running = GaugeMetricFamily(
            "neocloud_queue_running_tasks", "Tasks a worker runs now, by queue", labels=["queue"]
        )
        delayed = GaugeMetricFamily(
            "neocloud_queue_delayed_tasks",
            "Tasks queued to run later (a recheck, a backoff), by queue",
            labels=["queue"],
        )
        never = get_date_max()
        stats: dict[str, dict[str, Any]] = defaultdict(dict)
        for row in (
            DBTaskResult.objects.filter(status__in=["READY", "RUNNING"])
            .values("queue_name")
            .annotate(
                running=Count("id", filter=Q(status="RUNNING")),
                ready=Count("id", filter=Q(status="READY") & (Q(run_after=never) | Q(run_after__lte=now))),
                delayed=Count("id", filter=Q(status="READY", run_after__gt=now) & ~Q(run_after=never)),
                enqueued=Min("enqueued_at", filter=Q(status="READY", run_after=never)),
                due=Min("run_after", filter=Q(status="READY", run_after__lte=now)),
            )
        ):
            stats[row["queue_name"]] = row
        for queue in sorted(stats):
            row = stats[queue]
            ready.add_metric([queue], row["ready"])
            running.add_metric([queue], row["running"])
            delayed.add_metric([queue], row["delayed"])
            since = [t for t in (row["enqueued"], row["due"]) if t is not None]
            age.add_metric([queue], max(0.0, (now - min(since)).total_seconds()) if since else 0.0)
        yield ready
        yield age
        yield running
        yield delayed

    def _burnin(self) -> Iterator[Metric]:
        reports = CounterMetricFamily(
            "neocloud_burnin_reports", "Burn-in reports written, by result", labels=["result"]
        )
        verdicts = Counter(BurnInReport.objects.values_list("passed", flat=True))
        reports.add_metric(["passed"], verdicts[True])
        reports.add_metric(["failed"], verdicts[False])
        yield reports
        failures = CounterMetricFamily(
            "neocloud_burnin_check_failures",
            "Failed checks in burn-in reports, by check (a check that failed on two GPUs counts twice)",
            labels=["check"],
        )
        by_check: Counter[str] = Counter()
        for checks in (
            BurnInReport.objects.filter(passed=False).values_list("failed_checks", flat=True).iterator()
        ):
            for check in checks or []:
                by_check[str(check.get("name") or "unknown")] += 1
        for check in sorted(by_check):
            failures.add_metric([check], by_check[check])
        yield failures

    def _webhooks(self, now: dt.datetime) -> Iterator[Metric]:
        by_state = dict(
            WebhookDelivery.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n")
        )
        finished = CounterMetricFamily(
            "neocloud_webhook_deliveries",
            "Webhook deliveries that ended, by outcome: succeeded (answered 2xx) or failed (given up after "
            "retrying for the retry period)",
            labels=["state"],
        )
        for state in (WebhookDelivery.State.SUCCEEDED, WebhookDelivery.State.FAILED):
            finished.add_metric([state], by_state.get(state, 0))
        yield finished
        pending = GaugeMetricFamily(
            "neocloud_webhook_deliveries_pending", "Webhook deliveries not yet delivered nor given up"
        )
        pending.add_metric([], by_state.get(WebhookDelivery.State.PENDING, 0))
        yield pending
        oldest = WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING).aggregate(
            since=Min("event_at")
        )["since"]
        oldest_age = GaugeMetricFamily(
            "neocloud_webhook_oldest_pending_seconds",
            "Seconds since the event of the oldest pending webhook delivery happened (0: none pending)",
        )
        oldest_age.add_metric([], max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)
        yield oldest_age
        attempts = CounterMetricFamily(
            "neocloud_webhook_attempts",
            "Webhook delivery attempts (POSTs), by outcome: succeeded, http_error, timeout, unreachable",
            labels=["outcome"],
        )
        by_outcome = dict(
            WebhookAttempt.objects.values_list("outcome").annotate(n=Count("id")).values_list("outcome", "n")
        )
        for outcome in WebhookAttempt.Outcome.values:
            attempts.add_metric([outcome], by_outcome.get(outcome, 0))
        yield attempts
        delivered = WebhookDelivery.objects.filter(
            state=WebhookDelivery.State.SUCCEEDED, lag_seconds__isnull=False
        ).aggregate(
            total=Sum("lag_seconds"),
            inf=Count("id"),
            **{
                f"le{i}": Count("id", filter=Q(lag_seconds__lte=bound))
                for i, bound in enumerate(WEBHOOK_LAG_BUCKETS)
            },
        )
        lag = HistogramMetricFamily(
            "neocloud_webhook_delivery_lag_seconds",
            "Seconds from an event to the answer that delivered it to a webhook endpoint, retries included",
        )
        buckets = [(repr(bound), delivered[f"le{i}"]) for i, bound in enumerate(WEBHOOK_LAG_BUCKETS)]
        lag.add_metric([], [*buckets, ("+Inf", delivered["inf"])], sum_value=delivered["total"] or 0.0)
        yield lag
