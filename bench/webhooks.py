"""Webhook fan-out benchmark: ``--events`` events (10,000) of one organization to ``--endpoints`` (20) local
receivers, delivered by the real scheduler (the dispatcher) and ``--workers`` worker processes of
``--threads`` threads serving the ``webhooks`` queue.

    .venv/bin/python bench/webhooks.py [--events 10000] [--endpoints 20] [--workers 2 --threads 4]
                                       [--rate 0] [--database-url URL]

Events are written as the engine writes them (``provisioner.events.emit`` in transactions of
``--batch`` events; ``--rate`` events per second, 0: as fast as they can be written), ``node.transition``
events spread over 200 servers, so that per-server ordering is in play. Each receiver is a threading
http.server on 127.0.0.1 (HTTP/1.1 keep-alive) that checks every signature and records when each event
arrived. Printed: deliveries per second (all deliveries, from the first event written to the last
delivery received) and the lag percentiles (arrival at the receiver minus the event's ``created_at``).
Last line: ``webhooks N deliveries/s, lag p99 Y s``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.server
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import stop_all  # noqa: E402

SERVERS = 200


class Sink:
    """One endpoint's receiver: records (event id, lag seconds) of each delivery; counts bad signatures."""

    def __init__(self) -> None:
        self.secret = ""
        self.arrivals: list[tuple[int, float]] = []
        self.last_at = 0.0
        self.bad_signatures = 0
        self.out_of_order = 0
        self.last_per_server: dict[int, int] = {}
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                fields = dict(p.split("=", 1) for p in self.headers.get("Neocloud-Signature", "").split(","))
                expected = hmac.new(
                    sink.secret.encode(), fields.get("t", "").encode() + b"." + body, hashlib.sha256
                ).hexdigest()
                event = json.loads(body)
                created = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00")).timestamp()
                server = event["payload"]["node"]["id"]
                with sink.lock:
                    if not hmac.compare_digest(expected, fields.get("v1", "")):
                        sink.bad_signatures += 1
                    if sink.last_per_server.get(server, 0) > event["id"]:
                        sink.out_of_order += 1
                    sink.last_per_server[server] = event["id"]
                    sink.arrivals.append((event["id"], now - created))
                    sink.last_at = max(sink.last_at, now)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="worker processes on the webhooks queue")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--batch", type=int, default=50, help="events per writing transaction")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as written)")
    parser.add_argument("--database-url", default="", help="default: a new SQLite file")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (logs, database)")
    args = parser.parse_args()

    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-webhooks-", dir=ROOT / "var"))
    env = {
        "NEOCLOUD_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "NEOCLOUD_LOG_LEVEL": "WARNING",
        "NEOCLOUD_DEBUG": "0",
    }
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from provisioner import events
    from provisioner.lifecycle import Actor
    from provisioner.models import Event, Organization, WebhookDelivery
    from provisioner.services import webhooks

    call_command("migrate", verbosity=0)
    org = Organization.objects.create(name="Bench", slug="bench")
    sinks = [Sink() for _ in range(args.endpoints)]
    for sink in sinks:
        _, sink.secret = webhooks.create_endpoint(org, sink.url, actor=Actor.system("bench"))

    procs: list[subprocess.Popen] = []

    def spawn(name: str, *argv: str) -> None:
        log = open(var / f"{name}-{len(procs)}.log", "w")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), *argv],
                cwd=ROOT,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )

    spawn("scheduler", "scheduler", "--interval", "0.2", "--no-power-sync")
    for _ in range(args.workers):
        spawn(
            "worker",
            "worker",
            "--queue-name",
            "webhooks",
            "--threads",
            str(args.threads),
            "--interval",
            "0.1",
        )
    expected = args.events * args.endpoints
    try:
        time.sleep(2)  # the processes start
        started = time.time()
        written = 0
        while written < args.events:
            n = min(args.batch, args.events - written)
            with transaction.atomic():
                for i in range(written, written + n):
                    server = i % SERVERS
                    events.emit(
                        Event.Type.NODE_TRANSITION,
                        {
                            "node": {"id": server + 1, "name": f"bench-{server:03d}"},
                            "from_state": "deploying",
                            "to_state": "burning_in",
                            "event": "deployed",
                            "reason": f"bench event {i}",
                            "reservation": None,
                            "operation": None,
                            "actor": {"label": "bench", "request_id": ""},
                            "at": None,
                        },
                        organization_id=org.pk,
                    )
            written += n
            if args.rate:
                time.sleep(max(0.0, started + written / args.rate - time.time()))
        wrote = time.time() - started
        print(f"wrote {args.events} events in {wrote:.1f} s ({args.events / wrote:.0f}/s)", flush=True)
        deadline = time.monotonic() + args.timeout
        last_report = time.monotonic()
        while sum(len(s.arrivals) for s in sinks) < expected:
            if time.monotonic() > deadline:
                print(f"timed out: {sum(len(s.arrivals) for s in sinks)} of {expected} delivered")
                return 1
            if any(p.poll() is not None for p in procs):
                print("a scheduler or worker process exited; see", var)
                return 1
            if time.monotonic() - last_report > 10:
                done = sum(len(s.arrivals) for s in sinks)
                print(f"  {done} of {expected} delivered after {time.time() - started:.0f} s", flush=True)
                last_report = time.monotonic()
            time.sleep(0.2)
        elapsed = max(s.last_at for s in sinks) - started
    finally:
        stop_all(procs)
    lags = [lag for s in sinks for _, lag in s.arrivals]
    duplicates = sum(len(s.arrivals) - len({e for e, _ in s.arrivals}) for s in sinks)
    bad = sum(s.bad_signatures for s in sinks)
    disorder = sum(s.out_of_order for s in sinks)
    failed = WebhookDelivery.objects.exclude(state=WebhookDelivery.State.SUCCEEDED).count()
    rate = len(lags) / elapsed
    print(
        f"{len(lags)} deliveries ({args.events} events x {args.endpoints} endpoints) in {elapsed:.1f} s; "
        f"{args.workers} workers x {args.threads} threads; database {django.db.connection.vendor}"
    )
    print(
        f"lag p50 {percentile(lags, 0.5):.2f} s, p90 {percentile(lags, 0.9):.2f} s, "
        f"p99 {percentile(lags, 0.99):.2f} s, max {max(lags):.2f} s (mean {statistics.fmean(lags):.2f} s)"
    )
    print(
        f"bad signatures {bad}, repeats {duplicates}, out of order per server {disorder}, not delivered {failed}"
    )
    if not args.keep:
        import shutil

        shutil.rmtree(var, ignore_errors=True)
    else:
        print("kept", var)
    print(f"webhooks {rate:.0f} deliveries/s, lag p99 {percentile(lags, 0.99):.2f} s")
    return 0 if bad == 0 and disorder == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
