"""Fleet benchmark: many servers in flight on a fixed, small worker set.

    .venv/bin/python bench/fleet.py --nodes 100 [--engine-nodes 2000]      (root: the lab)
    .venv/bin/python bench/fleet.py --engine-only --nodes 2000 [--workers 4 --threads 8] [--database-url URL]

Without ``--engine-only``: ``--nodes`` lab servers (real BMC endpoints, the real deploy agent streaming the
64 MiB demo image, Ansible over real SSH for burn-in and handover) reserved at once with the demo's worker
set (``--workers`` processes of ``--threads`` threads, a gunicorn web/boot service, the scheduler): wall time
from reserve to all active, divided by the wall time of 1 server in the same run; then all released and
wiped, the same ratio. Peak resident memory of every control-plane process (web, workers with their
ansible-playbook children, scheduler), sampled; the lab's own memory per server; and the ceiling this
machine sets: the busy CPU time of the whole machine during the N-server run divided by its cores is the
least wall time any code could take for that work here, printed as the lowest reachable ratio. With
``--engine-nodes`` it then runs the engine-only mode below in a child process and the last line joins both:
``fleet: N nodes x{ratio} of one node, control plane {peak} MiB, engine {ops}/s at {M} in flight``.

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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lab servers boot without a power-on self-test here (lab.post), as in the figures of earlier sessions;
# a time-to-SSH benchmark is where POST time counts
os.environ.setdefault("NEOCLOUD_LAB_POST_SCALE", "0")
sys.path.insert(0, str(ROOT))

from bench.procstat import cpu_seconds, stop_all, tree_cpu_seconds  # noqa: E402

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


def spawner(procs: list[subprocess.Popen], var: Path):
    """``spawn(name, *argv)``: start a process in its own session, its output in ``var/<name>-<n>.log``."""

    def spawn(name: str, *argv: str) -> subprocess.Popen:
        log = open(var / f"{name}-{len(procs)}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
        procs.append(proc)
        return proc

    return spawn


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores; /proc/stat, idle and iowait excluded)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def lab_fleet(args: argparse.Namespace) -> int:
    """The lab run (module docstring)."""
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-fleet-lab-", dir=ROOT / "var"))
    boot_url = f"http://127.0.0.1:{args.port}"
    os.environ.update(
        NEOCLOUD_VAR_DIR=str(var),
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NEOCLOUD_DEPLOY_DRIVER="ansible",
        NEOCLOUD_BURNIN_DRIVER="ansible",
        NEOCLOUD_BOOT_URL=boot_url,
        NEOCLOUD_LOG_LEVEL="WARNING",
        NEOCLOUD_DB_CONN_MAX_AGE="300",
    )
    if args.database_url:
        os.environ["DATABASE_URL"] = args.database_url
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from lab.management.commands.lab import start_lab, stop_lab
    from lab.supervisor import lab_processes
    from provisioner.lifecycle import Actor
    from provisioner.models import Image, Membership, Node, Organization, Reservation, ServerType, SSHKey
    from provisioner.services.reservations import (
        MAX_SERVERS_PER_RESERVATION,
        book_servers,
        release_reservation,
    )
    from provisioner.sshkeys import generate_keypair, parse_public_key
    from provisioner.states import NodeState, ReservationState

    call_command("migrate", verbosity=0)
    procs: list[subprocess.Popen] = []

    spawn = spawner(procs, var)
    manage = (sys.executable, str(ROOT / "manage.py"))
    peak = [0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(0.5):
            peak[0] = max(peak[0], sum(rss_mib(p.pid) for p in procs if p.poll() is None))

    sampler = threading.Thread(target=sample, daemon=True)
    try:
        spawn(
            "web",
            sys.executable,
            "-m",
            "gunicorn",
            "webapp.wsgi",
            "--bind",
            f"127.0.0.1:{args.port}",
            "--workers",
            "2",
            "--threads",
            "16",
            "--backlog",
            "2048",
        )
        for i in range(args.workers):
            spawn(f"worker{i}", *manage, "worker", "--threads", str(args.threads))
        spawn("scheduler", *manage, "scheduler", "--interval", "0.5", "--no-power-sync")
        t0 = time.monotonic()
        specs = start_lab(args.nodes + 1, boot_url=boot_url)
        lab_pids = lab_processes(Path(settings.NEOCLOUD_LAB_DIR))
        print(f"lab of {len(specs)} servers up in {time.monotonic() - t0:.1f} s")
        image = Image.objects.get(slug="neocloud-demo-linux")
        user = User.objects.create_user("bench")
        org = Organization.objects.create(name="Bench", slug="bench", server_quota=args.nodes + 1)
        Membership.objects.create(organization=org, user=user, role="owner")
        _, public = generate_keypair("ed25519")
        parsed = parse_public_key(public)
        key = SSHKey.objects.create(
            organization=org, name="k", public_key=parsed.line, fingerprint=parsed.fingerprint
        )
        st = ServerType.objects.get(slug="h100-8x")
        actor = Actor(user=user, label="bench")
        sampler.start()

        def cycle(count: int) -> tuple[float, float, float]:
            """Reserve ``count`` servers, until all active; release them, until all wiped and available.
            Returns (seconds to active, seconds to wiped, CPU seconds of this bench's processes over both:
            control plane, lab, agents, SSH servers; other work on the machine not counted)."""
            busy0 = tree_cpu_seconds()
            start = time.monotonic()
            ids = []
            left = count
            while left:
                n = min(left, MAX_SERVERS_PER_RESERVATION)
                ids.append(book_servers(org, st, n, image=image, ssh_keys=[key], actor=actor).reservation.pk)
                left -= n
            deadline = start + args.timeout

            def until(done, what: str) -> None:
                while not done():
                    bad = Node.objects.filter(state__in=[NodeState.ERROR, NodeState.QUARANTINED]).first()
                    if bad or time.monotonic() > deadline:
                        raise SystemExit(
                            f"bench failed while {what}: {bad.name if bad else 'timeout'} {bad.state_reason if bad else ''} "
                            f"(logs in {var}; --keep keeps them)"
                        )
                    time.sleep(0.5)

            until(
                lambda: (
                    Reservation.objects.filter(pk__in=ids, state=ReservationState.ACTIVE).count() == len(ids)
                ),
                f"provisioning {count}",
            )
            active = time.monotonic() - start
            nodes = list(Node.objects.filter(reservation_id__in=ids).values_list("pk", flat=True))
            for r in Reservation.objects.filter(pk__in=ids):
                release_reservation(r, actor=actor)
            released = time.monotonic()
            until(
                lambda: Node.objects.filter(pk__in=nodes, state=NodeState.AVAILABLE).count() == len(nodes),
                f"wiping {count}",
            )
            return active, time.monotonic() - released, tree_cpu_seconds() - busy0

        machine0 = machine_busy_seconds()
        one_up, one_down, one_cpu = cycle(1)
        print(
            f"1 server: active in {one_up:.1f} s, released and wiped in {one_down:.1f} s, {one_cpu:.1f} CPU-s"
        )
        n_up, n_down, busy = cycle(args.nodes)
        machine = machine_busy_seconds() - machine0
        cores = os.cpu_count() or 1
        floor = busy / cores
        print(
            f"{args.nodes} servers: active in {n_up:.1f} s (x{n_up / one_up:.2f} of one; target <= 3), "
            f"released and wiped in {n_down:.1f} s (x{n_down / one_down:.2f} of one)"
        )
        print(
            f"the bench's processes used {busy:.0f} CPU-s over both ({busy / args.nodes:.1f} CPU-s per server: control "
            f"plane, agents, lab, SSH; the whole machine was busy {machine:.0f} CPU-s, other work included): on "
            f"{cores} cores no code does that in under {floor:.0f} s, so the "
            f"lowest reachable ratio here is x{floor / (one_up + one_down):.2f} of one server's "
            f"{one_up + one_down:.1f} s reserve-to-wiped (measured x{(n_up + n_down) / (one_up + one_down):.2f})"
        )
        lab_mib = sum(rss_mib(pid) for pid in lab_pids)
        print(
            f"control plane peak {peak[0]:.0f} MiB (web, {args.workers} workers x {args.threads} threads with their "
            f"Ansible runs, scheduler; target < 2048); the lab: {lab_mib / len(specs):.0f} MiB per server at rest"
        )
        engine = ""
        if args.engine_nodes:
            out = subprocess.run(
                [sys.executable, __file__, "--engine-only", "--nodes", str(args.engine_nodes)]
                + (["--database-url", args.database_url] if args.database_url else []),
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            print(out, end="")
            last = [line for line in out.splitlines() if line.startswith("fleet: engine ")]
            engine = (
                f", engine {last[-1].split()[2]} at {args.engine_nodes} in flight"
                if last
                else ", engine run failed"
            )
        print(
            f"fleet: {args.nodes} nodes x{n_up / one_up:.2f} of one node, control plane {peak[0]:.0f} MiB{engine}"
        )
        return 0
    finally:
        sampling.set()
        stop_lab()
        stop_all(procs, var, keep=args.keep)


def fake_engine_environment(prefix: str, agent_seconds: float, database_url: str = "", **extra: str) -> Path:
    """A fresh var directory under var/ and this process's environment for an engine bench on the fake
    deploy and burn-in drivers (``extra``: more settings); returns the directory."""
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix=prefix, dir=ROOT / "var"))
    env = {
        "NEOCLOUD_VAR_DIR": str(var),
        "DJANGO_SETTINGS_MODULE": "webapp.settings",
        "NEOCLOUD_DEPLOY_DRIVER": "fake",
        "NEOCLOUD_BURNIN_DRIVER": "fake",
        "NEOCLOUD_FAKE_HW_DIR": str(var / "fake-hw"),
        "NEOCLOUD_FAKE_AGENT_SECONDS": str(agent_seconds),
        "NEOCLOUD_LOG_LEVEL": "WARNING",
        "NEOCLOUD_DEBUG": "0",
        **extra,
    }
    if database_url:
        env["DATABASE_URL"] = database_url
    os.environ.update(env)
    return var


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engine-only", action="store_true", help="fake drivers, no lab")
    parser.add_argument("--engine-nodes", type=int, default=0, help="after the lab run, the engine-only run")
    parser.add_argument("--port", type=int, default=8110, help="lab mode: the web/boot service's port")
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--agent-seconds", type=float, default=20.0)
    parser.add_argument("--past", type=int, default=20000, help="released reservations in the database")
    parser.add_argument("--database-url", default="", help="default: a new SQLite file")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if not args.engine_only:
        return lab_fleet(args)
    var = fake_engine_environment("bench-fleet-", args.agent_seconds, args.database_url)
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.test import Client
    from django.utils import timezone

    from lab.spec import H100_8X_TYPE
    from provisioner.lifecycle import Actor
    from provisioner.models import ApiToken, Membership, Node, Operation, Organization, Reservation, SSHKey
    from provisioner.services.inventory import enroll
    from provisioner.services.periodics import housekeeping_pass
    from provisioner.services.reservations import (
        MAX_SERVERS_PER_RESERVATION,
        book_servers,
        release_reservation,
    )
    from provisioner.sshkeys import generate_keypair, parse_public_key
    from provisioner.states import FINISHED_OPERATION_STATES, NodeState, OperationKind, ReservationState

    call_command("migrate", verbosity=0)
    procs: list[subprocess.Popen] = []

    spawn_process = spawner(procs, var)

    def spawn(*cmd: str) -> subprocess.Popen:
        return spawn_process(cmd[0], sys.executable, str(ROOT / "manage.py"), *cmd)

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

    server_type = H100_8X_TYPE
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
        for i in range(samples + 3):  # the first 3 warm up (imports, caches, connections): not counted
            t0 = time.perf_counter()
            answer = client.post(
                "/api/v1/reservations",
                {"server_type": "small", "count": 1, "image": "ubuntu-24.04", "ssh_keys": [key.pk]},
                content_type="application/json",
            )
            if i >= 3:
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
            spawn("worker", "--threads", str(args.threads))
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
        stop_all(procs, var, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
