"""Fleet benchmark of the engine: many servers in flight on a fixed, small worker set.

    .venv/bin/python bench/fleet.py --engine-only --nodes 2000 [--workers 4 --threads 8] [--database-url URL]

``--engine-only``: fake drivers (the fake BMC's power and boot calls, the fake deploy agent taking
``--agent-seconds`` to stream, in-process simulated burn-in), so that what is measured is the engine: how many
operations it starts and finishes per second with ``--nodes`` servers in flight, against 20 in flight in the
same run; how long one pass of the scheduler takes at both sizes (the pass walks waits, leases, reservations);
and how long booking one server takes through the customer API (in-process test client, the whole DRF
stack, no network) at 20 nodes and at ``--nodes`` nodes with ``--past`` released reservations in the
database. Every deploy waits ``--agent-seconds`` for its agent as a real one does: parked, holding no worker.

Printed as ratios against the 20-node run measured in the same process, never as absolute targets; the last
line: ``fleet: engine {ops}/s at {N} in flight (x{r} of 20), scheduler pass x{p} for x{n} nodes, booking
latency x{b}``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds  # noqa: E402

SMALL = 20


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (ansible-playbook, ...), MiB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(
            ["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True, check=False
        ).stdout.split()
        pids = [int(p) for p in children] or [pid]
    except ProcessLookupError:
        return 0.0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine-only", action="store_true", required=True, help="fake drivers (required)")
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--agent-seconds", type=float, default=20.0)
    parser.add_argument("--past", type=int, default=20000, help="released reservations in the database")
    parser.add_argument("--database-url", default="", help="default: a new SQLite file")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-fleet-", dir=ROOT / "var"))
    env = {
        "NEOCLOUD_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "NEOCLOUD_DEPLOY_DRIVER": "fake",
        "NEOCLOUD_BURNIN_DRIVER": "fake",
        "NEOCLOUD_FAKE_HW_DIR": str(var / "fake-hw"),
        "NEOCLOUD_FAKE_AGENT_SECONDS": str(args.agent_seconds),
        "NEOCLOUD_LOG_LEVEL": "WARNING",
        "NEOCLOUD_DEBUG": "0",
    }
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    os.environ.update(env)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from provisioner.management.commands.scheduler import housekeeping_pass
    from provisioner.models import ApiToken, Membership, Node, Operation, Organization, Reservation, SSHKey
    from provisioner.services.audit import Actor
    from provisioner.services.inventory import enroll
    from provisioner.services.reservations import (
        MAX_SERVERS_PER_RESERVATION,
        book_servers,
        release_reservation,
    )
    from provisioner.sshkeys import generate_keypair, parse_public_key
    from provisioner.states import FINISHED_OPERATION_STATES, NodeState, OperationKind, ReservationState

    call_command("migrate", verbosity=0)
    procs: list[subprocess.Popen] = []

    def spawn(*cmd: str) -> subprocess.Popen:
        log = open(var / f"{cmd[0]}-{len(procs)}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *cmd],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    def node(i: int, server_type: str) -> dict:
        return {
            "name": f"{server_type}-{i:05d}",
            "server_type": server_type,
            "site": "fleet",
            "rack": f"r{i // 40:03d}",
            "boot_mac": f"52:54:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:{1 if server_type == 'big' else 0:02x}",
            "bmc": {
                "protocol": "fake",
                "address": f"fake-{server_type}-{i}",
                "port": 623,
                "username": "admin",
                "password": "bench-bmc-pw",
            },
        }

    server_type = {
        "name": "8x H100 SXM",
        "cpu_model": "Xeon 8480+",
        "cpu_cores": 112,
        "ram_gib": 2048,
        "gpu_model": "NVIDIA H100 80GB HBM3",
        "gpu_count": 8,
        "gpu_memory_gib": 80,
        "pcie_gen": 5,
        "pcie_width": 16,
        "nvlink_links": 18,
        "disk_gib": 7680,
    }
    started = time.monotonic()
    enroll(
        {
            "sites": [
                {
                    "slug": "fleet",
                    "name": "Fleet",
                    "racks": [f"r{i:03d}" for i in range(args.nodes // 40 + 1)],
                }
            ],
            "server_types": [{"slug": "small", **server_type}, {"slug": "big", **server_type}],
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
            "nodes": [node(i, "small") for i in range(SMALL)] + [node(i, "big") for i in range(args.nodes)],
        },
        actor=Actor.system("bench"),
    )
    print(f"enrolled {SMALL + args.nodes} fake servers in {time.monotonic() - started:.1f} s")
    user = User.objects.create_user("bench")
    org = Organization.objects.create(name="Bench", slug="bench", server_quota=10 * args.nodes)
    Membership.objects.create(organization=org, user=user, role="owner")
    _, public = generate_keypair("ed25519")
    parsed = parse_public_key(public)
    key = SSHKey.objects.create(
        organization=org, name="k", public_key=parsed.line, fingerprint=parsed.fingerprint
    )
    _, token = ApiToken.issue(user, "bench")
    from provisioner.models import Image, ServerType

    image = Image.objects.get(slug="ubuntu-24.04")
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")

    def booking_latency(samples: int = 15) -> float:
        """Median seconds of POST /api/v1/reservations for one server, each released again at once (its
        provision cancelled before a worker picks it up; the release is not timed)."""
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            answer = client.post(
                "/api/v1/reservations",
                {"server_type": "small", "count": 1, "image": "ubuntu-24.04", "ssh_keys": [key.pk]},
                content_type="application/json",
            )
            times.append(time.perf_counter() - t0)
            if answer.status_code != 201:
                raise SystemExit(
                    f"booking through the API failed: {answer.status_code} {answer.content[:300]!r}"
                )
            release_reservation(
                Reservation.objects.get(pk=answer.json()["id"]), actor=Actor(user=user, label="bench")
            )
        return statistics.median(times)

    def scheduler_pass_seconds(samples: int = 3) -> float:
        times = []
        for _ in range(samples):
            t0 = time.perf_counter()
            housekeeping_pass()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def wait_quiet(what: str) -> None:
        """Until no operation is open (the releases of the latency probes wiped their servers)."""
        deadline = time.monotonic() + args.timeout
        while Operation.objects.exclude(state__in=FINISHED_OPERATION_STATES).exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"bench failed: operations still open after {what}")
            time.sleep(0.5)

    def run(type_slug: str, count: int) -> tuple[float, float, int, float]:
        """Book ``count`` servers in reservations of at most 256, wait until all are active. Returns the wall
        time, the scheduler's pass time measured while they are in flight, the operations finished, and the
        peak resident memory of workers + scheduler (MiB)."""
        st = ServerType.objects.get(slug=type_slug)
        first_op = Operation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        t0 = time.monotonic()
        reservations = []
        left = count
        while left:
            n = min(left, MAX_SERVERS_PER_RESERVATION)
            reservations.append(
                book_servers(
                    org, st, n, image=image, ssh_keys=[key], actor=Actor(user=user, label="bench")
                ).reservation
            )
            left -= n
        ids = [r.pk for r in reservations]
        pass_time = None
        peak = 0.0
        deadline = time.monotonic() + args.timeout
        while Reservation.objects.filter(pk__in=ids, state=ReservationState.ACTIVE).count() < len(ids):
            if pass_time is None and time.monotonic() - t0 > args.agent_seconds / 2:
                waiting = Operation.objects.filter(pk__gt=first_op, state="waiting").count()
                pass_time = scheduler_pass_seconds()
                print(
                    f"  {type_slug}: scheduler pass {pass_time * 1000:.0f} ms with {waiting} operations waiting"
                )
            peak = max(peak, sum(rss_mib(p.pid) for p in procs))
            bad = Node.objects.filter(state__in=[NodeState.ERROR, NodeState.QUARANTINED]).first()
            if bad or time.monotonic() > deadline:
                raise SystemExit(
                    f"bench failed: {bad.name if bad else 'timeout'} {bad.state_reason if bad else ''}"
                )
            time.sleep(0.5)
        wall = time.monotonic() - t0
        finished = Operation.objects.filter(pk__gt=first_op, kind=OperationKind.PROVISION).count()
        pass_time = pass_time or scheduler_pass_seconds()
        for reservation in Reservation.objects.filter(pk__in=ids):
            release_reservation(reservation, actor=Actor(user=user, label="bench"))
        wait_quiet(f"releasing the {count} {type_slug} servers")
        return wall, pass_time, finished, peak

    try:
        for _ in range(args.workers):
            spawn("worker", "--threads", str(args.threads), "--interval", "0.2")
        spawn("scheduler", "--interval", "1", "--no-power-sync")
        time.sleep(3)
        latency_small = booking_latency()
        wait_quiet("the small latency probes")
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        wall_s, pass_s, ops_s, peak_s = run("small", SMALL)
        cpu_s = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        print(
            f"{SMALL} in flight: all active in {wall_s:.1f} s ({ops_s / wall_s:.1f} provisions/s), "
            f"workers+scheduler CPU {cpu_s:.1f} s, peak {peak_s:.0f} MiB"
        )
        # the past: released reservations, as a fleet that has run for a while has
        now = timezone.now()
        small = ServerType.objects.get(slug="small")
        Reservation.objects.bulk_create(
            [
                Reservation(
                    organization=org,
                    created_by=user,
                    server_type=small,
                    count=1,
                    image=image,
                    starts_at=now - timezone.timedelta(days=30, minutes=i),
                    ends_at=now - timezone.timedelta(days=29, minutes=i),
                    state=ReservationState.RELEASED,
                    released_at=now - timezone.timedelta(days=29, minutes=i),
                )
                for i in range(args.past)
            ],
            batch_size=1000,
        )
        cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        wall_b, pass_b, ops_b, peak_b = run("big", args.nodes)
        cpu_b = sum(cpu_seconds(p.pid) for p in procs) - cpu0
        print(
            f"{args.nodes} in flight: all active in {wall_b:.1f} s ({ops_b / wall_b:.1f} provisions/s), "
            f"workers+scheduler CPU {cpu_b:.1f} s ({1000 * cpu_b / args.nodes:.0f} ms per provision), "
            f"peak {peak_b:.0f} MiB"
        )
        latency_big = booking_latency()
        rate_small, rate_big = ops_s / wall_s, ops_b / wall_b
        print(
            f"booking through the API: {latency_small * 1000:.0f} ms at {SMALL} nodes, "
            f"{latency_big * 1000:.0f} ms at {SMALL + args.nodes} nodes and {args.past} past reservations "
            f"(x{latency_big / latency_small:.2f}; target <= 1.5)"
        )
        print(
            f"scheduler pass: {pass_s * 1000:.0f} ms at {SMALL} in flight, {pass_b * 1000:.0f} ms at {args.nodes} "
            f"(x{pass_b / pass_s:.1f} for x{args.nodes / SMALL:.0f} the nodes; linear or better: "
            f"{'yes' if pass_b / pass_s <= args.nodes / SMALL else 'NO'})"
        )
        print(
            f"fleet: engine {rate_big:.1f}/s at {args.nodes} in flight (x{rate_big / rate_small:.1f} of {SMALL}), "
            f"scheduler pass x{pass_b / pass_s:.1f} for x{args.nodes / SMALL:.0f} nodes, "
            f"booking latency x{latency_big / latency_small:.2f}, {args.workers} workers x {args.threads} threads "
            f"peak {peak_b:.0f} MiB"
        )
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if args.keep:
            print(f"kept {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
