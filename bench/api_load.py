"""Load the reservation API over HTTP and prove that concurrency never double-books a server.

    .venv/bin/python bench/api_load.py --seconds 30 --clients 50

Against PostgreSQL (``--database-url``, default a database of its own, ``neocloud_bench``, dropped and
re-created each run): migrates, seeds one server type with ``--nodes`` fake nodes, ``--orgs`` organizations
and one user with an API token per client. Serves the real WSGI application on 127.0.0.1 the way production
does: gunicorn with ``--server-procs`` sync worker processes, each keeping its database connection
(NEOCLOUD_DB_CONN_MAX_AGE). ``--server wsgiref`` serves it from wsgiref ThreadingWSGIServer processes
instead (a thread per connection, a new database connection per request), to compare with the old setup.
``--clients`` threads, each with its own requests session and token, reserve 1-2 servers for random windows
(a fifth of them starting now) and release their reservations for ``--seconds``: a closed loop, each sends
its next request when it has the answer, so the mean latency is about clients / throughput. No worker runs:
provisioning and release operations stay queued, as they would while workers are busy.

Then, unless ``--floor-seconds 0``, the same clients send the cheapest authenticated request of the API (GET
/api/v1/images: token lookup, one query, a short JSON page) in the same closed loop: the floor. No request on
this stack and machine is faster. The reservation mix is judged against it, measured in the same run: the
mix's throughput over the floor's, target at least 0.5. The two alternate in ``--slices`` slices each (the
closed loop's clients carry their reservations over), so that both meet the same load from the rest of a
shared machine. Its latency follows from its throughput (Little's law, below), so no absolute latency is judged.

Then, unless ``--open-rate 0``, the same mix arrives at ``--open-rate`` requests per second for
``--open-seconds`` whatever the answers' latency (an open loop, latency counted from when each request was
due): how long a request takes when the server is not saturated.

Where the CPU went during the closed loop, and during the floor: CPU seconds per request of the API server's
processes, of the PostgreSQL backends serving the bench's database and of this load generator, and the
throughput ceiling that follows on this machine's cores (with the mean latency Little's law then gives the
closed loop).

Then checks the database for double bookings: pairs of active allocations of one node whose windows overlap,
and nodes held now by two open reservations. Prints throughput and latency; the last two lines are exactly

    api load ratio: mix/floor R (target >= 0.5)
    api load: N req/s, p99 X ms, double bookings D

(the closed loop's throughput, its p99 latency, and the double bookings found, which must be 0).
"""

from __future__ import annotations

import argparse
import os
import queue
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench.procstat import TICK, cpu_split  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/neocloud_bench"


def _setup_django(database_url: str, var_dir: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    os.environ["NEOCLOUD_VAR_DIR"] = var_dir
    os.environ["NEOCLOUD_LOG_LEVEL"] = "ERROR"
    os.environ["NEOCLOUD_DEBUG"] = "false"
    import django

    django.setup()


# --- the server processes -------------------------------------------------------------------------


def serve(port: int) -> None:
    """Run in a child process: the WSGI app on 127.0.0.1:port, a thread per connection."""
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    from django.core.wsgi import get_wsgi_application

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        request_queue_size = 512

        def server_bind(self) -> None:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = make_server(
        "127.0.0.1", port, get_wsgi_application(), server_class=Server, handler_class=QuietHandler
    )
    httpd.serve_forever()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- database -------------------------------------------------------------------------------------


def recreate_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def seed(nodes: int, orgs: int, clients: int) -> list[str]:
    """One server type with ``nodes`` fake nodes; ``orgs`` organizations; one user+token per client."""
    from django.contrib.auth.models import User

    from lab.spec import H100_8X_TYPE
    from provisioner.lifecycle import Actor
    from provisioner.models import ApiToken, Membership, Organization, SSHKey
    from provisioner.services.inventory import enroll
    from provisioner.sshkeys import generate_keypair, parse_public_key

    enroll(
        {
            "sites": [{"slug": "bench", "name": "Bench", "racks": ["r1"]}],
            "server_types": [
                {"slug": "h100-8x", **H100_8X_TYPE},
            ],
            "images": [{"slug": "ubuntu-24.04", "name": "Ubuntu 24.04", "url": "http://127.0.0.1:9/u.raw",
                        "sha256": "0" * 64, "size_bytes": 1024, "format": "raw", "os_name": "Ubuntu"}],
            "nodes": [
                {"name": f"bench-{i:03d}", "server_type": "h100-8x", "site": "bench", "rack": "r1",
                 "boot_mac": f"52:54:00:10:{i // 256:02x}:{i % 256:02x}",
                 "bmc": {"protocol": "fake", "address": f"bench-{i}", "port": 623, "username": "admin",
                         "password": "bench-bmc-pw"}}
                for i in range(nodes)
            ],
        },
        actor=Actor.system("bench"),
    )  # fmt: skip
    organizations = []
    for i in range(orgs):
        org = Organization.objects.create(name=f"Bench Org {i}", slug=f"bench-{i}", server_quota=100_000)
        _, public = generate_keypair("ed25519", comment=f"bench-{i}")
        parsed = parse_public_key(public)
        SSHKey.objects.create(
            organization=org, name="key", public_key=parsed.line, fingerprint=parsed.fingerprint
        )
        organizations.append(org)
    tokens = []
    for c in range(clients):
        user = User.objects.create_user(f"bench{c}")
        Membership.objects.create(organization=organizations[c % orgs], user=user, role=Membership.Role.OWNER)
        tokens.append(ApiToken.issue(user, "bench")[1])
    return tokens


def double_bookings() -> tuple[int, int]:
    """(overlapping active allocation pairs of one node, nodes held now by two or more open reservations)."""
    from django.db import connection

    with connection.cursor() as cur:
        cur.execute(
            """
            SELECT count(*) FROM provisioner_allocation a JOIN provisioner_allocation b
              ON a.node_id = b.node_id AND a.id < b.id
            WHERE a.active AND b.active
              AND a.starts_at < coalesce(b.ends_at, 'infinity')
              AND b.starts_at < coalesce(a.ends_at, 'infinity')
            """
        )
        overlapping = cur.fetchone()[0]
        cur.execute(
            """
            SELECT count(*) FROM (
              SELECT a.node_id FROM provisioner_allocation a
                JOIN provisioner_reservation r ON r.id = a.reservation_id
              WHERE a.active AND r.state IN ('scheduled', 'provisioning', 'active', 'waiting')
                AND a.starts_at <= now() AND coalesce(a.ends_at, 'infinity') > now()
              GROUP BY a.node_id HAVING count(DISTINCT a.reservation_id) > 1
            ) held_twice
            """
        )
        held_twice = cur.fetchone()[0]
    return overlapping, held_twice


# --- the clients ----------------------------------------------------------------------------------


class Results:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.errors: Counter[str] = Counter()

    def add(self, kind: str, status: int, seconds: float) -> None:
        with self.lock:
            self.latencies.append(seconds)
            self.statuses[(kind, status)] += 1

    def post(self, session, kind: str, url: str, body: dict | None, started: float, token: str) -> int | None:
        """Send one request and record its outcome (latency from ``started``, a perf_counter time).
        Returns the new reservation's id when a reservation was created."""
        import requests

        try:
            response = session.post(url, json=body, timeout=30, headers={"Authorization": f"Bearer {token}"})
        except requests.RequestException as exc:
            with self.lock:
                self.errors[type(exc).__name__] += 1
            return None
        self.add(kind, response.status_code, time.perf_counter() - started)
        return response.json()["id"] if kind == "reserve" and response.status_code == 201 else None


def next_request(rng: random.Random, mine: list[int], base: str) -> tuple[str, str, dict | None]:
    """What a client does next: release one of its reservations (``mine``), or reserve 1-2 servers for a
    random window, a fifth of them starting now. Returns (kind, url, body)."""
    if mine and (len(mine) >= 3 or rng.random() < 0.4):
        rid = mine.pop(rng.randrange(len(mine)))
        return "release", f"{base}/api/v1/reservations/{rid}/release", None
    now = datetime.now(UTC)
    start = now if rng.random() < 0.2 else now + timedelta(minutes=rng.randrange(5, 48 * 60))
    end = start + timedelta(minutes=rng.randrange(30, 12 * 60))
    body = {
        "server_type": "h100-8x",
        "count": rng.randint(1, 2),
        "image": "ubuntu-24.04",
        "ssh_keys": ["key"],
        "starts_at": start.isoformat(),
        "ends_at": end.isoformat(),
    }
    return "reserve", f"{base}/api/v1/reservations", body


def client_loop(
    base: str, token: str, deadline: float, results: Results, rng: random.Random, mine: list[int]
) -> None:
    """A closed-loop client: sends its next request as soon as it has the answer to the last one. ``rng``
    and ``mine`` (its open reservations) carry over from one slice of the closed loop to the next."""
    import requests

    session = requests.Session()
    while time.monotonic() < deadline:
        kind, url, body = next_request(rng, mine, base)
        if (created := results.post(session, kind, url, body, time.perf_counter(), token)) is not None:
            mine.append(created)


def floor_loop(base: str, token: str, deadline: float, results: Results) -> None:
    """A closed-loop client of the cheapest authenticated request: GET /api/v1/images (token lookup, one
    query, a short JSON page). What any API request costs at least on this machine with this stack."""
    import requests

    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            response = session.get(f"{base}/api/v1/images", timeout=30, headers=headers)
        except requests.RequestException as exc:
            with results.lock:
                results.errors[type(exc).__name__] += 1
            continue
        results.add("floor", response.status_code, time.perf_counter() - started)


def open_loop(base: str, tokens: list[str], rate: float, seconds: float, results: Results) -> float:
    """Requests arriving at a fixed rate, whatever the latency of earlier ones (users who do not wait for
    each other), spread over the clients' tokens. Latency counts from when a request was due, so a server
    that falls behind shows it. Returns the seconds it took."""
    import requests

    due: queue.Queue[tuple[float, int] | None] = queue.Queue()
    clients: list[tuple[str, list[int], threading.Lock, random.Random]] = [
        (token, [], threading.Lock(), random.Random(1000 + i)) for i, token in enumerate(tokens)
    ]

    def sender() -> None:
        session = requests.Session()
        while (item := due.get()) is not None:
            at, c = item
            token, mine, lock, rng = clients[c]
            with lock:
                kind, url, body = next_request(rng, mine, base)
            if (created := results.post(session, kind, url, body, at, token)) is not None:
                with lock:
                    mine.append(created)

    total = int(rate * seconds)
    senders = [threading.Thread(target=sender, daemon=True) for _ in range(min(total, 200))]
    for t in senders:
        t.start()
    started = time.perf_counter()
    for k in range(total):
        at = started + k / rate
        time.sleep(max(0.0, at - time.perf_counter()))
        due.put((at, k % len(clients)))
    for _ in senders:
        due.put(None)
    for t in senders:
        t.join(timeout=seconds + 60)
    return time.perf_counter() - started


# --- where the CPU goes ---------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 if it is gone)."""
    try:
        return cpu_split(pid)[0]
    except OSError:
        return 0.0


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def cpu_snapshot(servers: list[subprocess.Popen], database_url: str) -> dict[str, dict[int, float]]:
    """CPU seconds so far of the API server's processes and of the PostgreSQL backends serving the
    bench's database (found in pg_stat_activity; they stay up, the workers keep their connections)."""
    import psycopg

    web = [pid for proc in servers for pid in (proc.pid, *_descendants(proc.pid))]
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        backends = [
            row[0] for row in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [name])
        ]
    return {
        "web": {pid: _cpu_seconds(pid) for pid in web},
        "postgres": {pid: _cpu_seconds(pid) for pid in backends},
    }


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / TICK  # less idle and iowait


def cpu_used(before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]) -> dict[str, float]:
    return {
        part: sum(seconds - before[part].get(pid, 0.0) for pid, seconds in after[part].items())
        for part in after
    }


def run_phase(
    servers: list[subprocess.Popen], database_url: str, seconds: float, loops: list[tuple[Any, tuple]]
) -> tuple[float, dict[str, float], float]:
    """Run each loop (function, arguments before its deadline) in a thread for ``seconds``. Returns the
    seconds it took, the CPU seconds each part used (cpu_used, and this load generator's) and the busy CPU
    seconds of the rest of the machine."""
    before, client_before = cpu_snapshot(servers, database_url), time.process_time()
    busy_before = machine_busy_seconds()
    started = time.monotonic()
    threads = []
    for fn, head in loops:
        base, token, *rest = head
        threads.append(threading.Thread(target=fn, args=(base, token, started + seconds, *rest), daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 60)
    elapsed = time.monotonic() - started
    cpu = cpu_used(before, cpu_snapshot(servers, database_url))
    cpu["load generator"] = time.process_time() - client_before
    return elapsed, cpu, machine_busy_seconds() - busy_before - sum(cpu.values())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=40)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument(
        "--open-rate",
        type=float,
        default=40,
        help="after the closed loop, requests per second arriving regardless of answers (0: skip)",
    )
    parser.add_argument("--open-seconds", type=float, default=15)
    parser.add_argument(
        "--floor-seconds",
        type=float,
        default=10,
        help="then the same clients send the cheapest authenticated request (GET /api/v1/images) for this "
        "long: the throughput the mix is judged against, and no API request beats here (0: skip)",
    )
    parser.add_argument(
        "--slices",
        type=int,
        default=4,
        help="the closed loop and the floor alternate in this many slices each (same background load)",
    )
    parser.add_argument("--server", choices=["gunicorn", "wsgiref"], default="gunicorn")
    parser.add_argument(
        "--server-procs",
        type=int,
        help="gunicorn workers (default 2 per core) or wsgiref processes (default 2)",
    )
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--var-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.database_url.startswith("postgres"):
        parser.error("the bench needs PostgreSQL (--database-url postgres://...)")
    if args.server_procs is None:
        args.server_procs = 2 * (os.cpu_count() or 1) if args.server == "gunicorn" else 2

    if args.serve:
        _setup_django(args.database_url, args.var_dir)
        serve(args.serve)
        return 0

    var_dir = tempfile.mkdtemp(prefix="neocloud-bench-")
    recreate_database(args.database_url)
    env = {**os.environ, "DATABASE_URL": args.database_url, "DJANGO_SETTINGS_MODULE": "webapp.settings",
           "NEOCLOUD_VAR_DIR": var_dir, "NEOCLOUD_LOG_LEVEL": "ERROR"}  # fmt: skip
    subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "manage.py"), "migrate", "-v", "0"], env=env, check=True
    )
    _setup_django(args.database_url, var_dir)
    tokens = seed(args.nodes, args.orgs, args.clients)

    port = free_port()
    if args.server == "gunicorn":
        # Sync workers: one request at a time per process, so a worker that holds a reservation lock never
        # waits for the GIL behind other requests. The work is CPU-bound Python: two workers per core keep
        # the cores busy while some wait on PostgreSQL (locks, commits); more only share the cores among
        # more requests in flight, which stretches every one of them. Each keeps its database connection
        # between requests.
        server_env = {**env, "NEOCLOUD_DEBUG": "false", "NEOCLOUD_DB_CONN_MAX_AGE": "600"}
        command = [
            sys.executable, "-m", "gunicorn", "webapp.wsgi:application", "--chdir", str(PROJECT_ROOT),
            "--bind", f"127.0.0.1:{port}", "--workers", str(args.server_procs), "--worker-class", "sync",
            "--backlog", "512", "--log-level", "warning", "--preload",
        ]  # fmt: skip
        servers = [subprocess.Popen(command, env=server_env, start_new_session=True)]
    else:
        servers = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--serve",
                    str(port),
                    "--var-dir",
                    var_dir,
                    "--database-url",
                    args.database_url,
                ],
                env=env,
                start_new_session=True,
            )
            for _ in range(args.server_procs)
        ]
    try:
        import requests

        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/api/schema/", timeout=30)  # the first one builds the schema: seconds
                break
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise SystemExit("the API server did not start") from None
                time.sleep(0.2)
        # The closed loop and the floor alternate in slices, so that both meet the same load from the rest of
        # a shared machine, which changes from one second to the next: their ratio is then the stack's own.
        results, floor_results = Results(), Results()
        clients = [(random.Random(i), []) for i in range(len(tokens))]
        cpu: dict[str, float] = {}
        floor_cpu: dict[str, float] = {}
        elapsed = floor_elapsed = others = 0.0
        slices = max(1, args.slices)
        for _ in range(slices):
            seconds, part, other = run_phase(
                servers,
                args.database_url,
                args.seconds / slices,
                [
                    (client_loop, (base, tok, results, rng, mine))
                    for tok, (rng, mine) in zip(tokens, clients, strict=True)
                ],
            )
            elapsed, others = elapsed + seconds, others + other
            cpu = {k: cpu.get(k, 0.0) + v for k, v in part.items()}
            if args.floor_seconds:
                seconds, part, _ = run_phase(
                    servers,
                    args.database_url,
                    args.floor_seconds / slices,
                    [(floor_loop, (base, tok, floor_results)) for tok in tokens],
                )
                floor_elapsed += seconds
                floor_cpu = {k: floor_cpu.get(k, 0.0) + v for k, v in part.items()}
        open_results = Results()
        open_elapsed = (
            open_loop(base, tokens, args.open_rate, args.open_seconds, open_results)
            if args.open_rate
            else 0.0
        )
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the server and any worker it left behind
                proc.wait()

    overlapping, held_twice = double_bookings()
    doubles = overlapping + held_twice
    total = sum(results.statuses.values())
    booked = results.statuses[("reserve", 201)]
    ms = [x * 1000 for x in results.latencies] or [0.0]
    server = (
        f"gunicorn, {args.server_procs} sync worker(s)"
        if args.server == "gunicorn"
        else f"{args.server_procs} wsgiref ThreadingWSGIServer process(es)"
    )
    print(f"server: {server} on {base}; {args.clients} clients, {args.nodes} nodes, {elapsed:.1f} s")
    for (kind, status), n in sorted(results.statuses.items()):
        print(f"  {kind:8s} {status}: {n}")
    if results.errors:
        print(f"  transport errors: {dict(results.errors)}")
    unexpected = {k: n for k, n in (results.statuses + open_results.statuses).items() if k[1] >= 500}
    if unexpected:
        print(f"  SERVER ERRORS: {unexpected}")
    print(f"reservations: {booked / elapsed:.1f}/s booked ({booked} in total)")
    p50, p99 = statistics.median(ms), percentile(ms, 0.99)
    print(f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(ms):.1f} ms")
    if open_results.latencies:
        open_ms = [x * 1000 for x in open_results.latencies]
        answered = sum(open_results.statuses.values())
        errors = sum(n for (_, code), n in open_results.statuses.items() if code >= 500)
        errors += sum(open_results.errors.values())
        print(
            f"open loop: {args.open_rate:g} req/s offered for {args.open_seconds:g} s, "
            f"{answered / open_elapsed:.0f} req/s answered ({errors} errors), "
            f"p50 {statistics.median(open_ms):.0f} ms, p99 {percentile(open_ms, 0.99):.0f} ms"
        )
    if floor_results.latencies:
        floor_ms = [x * 1000 for x in floor_results.latencies]
        floor_bad = sum(n for (_, code), n in floor_results.statuses.items() if code != 200)
        floor_bad += sum(floor_results.errors.values())
        floor_per_request = {part: seconds / len(floor_ms) for part, seconds in floor_cpu.items()}
        print(
            f"floor: the same {args.clients} clients on GET /api/v1/images (token, one query, JSON): "
            f"{len(floor_ms) / floor_elapsed:.0f} req/s, p50 {statistics.median(floor_ms):.0f} ms, "
            f"p99 {percentile(floor_ms, 0.99):.0f} ms ({floor_bad} not 200): no request of this API is "
            "cheaper on this stack and machine; CPU per request: "
            + ", ".join(f"{part} {1000 * seconds:.1f} ms" for part, seconds in floor_per_request.items())
        )
    # Little's law for a closed loop: mean latency = clients / throughput, and the throughput of a
    # saturated machine is its cores over the CPU one request costs, summed over every process involved.
    per_request = {part: seconds / max(total, 1) for part, seconds in cpu.items()}
    ceiling = (os.cpu_count() or 1) / sum(per_request.values())
    print(
        "CPU per request: "
        + ", ".join(f"{part} {1000 * seconds:.1f} ms" for part, seconds in per_request.items())
        + f"; {os.cpu_count()} cores serve at most {ceiling:.0f} req/s, at which {args.clients} closed-loop "
        f"clients wait {1000 * args.clients / ceiling:.0f} ms on average; "
        f"{100 * others / elapsed / (os.cpu_count() or 1):.0f}% of the machine went elsewhere "
        "(kernel work not charged to a process, other processes)"
    )
    print(f"double bookings: {overlapping} overlapping allocation pairs, {held_twice} node(s) held twice now")
    if floor_results.latencies:
        ratio = (total / elapsed) / (len(floor_results.latencies) / floor_elapsed)
        print(f"api load ratio: mix/floor {ratio:.2f} (target >= 0.5)")
    else:
        print("api load ratio: mix/floor n/a (target >= 0.5; --floor-seconds 0 measured no floor)")
    print(f"api load: {total / elapsed:.0f} req/s, p99 {p99:.0f} ms, double bookings {doubles}")
    return 0 if doubles == 0 and not unexpected else 1


if __name__ == "__main__":
    raise SystemExit(main())
