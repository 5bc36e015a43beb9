"""GET /metrics: parsed with prometheus-client's own exposition-format parser, and every figure checked
against the database; protected by a bearer token, or answering loopback clients only without one."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path

import pytest
from django.db.models import Count
from django.test import Client
from django.utils import timezone
from django_tasks_db.models import DBTaskResult
from prometheus_client.parser import text_string_to_metric_families

from provisioner import events, hardware
from provisioner.drivers.base import BootDevice, BootSetting
from provisioner.drivers.fake import write_fake_bmc
from provisioner.engine.runner import execute
from provisioner.errors import BmcAuthFailed, BmcTimeout
from provisioner.lifecycle import Actor
from provisioner.metrics import RESERVE_TO_ACTIVE_BUCKETS
from provisioner.models import BmcCallErrors, BurnInReport, Event, Node, Operation, Step
from provisioner.services import nodes as node_service
from provisioner.services.power import sync_power
from provisioner.states import NodeState, OperationKind, OperationState, StepState
from tests.conftest import ROOT, reserve

# Committed data: the histogram reads the event stream, numbered once its transactions have ended.
pytestmark = pytest.mark.usefixtures("transactional_db")


def stream_numbered(timeout: float = 30) -> None:
    """Wait until every committed event has its place in the stream. On PostgreSQL an event is numbered
    once every older transaction of the server has ended (provisioner.events): a transaction of another
    database on a shared server (other tests, a bench) delays it for a moment."""
    deadline = time.monotonic() + timeout
    while True:
        events.sequence_committed()
        if not Event.objects.filter(sequence__isnull=True).exists():
            return
        assert time.monotonic() < deadline, "events still unnumbered: a transaction stays open on the server"
        time.sleep(0.05)


def scrape(client: Client | None = None, **headers: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label items: value}} from one scrape, once the event stream is numbered (the
    histograms are folded from it)."""
    stream_numbered()
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def one(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return samples[name][tuple(sorted(labels.items()))]


def _provision(inventory) -> Node:
    r = reserve(inventory)
    op = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    state = execute(op.pk, owner="w1")
    while state == OperationState.WAITING:
        state = execute(op.pk, owner="w1")
    assert state == OperationState.SUCCEEDED
    return Node.objects.get(reservation=r)


def test_the_figures_match_the_database(inventory, fake_hw_dir):
    active = _provision(inventory)
    waiting = reserve(inventory, count=2)  # two provisions queued, not run
    node_service.quarantine(Node.objects.get(name="node-a100-8x-01"), actor=Actor.system("t"), reason="fan")
    for checks in ([("gpu_memory", 0), ("gpu_memory", 3), ("nvlink", 1)], [("gpu_memory", 5)]):
        BurnInReport.objects.create(
            node=active,
            passed=False,
            summary="failed",
            report={},
            failed_checks=[{"name": name, "gpu": gpu, "message": "bad"} for name, gpu in checks],
        )
    # one queued task has waited two minutes for a worker
    oldest = DBTaskResult.objects.filter(status="READY").order_by("enqueued_at").first()
    assert oldest is not None, "booking queues the provisioning tasks"
    DBTaskResult.objects.filter(pk=oldest.pk).update(enqueued_at=timezone.now() - dt.timedelta(seconds=120))

    samples = scrape()

    # servers by state, type and site: every row counted, each in its own series
    expected = {
        (row["state"], row["server_type__slug"], row["rack__site__slug"]): row["n"]
        for row in Node.objects.values("state", "server_type__slug", "rack__site__slug").annotate(
            n=Count("id")
        )
    }
    for (state, server_type, site), n in expected.items():
        assert one(samples, "neocloud_servers", state=state, server_type=server_type, site=site) == n
    assert sum(samples["neocloud_servers"].values()) == Node.objects.count() == 6
    assert one(samples, "neocloud_servers", state=NodeState.ACTIVE, server_type="h100-8x", site="lab") == 1
    assert (
        one(samples, "neocloud_servers", state=NodeState.QUARANTINED, server_type="a100-8x", site="lab") == 1
    )
    assert one(samples, "neocloud_servers", state=NodeState.DEPLOYING, server_type="a100-8x", site="lab") == 0

    # operations by kind and state
    for kind in OperationKind.values:
        assert (
            one(samples, "neocloud_operations_created_total", kind=kind)
            == Operation.objects.filter(kind=kind).count()
        )
    assert one(samples, "neocloud_operations_finished_total", kind="provision", state="succeeded") == 1
    pending = Operation.objects.filter(kind="provision", state=OperationState.PENDING).count()
    assert pending == waiting.count == 2
    assert one(samples, "neocloud_operations_open", kind="provision", state="pending") == pending

    # the queues: what is ready, and how long the oldest has waited
    for queue in set(DBTaskResult.objects.values_list("queue_name", flat=True)):
        ready = DBTaskResult.objects.filter(queue_name=queue).ready().count()
        assert one(samples, "neocloud_queue_ready_tasks", queue=queue) == ready
    assert 120 <= one(samples, "neocloud_queue_oldest_ready_age_seconds", queue=oldest.queue_name) < 180

    # burn-in failures by check: the passed report of the provisioning, the two failed ones written here
    assert one(samples, "neocloud_burnin_reports_total", result="passed") == 1
    assert one(samples, "neocloud_burnin_reports_total", result="failed") == 2
    assert one(samples, "neocloud_burnin_check_failures_total", check="gpu_memory") == 3
    assert one(samples, "neocloud_burnin_check_failures_total", check="nvlink") == 1

    # reserve to active: one server handed over, within the first bucket (a fake run takes seconds)
    assert one(samples, "neocloud_reserve_to_active_seconds_count") == 1
    assert one(samples, "neocloud_reserve_to_active_seconds_bucket", le="+Inf") == 1
    booked = max(active.reservation.created_at, active.reservation.starts_at)
    handed = active.audit_events.get(to_state=NodeState.ACTIVE).created_at - booked
    assert one(samples, "neocloud_reserve_to_active_seconds_sum") == pytest.approx(
        handed.total_seconds(), abs=0.01
    )
    first = str(RESERVE_TO_ACTIVE_BUCKETS[0])
    assert one(samples, "neocloud_reserve_to_active_seconds_bucket", le=first) == 1


def test_a_second_scrape_counts_each_handover_once_and_waits_are_shown(inventory, fake_hw_dir):
    _provision(inventory)
    assert one(scrape(), "neocloud_reserve_to_active_seconds_count") == 1
    op = Operation.objects.filter(kind="provision", state=OperationState.SUCCEEDED).first()
    Operation.objects.filter(pk=op.pk).update(
        state=OperationState.WAITING,
        wait_for="the deploy agent",
        waiting_since=timezone.now() - dt.timedelta(minutes=5),
    )
    samples = scrape()
    assert one(samples, "neocloud_reserve_to_active_seconds_count") == 1
    assert one(samples, "neocloud_operations_waiting", wait_for="the deploy agent") == 1
    assert (
        300 <= one(samples, "neocloud_operations_waiting_oldest_seconds", wait_for="the deploy agent") < 360
    )


def _finished_steps() -> dict[tuple[str, str], list[float]]:
    """{(operation kind, step name): [seconds of each finished step]} of the operations that ended."""
    out: dict[tuple[str, str], list[float]] = {}
    for kind, name, started, finished in Step.objects.filter(
        operation__state__in=[OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED],
        state__in=[StepState.SUCCEEDED, StepState.FAILED],
        started_at__isnull=False,
        finished_at__isnull=False,
    ).values_list("operation__kind", "name", "started_at", "finished_at"):
        out.setdefault((kind, name), []).append((finished - started).total_seconds())
    return out


def test_step_durations_are_counted_once_per_finished_step_by_kind_and_step(inventory, fake_hw_dir):
    _provision(inventory)
    reserve(inventory, count=1)  # a provision not run: its steps do not count until it ends
    expected = _finished_steps()
    assert ("provision", "deploy") in expected, expected.keys()
    for _ in range(2):  # the second scrape folds nothing new: each step still counted once
        samples = scrape()
        for (kind, step), seconds in expected.items():
            count = one(samples, "neocloud_step_duration_seconds_count", kind=kind, step=step)
            assert count == len(seconds), (kind, step)
            total = one(samples, "neocloud_step_duration_seconds_sum", kind=kind, step=step)
            assert total == pytest.approx(sum(seconds), abs=0.01)
            assert one(
                samples, "neocloud_step_duration_seconds_bucket", kind=kind, step=step, le="+Inf"
            ) == len(seconds)
        assert sum(samples["neocloud_step_duration_seconds_count"].values()) == sum(
            len(v) for v in expected.values()
        )


def test_failed_bmc_calls_are_counted_by_protocol_and_kind_from_the_engine_and_the_power_sync(
    inventory, fake_hw_dir, settings
):
    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.2
    nodes = {n.name: n for n in Node.objects.all()}
    assert one(scrape(), "neocloud_bmc_call_errors_total", protocol="fake", kind="auth") == 0
    silent, refusing = nodes["node-h100-8x-01"], nodes["node-h100-8x-02"]
    write_fake_bmc(silent.bmc_access(), fault="timeout")
    write_fake_bmc(refusing.bmc_access(), fault="auth")
    # the engine's driver: each failed call counted, its error passed on unchanged
    with pytest.raises(BmcTimeout):
        hardware.power_driver(silent).power_on()
    for _ in range(2):
        with pytest.raises(BmcAuthFailed):
            hardware.power_driver(refusing).set_boot_device(BootSetting(BootDevice.PXE))
    # the fleet power sync: one failed read per silent or refusing BMC
    assert sync_power()["unknown"] == 2
    samples = scrape()
    assert one(samples, "neocloud_bmc_call_errors_total", protocol="fake", kind="timeout") == 2
    assert one(samples, "neocloud_bmc_call_errors_total", protocol="fake", kind="auth") == 3
    assert one(samples, "neocloud_bmc_call_errors_total", protocol="redfish", kind="tls") == 0
    assert sum(samples["neocloud_bmc_call_errors_total"].values()) == 5
    assert dict(BmcCallErrors.objects.values_list("kind", "count")) == {"timeout": 2, "auth": 3}


def test_with_a_token_set_a_scrape_must_send_it(inventory, settings):
    settings.NEOCLOUD_METRICS_TOKEN = "scrape-secret"
    client = Client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Basic scrape-secret").status_code == 401
    samples = scrape(client, HTTP_AUTHORIZATION="Bearer scrape-secret", REMOTE_ADDR="192.0.2.7")
    assert sum(samples["neocloud_servers"].values()) == 6


def test_without_a_token_only_loopback_clients_are_answered(inventory, settings):
    settings.NEOCLOUD_METRICS_TOKEN = ""
    refused = Client().get("/metrics", REMOTE_ADDR="192.0.2.7")
    assert refused.status_code == 403
    assert b"NEOCLOUD_METRICS_TOKEN" in refused.content
    assert Client().get("/metrics", REMOTE_ADDR="::1").status_code == 200
    assert sum(scrape(Client(), REMOTE_ADDR="127.0.0.1")["neocloud_servers"].values()) == 6


def test_the_grafana_dashboard_charts_only_metrics_that_exist(inventory):
    dashboard = json.loads(Path(ROOT / "docs/grafana/neocloud.json").read_text())
    response = Client().get("/metrics")
    exposed = set()
    for family in text_string_to_metric_families(response.content.decode()):
        exposed.add(family.name)  # declared even with no series now (no operation waits, say)
        exposed |= {sample.name for sample in family.samples}
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [])
        exposed |= {family.name + suffix for suffix in suffixes}
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(queries) >= 6
    for expr in queries:
        names = set(re.findall(r"\bneocloud_[a-z_]+", expr))
        assert names, expr
        assert names <= exposed, f"{expr}: {names - exposed} not exposed"
