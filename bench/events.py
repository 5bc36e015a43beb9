"""Event stream benchmark: what writing events costs the reservation path, then webhook fan-out.

    .venv/bin/python bench/events.py [--nodes 20] [--trips 200] [--block 1] [--database-url URL]
                                     [--webhook-events 2000] [--webhook-endpoints 20]

Part 1, event write overhead. Reserve+release round trips through the reservation services
(``book_servers`` of one server starting now, then ``release_reservation``: the booking's audit record,
its ``reservation.created`` event, the server's ``available -> reserved`` transition and its event, the
release's transition, its ``reservation.released`` event, the provision cancelled, the release queued),
timed each, with events written as the product writes them, and with event writing turned off: in this
process only, ``provisioner.events.emit`` is replaced by a function that writes nothing (the product has
no switch for it). The two modes alternate every ``--block`` round trips (ABBA order, after ``--warmup``
untimed ones), ``--trips`` timed per mode, so that both meet the same load from the rest of a shared
machine. Between round trips, untimed, the release operation runs to its end (fake drivers) so that the
server is back in the pool and every round trip books from the same fleet. Printed: mean, median and p90
round trip per mode, and the overhead: the events mode's median over the no-events mode's (target <= 1.10x;
medians, since on a shared machine other processes' bursts land in either mode's mean).

Part 2, webhook fan-out: ``bench/webhooks.py --events N --endpoints M`` in a child process (its own
database, scheduler and workers; 10,000 events is the issue's figure, 2,000 by default here so that the
whole bench takes a few minutes); its deliveries per second and lag p99.

The last line is exactly ``events: overhead X.XXx, webhooks N deliveries/s, lag p99 Y s``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WEBHOOKS_LAST_LINE = re.compile(r"^webhooks (\d+) deliveries/s, lag p99 ([0-9.]+) s$")


@contextlib.contextmanager
def events_disabled() -> Iterator[None]:
    """Event writing off, in this process: ``provisioner.events.emit`` writes nothing while inside.
    Every event of the product goes through ``emit`` (module-level calls inside provisioner.events, read
    at call time), so replacing the module's attribute is enough."""
    from provisioner import events

    real = events.emit

    def emit_nothing(type: str, payload: dict[str, Any], *, organization_id: int | None = None) -> None:
        return None

    events.emit = emit_nothing  # type: ignore[assignment]
    try:
        yield
    finally:
        events.emit = real


def seed(nodes: int) -> dict[str, Any]:
    """A fleet of ``nodes`` fake servers of one type, an image, an organization with its owner and key."""
    from django.contrib.auth.models import User

    from lab.spec import H100_8X_TYPE
    from provisioner.lifecycle import Actor
    from provisioner.models import Image, Membership, Organization, ServerType, SSHKey
    from provisioner.services.inventory import enroll
    from provisioner.sshkeys import generate_keypair, parse_public_key

    enroll(
        {
            "sites": [{"slug": "bench", "name": "Bench", "racks": ["r1"]}],
            "server_types": [{"slug": "h100-8x", **H100_8X_TYPE}],
            "images": [
                {
                    "slug": "ubuntu-24.04",
                    "name": "Ubuntu 24.04",
                    "url": "http://127.0.0.1:9/ubuntu.raw",
                    "sha256": "0" * 64,
                    "size_bytes": 1024,
                    "format": "raw",
                    "os_name": "Ubuntu",
                }
            ],
            "nodes": [
                {
                    "name": f"bench-{i:04d}",
                    "server_type": "h100-8x",
                    "site": "bench",
                    "rack": "r1",
                    "boot_mac": f"52:54:00:ee:{i >> 8:02x}:{i & 255:02x}",
                    "bmc": {
                        "protocol": "fake",
                        "address": f"fake-bench-{i}",
                        "port": 623,
                        "username": "admin",
                        "password": "bench-bmc-pw",
                    },
                }
                for i in range(nodes)
            ],
        },
        actor=Actor.system("bench"),
    )
    user = User.objects.create_user("bench")
    org = Organization.objects.create(name="Bench", slug="bench", server_quota=10 * nodes)
    Membership.objects.create(organization=org, user=user, role=Membership.Role.OWNER)
    _, public = generate_keypair("ed25519")
    parsed = parse_public_key(public)
    key = SSHKey.objects.create(
        organization=org, name="k", public_key=parsed.line, fingerprint=parsed.fingerprint
    )
    return {
        "org": org,
        "server_type": ServerType.objects.get(slug="h100-8x"),
        "image": Image.objects.get(slug="ubuntu-24.04"),
        "key": key,
        "actor": Actor(user=user, label="bench"),
    }


def round_trips(fleet: dict[str, Any], trips: int) -> list[float]:
    """``trips`` reserve+release round trips, each timed; after each, untimed, its operations run to their
    end so that the server is back in the pool."""
    from provisioner.engine.runner import execute
    from provisioner.models import Node, Operation
    from provisioner.services.reservations import book_servers, release_reservation
    from provisioner.states import OPEN_OPERATION_STATES, NodeState

    times = []
    for _ in range(trips):
        t0 = time.perf_counter()
        reservation = book_servers(
            fleet["org"],
            fleet["server_type"],
            1,
            image=fleet["image"],
            ssh_keys=[fleet["key"]],
            actor=fleet["actor"],
        ).reservation
        release_reservation(reservation, actor=fleet["actor"], reason="bench round trip")
        times.append(time.perf_counter() - t0)
        for _attempt in range(20):
            ops = list(
                Operation.objects.filter(reservation=reservation, state__in=OPEN_OPERATION_STATES)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            if not ops:
                break
            for pk in ops:
                execute(pk, owner="bench")
        else:
            raise SystemExit(f"bench failed: operations of reservation {reservation.pk} did not finish")
        node = Node.objects.get(allocations__reservation=reservation)
        if node.state != NodeState.AVAILABLE:
            states = dict(Operation.objects.filter(reservation=reservation).values_list("kind", "state"))
            raise SystemExit(f"bench failed: {node.name} is {node.state} after the release ({states})")
    return times


def overhead(args: argparse.Namespace) -> float:
    """Part 1: the events mode's median round trip over the no-events mode's."""
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    fleet = seed(args.nodes)
    round_trips(fleet, args.warmup)  # warm-up: imports, caches, the database's pages
    timed: dict[str, list[float]] = {"events": [], "no events": []}
    order = ["events", "no events", "no events", "events"]  # ABBA: a drift in load favours neither
    for i in range(2 * args.trips // args.block):
        mode = order[i % len(order)]
        with events_disabled() if mode == "no events" else contextlib.nullcontext():
            timed[mode].extend(round_trips(fleet, args.block))
    from provisioner.models import Event

    for mode, times in timed.items():
        print(
            f"  {mode:>9}: {len(times)} round trips, mean {statistics.fmean(times) * 1000:.1f} ms, "
            f"median {statistics.median(times) * 1000:.1f} ms, p90 {_percentile(times, 0.9) * 1000:.1f} ms",
            flush=True,
        )
    print(f"  events written: {Event.objects.count()}; database {django.db.connection.vendor}", flush=True)
    means = statistics.fmean(timed["events"]) / statistics.fmean(timed["no events"])
    print(f"  ratio of the means {means:.2f}x (moved by other load on a shared machine)", flush=True)
    ratio = statistics.median(timed["events"]) / statistics.median(timed["no events"])
    print(
        f"event write overhead (ratio of the medians) on reserve+release: {ratio:.2f}x (target <= 1.10x)",
        flush=True,
    )
    return ratio


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def webhooks(args: argparse.Namespace) -> tuple[int, float]:
    """Part 2: bench/webhooks.py in a child process; its deliveries per second and lag p99."""
    command = [
        sys.executable,
        str(ROOT / "bench" / "webhooks.py"),
        "--events",
        str(args.webhook_events),
        "--endpoints",
        str(args.webhook_endpoints),
    ]
    if args.webhook_database_url:
        command += ["--database-url", args.webhook_database_url]
    print("$", " ".join(command[1:]), flush=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEOCLOUD_") and k != "DATABASE_URL"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    last = ""
    assert process.stdout is not None
    for line in process.stdout:
        print("  " + line.rstrip(), flush=True)
        last = line.strip() or last
    if process.wait() != 0:
        raise SystemExit(f"bench/webhooks.py failed (exit {process.returncode})")
    match = WEBHOOKS_LAST_LINE.match(last)
    if match is None:
        raise SystemExit(f"bench/webhooks.py's last line is not its figures: {last!r}")
    return int(match.group(1)), float(match.group(2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="fake servers in the fleet")
    parser.add_argument("--trips", type=int, default=200, help="timed round trips per mode")
    parser.add_argument("--block", type=int, default=1, help="round trips in a row before the mode changes")
    parser.add_argument("--warmup", type=int, default=20, help="untimed round trips first")
    parser.add_argument("--database-url", default="", help="part 1's database; default: a new SQLite file")
    parser.add_argument("--webhook-events", type=int, default=2000)
    parser.add_argument("--webhook-endpoints", type=int, default=20)
    parser.add_argument("--webhook-database-url", default="", help="part 2's; default: a new SQLite file")
    parser.add_argument(
        "--keep", action="store_true", help="keep part 1's directory (database, fake hardware)"
    )
    args = parser.parse_args()

    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-events-", dir=ROOT / "var"))
    env = {
        "NEOCLOUD_VAR_DIR": str(var),
        "NEOCLOUD_FAKE_HW_DIR": str(var / "fake-hw"),
        "NEOCLOUD_FAKE_AGENT_SECONDS": "0",
        "NEOCLOUD_RETRY_BACKOFF_SECONDS": "0",
        "NEOCLOUD_DEPLOY_DRIVER": "fake",
        "NEOCLOUD_BURNIN_DRIVER": "fake",
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "NEOCLOUD_LOG_LEVEL": "WARNING",
        "NEOCLOUD_DEBUG": "0",
    }
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    saved = dict(os.environ)
    os.environ.update(env)
    started = time.monotonic()
    try:
        print(
            f"part 1: reserve+release round trips, {args.nodes} fake servers, {args.trips} per mode, "
            f"events on and off alternating every {args.block}",
            flush=True,
        )
        ratio = overhead(args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if args.keep:
            print("kept", var)
        else:
            shutil.rmtree(var, ignore_errors=True)
    print(
        f"part 2: webhook fan-out, {args.webhook_events} events to {args.webhook_endpoints} endpoints",
        flush=True,
    )
    rate, lag_p99 = webhooks(args)
    print(f"bench took {time.monotonic() - started:.0f} s", flush=True)
    print(f"events: overhead {ratio:.2f}x, webhooks {rate} deliveries/s, lag p99 {lag_p99:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
