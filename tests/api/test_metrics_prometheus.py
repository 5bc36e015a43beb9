"""The real Prometheus server (Debian's ``prometheus`` package, installed by scripts/bootstrap.sh) scrapes the
live /metrics with the bearer token, and what its query API answers equals the database.

Prometheus is kept on this machine: it listens on 127.0.0.1 only, its one scrape target is the live server
on 127.0.0.1, it has no alerting, remote write or service discovery, and it runs without proxy variables.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Count

from provisioner.lifecycle import Actor
from provisioner.models import Node, Operation
from provisioner.services import nodes as node_service
from provisioner.states import OperationKind
from tests.api.test_metrics_scrape import _finished_steps, _provision, stream_numbered
from tests.conftest import reserve

# Committed data, read by the live server's thread.
pytestmark = pytest.mark.usefixtures("transactional_db")

PROMETHEUS = "/usr/bin/prometheus"
TOKEN = "prometheus-scrape-token"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# never through a proxy from the environment: everything here is on 127.0.0.1
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> Any:
    with _OPENER.open(url, timeout=5) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = _get(f"{self.base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def targets(self) -> list[dict[str, Any]]:
        return _get(f"{self.base}/api/v1/targets")["data"]["activeTargets"]


@pytest.fixture
def prometheus(live_server, settings, tmp_path: Path) -> Iterator[Prometheus]:
    """Prometheus scraping the live server's /metrics every second, with the token; stopped afterwards."""
    if not Path(PROMETHEUS).exists():
        pytest.fail(
            f"{PROMETHEUS} is missing: this test runs Debian's Prometheus server against /metrics. "
            "scripts/bootstrap.sh installs it (apt-get install prometheus)."
        )
    settings.NEOCLOUD_METRICS_TOKEN = TOKEN
    target_port = urllib.parse.urlsplit(live_server.url).port
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1m"},
                "scrape_configs": [
                    {
                        "job_name": "neocloud",
                        "metrics_path": "/metrics",
                        "authorization": {"credentials_file": str(token_file)},
                        "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                    }
                ],
            }
        )
    )
    port = _free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--web.console.templates={tmp_path}",
            f"--web.console.libraries={tmp_path}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)},  # no proxy variables
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            try:
                with _OPENER.open(f"{base}/-/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready in 30 s"
            time.sleep(0.2)
        yield Prometheus(base)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _scraped(prom: Prometheus) -> None:
    """Wait until Prometheus has scraped /metrics successfully at least once."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if prom.query('up{job="neocloud"} == 1') and prom.query("neocloud_servers"):
            return
        time.sleep(0.5)
    pytest.fail(f"prometheus scraped nothing in 30 s: {prom.targets()}")


@pytest.fixture
def fleet(inventory, fake_hw_dir) -> dict[tuple[str, str], list[float]]:
    """Committed figures for Prometheus to scrape, in place before its first scrape: one server handed over,
    two provisions queued, one server quarantined. Returns the finished steps' seconds by (kind, step)."""
    _provision(inventory)
    reserve(inventory, count=2)
    node_service.quarantine(Node.objects.get(name="node-a100-8x-01"), actor=Actor.system("t"), reason="fan")
    stream_numbered()  # the histograms are folded from the numbered stream
    return _finished_steps()


@pytest.mark.slow
def test_prometheus_scrapes_metrics_and_its_figures_equal_the_database(fleet, prometheus):
    _scraped(prometheus)

    # it scraped only the live server on loopback, with the token
    (target,) = prometheus.targets()
    assert target["health"] == "up", target
    assert urllib.parse.urlsplit(target["scrapeUrl"]).hostname == "127.0.0.1"

    # servers by state
    by_state = dict(Node.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    scraped = {s: n for s, n in prometheus.by("sum by (state) (neocloud_servers)", "state").items() if n}
    assert scraped == by_state
    assert prometheus.value("sum(neocloud_servers)") == Node.objects.count() == 6

    # operations by kind
    for kind in OperationKind.values:
        created = prometheus.value(f'neocloud_operations_created_total{{kind="{kind}"}}')
        assert created == Operation.objects.filter(kind=kind).count(), kind
    assert prometheus.value('neocloud_operations_open{kind="provision",state="pending"}') == 2

    # step durations: every finished step counted once
    assert prometheus.value("sum(neocloud_step_duration_seconds_count)") == sum(
        len(v) for v in fleet.values()
    )
    deploys = fleet[("provision", "deploy")]
    assert prometheus.value('neocloud_step_duration_seconds_count{kind="provision",step="deploy"}') == len(
        deploys
    )
    assert prometheus.value(
        'neocloud_step_duration_seconds_sum{kind="provision",step="deploy"}'
    ) == pytest.approx(sum(deploys), abs=0.01)

    # one server handed over
    assert prometheus.value("neocloud_reserve_to_active_seconds_count") == 1
