"""Soak with chaos: random customer and operator work on a lab fleet while its parts fail, invariants checked.

    .venv/bin/python bench/soak.py [--nodes 30] [--minutes 10] [--seed S] [--keep]      (root: the lab)

The stack is real and the bench's own: a private PostgreSQL cluster (Debian's binaries, a data directory
under the bench's var dir, its own port; never the machine's shared server), gunicorn serving the API and the
boot service, the scheduler and ``--workers`` worker processes, and a lab of ``--nodes`` servers (real IPMI
and Redfish BMC endpoints, the real deploy agent, sshd in network namespaces, Ansible over SSH).

For ``--minutes``, every ``--action-every`` seconds (on average) a random action: reserve (through the API
or the services), extend, release (API or services), a single reimage and a rolling reimage (operator), an
operator retrying a server in error or quarantine, a customer reading its reservations, servers and
operation logs through the API. Every ``--fault-every`` seconds a random fault: a BMC that times out (drops
or answers too late), a BMC that answers wrong (the opposite power state), a deploy agent that dies
mid-stream, an SSH server killed (the node's OS never answers again), a worker or the scheduler killed with
SIGKILL (restarted), the web server restarted, PostgreSQL restarted (``pg_ctl restart -m fast``).

Every ``--check-every`` seconds, and after the faults stop and the fleet has settled (at most ``--settle``
seconds), the invariants (``INVARIANTS``) are checked; each violation is printed with its details, once.
Last line: ``soak: N operations, F faults injected, V invariant violations``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Not scanned for secrets: the lab's own configuration (it must hold the BMC passwords it serves with) and
# the database's files (secrets are stored there encrypted or hashed, by design).
SECRET_SCAN_SKIP_NAMES = {"lab.json", "inventory.yaml", "soak-secrets.json"}
SECRET_SCAN_SKIP_DIRS = {"postgres-data", "images", "boot"}
SECRET_SCAN_MAX_BYTES = 32 * 2**20
# Not logs but the way a secret reaches Ansible without a command line: the runner's per-host BMC credentials and
# provisioning key (ssh -i) in its spool (mode 0600, in a 0700 directory). Checked for their mode instead.
CREDENTIAL_FILES = {"bmc", "provisioning_key"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- the private PostgreSQL cluster --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL cluster of the bench's own (the approach of scripts/private_postgres.sh): Debian's server
    binaries, owned by the postgres user, trust auth, listening on 127.0.0.1:port only."""

    def __init__(self, var: Path, port: int) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
        if not found:
            raise SystemExit(
                "soak: Debian's postgresql package is not installed (apt-get install postgresql)"
            )
        self.bin = found[-1]
        self.data = var / "postgres-data"
        self.run = var / "postgres-run"
        self.log = var / "postgres.log"
        self.port = port
        self.url = f"postgres://postgres@127.0.0.1:{port}/soak"

    def _as_postgres(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
        )

    def start(self) -> None:
        for directory in (self.run, self.data):
            directory.mkdir(parents=True, exist_ok=True)
            shutil.chown(directory, "postgres")
        self.data.chmod(0o700)
        self.log.touch()
        shutil.chown(self.log, "postgres")
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
        )
        self._pg_ctl("start")
        self._as_postgres(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "soak"
        )

    def _pg_ctl(self, action: str, *extra: str) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.run} -c max_connections=300"
        self._as_postgres(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            action,
            *extra,
        )

    def restart(self) -> None:
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres(
                str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", check=False
            )

    def pids(self) -> list[int]:
        try:
            return [int(Path(self.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []


# --- the control plane's processes -------------------------------------------------------------------------


class Stack:
    """gunicorn, the scheduler and the workers, each in its own session, output in ``var/<name>-<n>.log``."""

    def __init__(self, var: Path, port: int, workers: int, threads: int) -> None:
        self.var = var
        self.port = port
        self.threads = threads
        self.names = ["web", "scheduler", *(f"worker{i}" for i in range(workers))]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0

    def argv(self, name: str) -> list[str]:
        manage = [sys.executable, str(ROOT / "manage.py")]
        if name == "web":
            return [
                sys.executable,
                "-m",
                "gunicorn",
                "webapp.wsgi",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "2",
                "--threads",
                "8",
                "--backlog",
                "2048",
                "--graceful-timeout",
                "5",
            ]
        if name == "scheduler":
            return [*manage, "scheduler", "--interval", "1", "--no-power-sync"]
        return [*manage, "worker", "--threads", str(self.threads)]

    def start(self, name: str) -> None:
        self.starts += 1
        log_file = open(self.var / f"{name}-{self.starts}.log", "w")  # noqa: SIM115 - the child holds it
        self.procs[name] = subprocess.Popen(
            self.argv(name), cwd=ROOT, stdout=log_file, stderr=log_file, start_new_session=True
        )
        log_file.close()

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def kill(self, name: str, sig: signal.Signals) -> None:
        """Signal the process and everything it started (its session), then wait for it."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def revive_dead(self) -> list[str]:
        """Restart any process that ended by itself (a crash is a finding, printed by the caller)."""
        dead = [name for name, proc in self.procs.items() if proc.poll() is not None]
        for name in dead:
            self.start(name)
        return dead

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values() if proc.poll() is None]

    def stop(self) -> None:
        for name in list(self.procs):
            if self.procs[name].poll() is None:
                self.kill(name, signal.SIGTERM)


# --- secrets ----------------------------------------------------------------------------------------------


class Secrets:
    """What must never appear anywhere readable: BMC passwords, the provisioning private keys (their key
    lines), API tokens. Scans text and files incrementally."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}  # secret -> what it is
        self._pattern: re.Pattern[bytes] | None = None
        self._offsets: dict[Path, int] = {}
        self.seen_keys: set[int] = set()  # operations whose provisioning key was added

    def add(self, value: str, what: str) -> None:
        if len(value) >= 12 and value not in self.values:
            self.values[value] = what
            self._pattern = None

    def add_private_key(self, private_key: str, what: str) -> None:
        """Watch the key's own lines: not the armour, nor the lines every OpenSSH key of its kind shares (its
        header: the format name, cipher "none", the key type), which a host key holds as well."""
        if "shared" not in self.__dict__:
            from provisioner.sshkeys import generate_keypair

            a, b = (generate_keypair("ed25519")[0].splitlines() for _ in range(2))
            self.__dict__["shared"] = set(a) & set(b)
        for line in private_key.splitlines():
            if len(line) >= 40 and not line.startswith("-----") and line not in self.__dict__["shared"]:
                self.add(line, what)

    def pattern(self) -> re.Pattern[bytes]:
        if self._pattern is None:
            words = sorted(self.values, key=len, reverse=True)
            self._pattern = re.compile(b"|".join(re.escape(w.encode()) for w in words) or b"(?!)")
        return self._pattern

    def find(self, data: bytes | str) -> list[str]:
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        return sorted({self.values[m.group().decode()] for m in self.pattern().finditer(data)})

    def scan_files(self, var: Path) -> list[str]:
        """Files under ``var`` that hold a secret (new bytes since the last scan, with an overlap)."""
        found = []
        for path in sorted(var.rglob("*")):
            if (
                not path.is_file()
                or path.is_symlink()
                or path.name in SECRET_SCAN_SKIP_NAMES
                or SECRET_SCAN_SKIP_DIRS & set(path.relative_to(var).parts)
                or path.suffix in {".img", ".raw", ".disk", ".sqlite3"}
            ):
                continue
            try:
                size = path.stat().st_size
                if size > SECRET_SCAN_MAX_BYTES or size == self._offsets.get(path, -1):
                    continue
                start = max(0, self._offsets.get(path, 0) - 4096)
                with open(path, "rb") as f:
                    f.seek(start)
                    data = f.read()
            except OSError:
                continue
            self._offsets[path] = size
            name = path.relative_to(var)
            if path.name in CREDENTIAL_FILES and path.parts[len(var.parts)] == "ansible":
                if path.stat().st_mode & 0o077:
                    found.append(f"{name}: a credential file others can read ({oct(path.stat().st_mode)})")
                continue
            for what in self.find(data):
                found.append(f"{name} holds {what}")
        return found


def scan_command_lines(secrets: Secrets) -> list[str]:
    """Every process's command line on the machine (the stack's, the lab's, agents, ansible, ssh)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        for what in secrets.find(cmdline.replace(b"\0", b" ")):
            found.append(f"pid {entry.name} command line holds {what}: {cmdline[:120]!r}")
    return found


# --- the customer's side: the API ----------------------------------------------------------------------------


class Api:
    """A tiny HTTP client for the customer API; every answer's body is scanned for secrets."""

    def __init__(self, base: str, token: str, secrets: Secrets) -> None:
        self.base = base
        self.token = token
        self.secrets = secrets
        self.leaks: list[str] = []
        self.calls = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """(status, parsed JSON or None); status 0 when the server could not be reached."""
        self.calls += 1
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the bench's own http:// base
            self.base + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        except (OSError, urllib.error.URLError):
            return 0, None
        for what in self.secrets.find(raw):
            self.leaks.append(f"{method} {path} answered {status} with {what}")
        try:
            return status, json.loads(raw or b"null")
        except ValueError:
            return status, None


# --- faults -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Soak:
    args: argparse.Namespace
    var: Path
    rng: random.Random
    stack: Stack
    postgres: PrivatePostgres
    api: Api
    secrets: Secrets
    lab_dir: Path
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    actions: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    node_faults: dict[str, dict[str, tuple[Any, float]]] = dataclasses.field(default_factory=dict)
    violations: dict[str, str] = dataclasses.field(default_factory=dict)
    first_operation: int = 0
    ctx: dict[str, Any] = dataclasses.field(default_factory=dict)

    def violation(self, check: str, key: str, detail: str) -> int:
        """Record and print a violation the first time it is seen; returns 1 if it is new."""
        if key in self.violations:
            return 0
        self.violations[key] = f"{check}: {detail}"
        log(f"VIOLATION {check}: {detail}")
        return 1

    # lab node faults: <lab>/nodes/<name>/faults.json, read by the BMC on each request and by the firmware

    def set_node_fault(self, node: str, key: str, value: Any, seconds: float) -> None:
        self.node_faults.setdefault(node, {})[key] = (value, time.monotonic() + seconds)
        self.write_node_faults(node)

    def write_node_faults(self, node: str) -> None:
        from lab.machine import write_faults

        now = time.monotonic()
        active = {k: v for k, (v, until) in self.node_faults.get(node, {}).items() if until > now}
        self.node_faults[node] = {k: self.node_faults[node][k] for k in active}
        write_faults(self.lab_dir / "nodes" / node, **active)

    def expire_node_faults(self, *, all_now: bool = False) -> None:
        for node, faults in list(self.node_faults.items()):
            if all_now:
                faults.clear()
            if any(until <= time.monotonic() for _, until in faults.values()) or all_now:
                self.write_node_faults(node)


def nodes_in(states: list[str]) -> list[str]:
    from provisioner.models import Node

    return list(Node.objects.filter(state__in=states).values_list("name", flat=True))


def fault_bmc_timeout(soak: Soak) -> str | None:
    node = soak.rng.choice(
        nodes_in(["reserved", "deploying", "burning_in", "releasing", "cleaning", "active", "available"])
        or [None]
    )
    if node is None:
        return None
    if soak.rng.random() < 0.5:
        soak.set_node_fault(node, "drop", True, soak.rng.uniform(10, 40))
        return f"BMC of {node} stops answering"
    soak.set_node_fault(node, "delay", soak.args.bmc_timeout + 1, soak.rng.uniform(10, 40))
    return f"BMC of {node} answers after the client's timeout"


def fault_bmc_wrong_answer(soak: Soak) -> str | None:
    node = soak.rng.choice(
        nodes_in(["reserved", "deploying", "releasing", "cleaning", "active", "available"]) or [None]
    )
    if node is None:
        return None
    soak.set_node_fault(node, "wrong_power", True, soak.rng.uniform(10, 30))
    return f"BMC of {node} reports the opposite power state"


def fault_agent_crash(soak: Soak) -> str | None:
    node = soak.rng.choice(nodes_in(["reserved", "deploying"]) or [None])
    if node is None:
        return None
    soak.set_node_fault(node, "agent_crash", True, 90)
    return f"deploy agent of {node} dies mid-stream"


def fault_ssh_down(soak: Soak) -> str | None:
    from lab.spec import load_specs
    from lab.sshd import node_sshd_pid

    candidates = set(nodes_in(["deploying", "burning_in", "active"]))
    running = [
        (spec, pid)
        for spec in load_specs(soak.lab_dir)
        if spec.name in candidates and (pid := node_sshd_pid(spec, soak.lab_dir)) is not None
    ]
    if not running:
        return None
    spec, pid = soak.rng.choice(running)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return f"sshd of {spec.name} killed (its OS no longer answers SSH)"


def fault_worker_killed(soak: Soak) -> str | None:
    name = soak.rng.choice([n for n in soak.stack.names if n.startswith("worker")])
    soak.stack.kill(name, signal.SIGKILL)
    time.sleep(soak.rng.uniform(0, 3))
    soak.stack.start(name)
    return f"{name} killed with SIGKILL, restarted"


def fault_scheduler_killed(soak: Soak) -> str | None:
    soak.stack.kill("scheduler", signal.SIGKILL)
    time.sleep(soak.rng.uniform(0, 3))
    soak.stack.start("scheduler")
    return "scheduler killed with SIGKILL, restarted"


def fault_web_restarted(soak: Soak) -> str | None:
    soak.stack.kill("web", signal.SIGTERM)
    soak.stack.start("web")
    return "web server (gunicorn) restarted"


def fault_postgres_restarted(soak: Soak) -> str | None:
    from django.db import connection

    connection.close()
    soak.postgres.restart()
    return "PostgreSQL restarted (pg_ctl restart -m fast)"


FAULTS: list[tuple[Callable[[Soak], str | None], int]] = [
    (fault_bmc_timeout, 4),
    (fault_bmc_wrong_answer, 3),
    (fault_agent_crash, 3),
    (fault_ssh_down, 2),
    (fault_worker_killed, 2),
    (fault_scheduler_killed, 1),
    (fault_web_restarted, 1),
    (fault_postgres_restarted, 1),
]


# --- actions ------------------------------------------------------------------------------------------------


def open_reservations(soak: Soak) -> list[Any]:
    from provisioner.models import Reservation
    from provisioner.states import OPEN_RESERVATION_STATES

    return list(Reservation.objects.filter(organization=soak.ctx["org"], state__in=OPEN_RESERVATION_STATES))


def _window_end(soak: Soak) -> str | None:
    roll = soak.rng.random()
    now = dt.datetime.now(dt.UTC)
    if roll < 0.4:
        return None  # until released
    if roll < 0.7:
        return (now + dt.timedelta(seconds=soak.rng.uniform(150, 400))).isoformat()  # the scheduler ends it
    return (now + dt.timedelta(hours=soak.rng.uniform(1, 6))).isoformat()


def action_reserve_api(soak: Soak) -> str:
    body = {
        "server_type": soak.ctx["server_type"].slug,
        "count": soak.rng.randint(1, 3),
        "image": soak.ctx["image"].slug,
        "ssh_keys": [soak.ctx["key"].pk],
    }
    end = _window_end(soak)
    if end:
        body["ends_at"] = end
    status, answer = soak.api.call("POST", "/api/v1/reservations", body)
    return (
        "ok"
        if status == 201
        else f"refused {status} {(answer or {}).get('detail', '') if isinstance(answer, dict) else ''}"
    )


def action_reserve_service(soak: Soak) -> str:
    from provisioner.services.reservations import book_servers

    end = _window_end(soak)
    book_servers(
        soak.ctx["org"],
        soak.ctx["server_type"],
        soak.rng.randint(1, 3),
        image=soak.ctx["image"],
        actor=soak.ctx["customer_actor"],
        ssh_keys=[soak.ctx["key"]],
        ends_at=dt.datetime.fromisoformat(end) if end else None,
    )
    return "ok"


def action_extend(soak: Soak) -> str:
    windows = [r for r in open_reservations(soak) if r.ends_at is not None]
    if not windows:
        return "nothing to extend"
    reservation = soak.rng.choice(windows)
    ends_at = reservation.ends_at + dt.timedelta(minutes=soak.rng.randint(5, 60))
    status, _ = soak.api.call(
        "POST", f"/api/v1/reservations/{reservation.pk}/extend", {"ends_at": ends_at.isoformat()}
    )
    return "ok" if status == 200 else f"refused {status}"


def action_release_api(soak: Soak) -> str:
    reservations = open_reservations(soak)
    if not reservations:
        return "nothing to release"
    status, _ = soak.api.call("POST", f"/api/v1/reservations/{soak.rng.choice(reservations).pk}/release")
    return "ok" if status == 202 else f"refused {status}"


def action_release_service(soak: Soak) -> str:
    from provisioner.services.reservations import release_reservation

    reservations = open_reservations(soak)
    if not reservations:
        return "nothing to release"
    release_reservation(soak.rng.choice(reservations), actor=soak.ctx["customer_actor"])
    return "ok"


def action_reimage(soak: Soak) -> str:
    from provisioner.models import Node
    from provisioner.services.nodes import reimage

    nodes = list(Node.objects.filter(state__in=["active", "available"]))
    if not nodes:
        return "nothing to reimage"
    reimage(soak.rng.choice(nodes), actor=soak.ctx["operator_actor"], force=True, reason="soak reimage")
    return "ok"


def action_rollout(soak: Soak) -> str:
    from provisioner.models import Node, Rollout
    from provisioner.services.rollouts import start_rollout

    if Rollout.objects.filter(state="running").exists():
        return "a rollout is running"
    nodes = list(Node.objects.filter(state__in=["active", "available"]))
    if len(nodes) < 2:
        return "too few nodes"
    chosen = soak.rng.sample(nodes, min(len(nodes), soak.rng.randint(2, 5)))
    start_rollout(chosen, actor=soak.ctx["operator_actor"], max_parallel=2, failure_budget=2, force=True)
    return "ok"


def action_operator_retry(soak: Soak) -> str:
    from provisioner.models import Node
    from provisioner.services.nodes import recover, return_from_quarantine

    broken = list(Node.objects.filter(state__in=["error", "quarantined"], reservation__isnull=True))
    if not broken:
        return "nothing broken"
    node = soak.rng.choice(broken)
    if node.state == "error":
        recover(node, actor=soak.ctx["operator_actor"], reason="soak: operator retry")
    else:
        return_from_quarantine(node, actor=soak.ctx["operator_actor"], reason="soak: operator retry")
    return "ok"


def action_customer_reads(soak: Soak) -> str:
    from provisioner.models import Operation

    soak.api.call("GET", "/api/v1/reservations")
    soak.api.call("GET", "/api/v1/servers")
    ops = list(Operation.objects.filter(reservation__organization=soak.ctx["org"]).order_by("-pk")[:20])
    if ops:
        op = soak.rng.choice(ops)
        soak.api.call("GET", f"/api/v1/operations/{op.pk}")  # its steps and log lines
    status, _ = soak.api.call("GET", "/api/v1/audit-events")
    return "ok" if status == 200 else f"refused {status}"


ACTIONS: list[tuple[Callable[[Soak], str], int]] = [
    (action_reserve_api, 4),
    (action_reserve_service, 2),
    (action_extend, 2),
    (action_release_api, 2),
    (action_release_service, 1),
    (action_reimage, 1),
    (action_rollout, 1),
    (action_operator_retry, 2),
    (action_customer_reads, 2),
]


# --- invariants ---------------------------------------------------------------------------------------------


def check_no_node_in_two_open_reservations(soak: Soak, grace: dt.timedelta) -> dict[str, str]:
    from django.db.models import Count

    from provisioner.models import Allocation
    from provisioner.states import OPEN_RESERVATION_STATES

    doubled = (
        Allocation.objects.filter(active=True, reservation__state__in=OPEN_RESERVATION_STATES)
        .values("node__name")
        .annotate(n=Count("reservation", distinct=True))
        .filter(n__gt=1)
    )
    found = {}
    for row in doubled:
        held_by = list(
            Allocation.objects.filter(node__name=row["node__name"], active=True).values_list(
                "reservation_id", flat=True
            )
        )
        found[f"double:{row['node__name']}"] = f"{row['node__name']} is held by open reservations {held_by}"
    return found


def check_no_transient_node_without_operation(soak: Soak, grace: dt.timedelta) -> dict[str, str]:
    from django.db.models import Exists, OuterRef
    from django.utils import timezone

    from provisioner.models import Node, Operation
    from provisioner.states import OPEN_OPERATION_STATES, TRANSIENT_STATES

    open_ops = Operation.objects.filter(node=OuterRef("pk"), state__in=OPEN_OPERATION_STATES)
    stuck = Node.objects.filter(
        state__in=TRANSIENT_STATES, state_changed_at__lt=timezone.now() - grace
    ).exclude(Exists(open_ops))
    return {
        f"stranded:{n.name}:{n.state_changed_at.isoformat()}": (
            f"{n.name} {n.state} since {n.state_changed_at:%H:%M:%S} with no operation pending, running or waiting "
            f"(last: {_last_operation(n)})"
        )
        for n in stuck
    }


def _last_operation(node: Any) -> str:
    op = node.operations.order_by("-pk").first()
    return f"{op.kind} {op.pk} {op.state} {op.error[:120]!r}" if op else "none"


def check_every_operation_finished_or_resumable(soak: Soak, grace: dt.timedelta) -> dict[str, str]:
    """Open operations: running with a live heartbeat (else the reaper must have resumed it), pending only for
    a while (a worker picks it up, or the scheduler queues it again), waiting only until its deadline."""
    from django.db.models import Q
    from django.utils import timezone

    from provisioner.models import Operation
    from provisioner.states import FINISHED_OPERATION_STATES

    now = timezone.now()
    found = {}
    stale = Operation.objects.filter(state="running", heartbeat_at__lt=now - grace)
    for op in stale:
        found[f"stale:{op.pk}:{op.heartbeat_at}"] = (
            f"operation {op.pk} ({op.kind} on {op.node.name}) running without a heartbeat since {op.heartbeat_at:%H:%M:%S}"
        )
    pending = Operation.objects.filter(state="pending", created_at__lt=now - 3 * grace).filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=now - 3 * grace)
    )
    for op in pending:
        found[f"pending:{op.pk}"] = (
            f"operation {op.pk} ({op.kind} on {op.node.name}) pending since {op.created_at:%H:%M:%S}"
        )
    overdue = Operation.objects.filter(state="waiting", wait_deadline__lt=now - grace)
    for op in overdue:
        found[f"overdue:{op.pk}"] = (
            f"operation {op.pk} ({op.kind} on {op.node.name}) waiting for {op.wait_for} past its deadline "
            f"{op.wait_deadline:%H:%M:%S}"
        )
    unfinished = Operation.objects.filter(state__in=FINISHED_OPERATION_STATES, finished_at__isnull=True)
    for op in unfinished:
        found[f"unfinished:{op.pk}"] = f"operation {op.pk} is {op.state} without a finish time"
    return found


def check_released_servers_wiped_before_reuse(soak: Soak, grace: dt.timedelta) -> dict[str, str]:
    """Between one reservation's hold of a server and the next one's, a wipe of that server succeeded."""
    from provisioner.models import Allocation, Step

    found = {}
    by_node: dict[int, list[Any]] = collections.defaultdict(list)
    for a in Allocation.objects.select_related("node").order_by("node_id", "created_at", "pk"):
        by_node[a.node_id].append(a)
    wipes: dict[int, list[dt.datetime]] = collections.defaultdict(list)
    for node_id, finished in Step.objects.filter(name="wipe", state="succeeded").values_list(
        "operation__node_id", "finished_at"
    ):
        wipes[node_id].append(finished)
    for node_id, allocations in by_node.items():
        for before, after in itertools.pairwise(allocations):
            if before.reservation_id == after.reservation_id:
                continue
            since = before.ended_at or before.created_at
            if not any(since <= w <= after.created_at for w in wipes[node_id]):
                found[f"unwiped:{after.pk}"] = (
                    f"{after.node.name} went to reservation {after.reservation_id} at {after.created_at:%H:%M:%S} "
                    f"without a wipe since reservation {before.reservation_id} let it go at {since:%H:%M:%S}"
                )
    return found


def check_every_state_change_audited(soak: Soak, grace: dt.timedelta) -> dict[str, str]:
    """Each node's audited transitions chain (one's to is the next one's from) and end in its state now."""
    from provisioner.models import AuditEvent, Node

    found = {}
    chains: dict[int, list[tuple[int, str, str]]] = collections.defaultdict(list)
    for pk, node_id, frm, to in (
        AuditEvent.objects.exclude(from_state="")
        .exclude(node__isnull=True)
        .order_by("pk")
        .values_list("pk", "node_id", "from_state", "to_state")
    ):
        chains[node_id].append((pk, frm, to))
    for node in Node.objects.all():
        chain = chains.get(node.pk, [])
        for (_, _, to), (pk, frm, _) in itertools.pairwise(chain):
            if to != frm:
                found[f"gap:{pk}"] = f"{node.name}: audited {to}, then audit event {pk} moves it from {frm}"
        if chain and chain[-1][2] != node.state:
            found[f"unaudited:{node.name}:{node.state}:{chain[-1][0]}"] = (
                f"{node.name} is {node.state} but its last audited transition (event {chain[-1][0]}) ends in {chain[-1][2]}"
            )
    return found


def check_no_secret_anywhere(soak: Soak, grace: dt.timedelta) -> dict[str, str]:
    """Secrets in files under the var dir (logs, Ansible spools and events), operation log lines, step data
    and errors, audit events, the event stream, API answers fetched, process command lines."""
    from provisioner import crypto
    from provisioner.models import AuditEvent, Event, LogLine, Operation, Step

    for pk, params in Operation.objects.filter(params__has_key="provisioning_key").values_list(
        "pk", "params"
    ):
        if pk not in soak.secrets.seen_keys:
            soak.secrets.add_private_key(
                crypto.decrypt(params["provisioning_key"]["private"]), "a provisioning private key"
            )
            soak.secrets.seen_keys.add(pk)
    found = {}
    for where, rows in (
        ("log line", LogLine.objects.values_list("pk", "message")),
        ("step", Step.objects.values_list("pk", "data", "error")),
        ("operation error", Operation.objects.values_list("pk", "error")),
        ("audit event", AuditEvent.objects.values_list("pk", "reason", "data")),
        ("event", Event.objects.values_list("pk", "payload")),
    ):
        for pk, *texts in rows.iterator():
            for what in soak.secrets.find(json.dumps(texts, default=str)):
                found[f"secret:{where}:{pk}:{what}"] = f"{where} {pk} holds {what}"
    if soak.ctx.get("scan_files", True):
        for text in soak.secrets.scan_files(soak.var) + scan_command_lines(soak.secrets):
            found[f"secret:{text}"] = text
    for text in soak.api.leaks:
        found[f"secret:{text}"] = text
    return found


INVARIANTS: list[Callable[[Soak, dt.timedelta], dict[str, str]]] = [
    check_no_node_in_two_open_reservations,
    check_no_transient_node_without_operation,
    check_every_operation_finished_or_resumable,
    check_released_servers_wiped_before_reuse,
    check_every_state_change_audited,
    check_no_secret_anywhere,
]


def check_stack_processes_stay_up(soak: Soak) -> None:
    """A process of the stack that ended without being killed by the bench (a crash: the database restarted
    under it, ...) is a violation; it is restarted so that the soak goes on."""
    for name in soak.stack.revive_dead():
        soak.violation(
            "check_stack_processes_stay_up", f"exited:{name}:{time.monotonic()}", f"{name} exited by itself"
        )


def check_invariants(soak: Soak, *, scan_files: bool) -> int:
    """Run every invariant in one consistent snapshot of the database; print each new violation. Returns how
    many new ones were found (0 when the database could not be read: PostgreSQL restarting)."""
    from django.db import DatabaseError, connection, transaction

    grace = dt.timedelta(seconds=soak.args.grace)
    soak.ctx["scan_files"] = scan_files
    new = 0
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for check in INVARIANTS:
                for key, detail in check(soak, grace).items():
                    new += soak.violation(check.__name__, key, detail)
    except DatabaseError as exc:
        connection.close()
        log(f"invariants not checked this time: the database did not answer ({str(exc).splitlines()[0]})")
    return new


# --- setup and the run --------------------------------------------------------------------------------------


def setup_tenants(soak: Soak, port: int) -> None:
    """A customer organization (owner, SSH key, API token) and an operator (staff, token)."""
    from django.contrib.auth.models import User

    from provisioner.lifecycle import Actor
    from provisioner.models import ApiToken, Image, Membership, Organization, ServerType, SSHKey
    from provisioner.sshkeys import generate_keypair, parse_public_key

    customer = User.objects.create_user("soak-customer")
    operator = User.objects.create_user("soak-operator", is_staff=True)
    org = Organization.objects.create(name="Soak", slug="soak", server_quota=soak.args.nodes)
    Membership.objects.create(organization=org, user=customer, role="owner")
    _, public = generate_keypair("ed25519")
    parsed = parse_public_key(public)
    key = SSHKey.objects.create(
        organization=org, name="soak", public_key=parsed.line, fingerprint=parsed.fingerprint
    )
    _, customer_token = ApiToken.issue(customer, "soak")
    _, operator_token = ApiToken.issue(operator, "soak-operator")
    soak.secrets.add(customer_token, "the customer's API token")
    soak.secrets.add(operator_token, "the operator's API token")
    soak.api.token = customer_token
    soak.ctx.update(
        org=org,
        key=key,
        image=Image.objects.get(slug="neocloud-demo-linux"),
        server_type=ServerType.objects.get(slug="h100-8x"),
        customer_actor=Actor(user=customer, label="soak-customer"),
        operator_actor=Actor(user=operator, label="soak-operator"),
    )


def pick(rng: random.Random, weighted: list[tuple[Any, int]]) -> Any:
    return rng.choices([f for f, _ in weighted], weights=[w for _, w in weighted])[0]


def do_action(soak: Soak) -> None:
    from django.db import DatabaseError, connection

    from provisioner.errors import NeocloudError

    action = pick(soak.rng, ACTIONS)
    name = action.__name__.removeprefix("action_")
    try:
        outcome = action(soak)
    except NeocloudError as exc:
        outcome = f"refused: {exc}"
    except DatabaseError as exc:
        connection.close()
        outcome = f"database unavailable: {str(exc).splitlines()[0]}"
    if outcome == "ok":
        soak.actions[name] += 1
    else:
        soak.refused[name] += 1
        if soak.args.verbose:
            log(f"{name}: {outcome}")


def inject_fault(soak: Soak) -> None:
    """One random fault; a fault with nothing to hit now (no node deploying for an agent crash) gives its turn
    to another, up to three draws."""
    from django.db import DatabaseError, connection

    for _ in range(3):
        fault = pick(soak.rng, FAULTS)
        try:
            what = fault(soak)
        except DatabaseError:
            connection.close()
            what = None
        if what:
            soak.faults[fault.__name__.removeprefix("fault_")] += 1
            log(f"fault: {what}")
            return


def settle(soak: Soak) -> bool:
    """Until no operation is open and no node transient, at most --settle seconds. Returns whether it did."""
    from django.db import DatabaseError, connection

    from provisioner.models import Node, Operation
    from provisioner.states import OPEN_OPERATION_STATES, TRANSIENT_STATES

    deadline = time.monotonic() + soak.args.settle
    while time.monotonic() < deadline:
        try:
            busy = Operation.objects.filter(state__in=OPEN_OPERATION_STATES).count()
            transient = Node.objects.filter(state__in=TRANSIENT_STATES).count()
        except DatabaseError:
            connection.close()
            busy = transient = -1
        if busy == 0 and transient == 0:
            return True
        check_stack_processes_stay_up(soak)
        time.sleep(3)
    return False


def summary(soak: Soak, settled: bool, started: float) -> int:
    from django.db.models import Count

    from provisioner.models import Node, Operation, Reservation

    ops = Operation.objects.filter(pk__gt=soak.first_operation)
    by_kind = dict(ops.values_list("kind").annotate(n=Count("pk")).order_by())
    by_state = dict(ops.values_list("state").annotate(n=Count("pk")).order_by())
    nodes = dict(Node.objects.values_list("state").annotate(n=Count("pk")).order_by())
    print()
    print(
        f"ran {(time.monotonic() - started) / 60:.1f} min on {soak.args.nodes} lab servers, seed {soak.args.seed}"
    )
    print(f"actions done: {dict(soak.actions)}")
    print(f"actions refused or moot: {dict(soak.refused)}")
    print(f"faults injected: {dict(soak.faults)}")
    print(f"operations by kind: {by_kind}; by state: {by_state}")
    print(
        f"reservations: {Reservation.objects.filter(organization=soak.ctx['org']).count()}, nodes now: {nodes}"
    )
    print(
        f"settled after the faults stopped: {'yes' if settled else f'no (within {soak.args.settle:.0f} s)'}"
    )
    print(f"API calls: {soak.api.calls}; secrets watched: {len(soak.secrets.values)}")
    for detail in soak.violations.values():
        print(f"  violation: {detail}")
    total = sum(by_kind.values())
    print(
        f"soak: {total} operations, {sum(soak.faults.values())} faults injected, {len(soak.violations)} invariant violations"
    )
    return 1 if soak.violations else 0


def run(args: argparse.Namespace) -> int:
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=ROOT / "var"))
    var.chmod(0o755)  # the postgres user reaches its data directory through it
    postgres = PrivatePostgres(var, args.pg_port or free_port())
    postgres.start()
    log(f"private PostgreSQL on port {postgres.port}, data in {postgres.data}")
    boot_url = f"http://127.0.0.1:{args.port}"
    os.environ.update(
        NEOCLOUD_VAR_DIR=str(var),
        DJANGO_SETTINGS_MODULE="webapp.settings",
        DATABASE_URL=postgres.url,
        NEOCLOUD_DEPLOY_DRIVER="ansible",
        NEOCLOUD_BURNIN_DRIVER="ansible",
        NEOCLOUD_BOOT_URL=boot_url,
        NEOCLOUD_LOG_LEVEL="INFO",
        NEOCLOUD_DB_CONN_MAX_AGE="60",
        NEOCLOUD_BMC_TIMEOUT_SECONDS=str(args.bmc_timeout),
        NEOCLOUD_DEBUG="0",
    )
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from lab.management.commands.lab import start_lab, stop_lab
    from lab.spec import load_specs
    from provisioner.models import Operation

    call_command("migrate", verbosity=0)
    stack = Stack(var, args.port, args.workers, args.threads)
    secrets = Secrets()
    soak = Soak(
        args=args,
        var=var,
        rng=random.Random(args.seed),
        stack=stack,
        postgres=postgres,
        api=Api(boot_url, "", secrets),
        secrets=secrets,
        lab_dir=Path(settings.NEOCLOUD_LAB_DIR),
    )
    try:
        stack.start_all()
        t0 = time.monotonic()
        start_lab(args.nodes, boot_url=boot_url)
        for spec in load_specs(soak.lab_dir):
            secrets.add(spec.bmc_password, f"the BMC password of {spec.name}")
        log(f"lab of {args.nodes} servers up in {time.monotonic() - t0:.0f} s; var dir {var}")
        setup_tenants(soak, args.port)
        soak.first_operation = Operation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        started = time.monotonic()
        end = started + args.minutes * 60
        next_action = next_fault = next_check = started
        next_scan = started + 30
        while time.monotonic() < end:
            now = time.monotonic()
            soak.expire_node_faults()
            if now >= next_action:
                do_action(soak)
                next_action = now + soak.rng.uniform(0.5, 1.5) * args.action_every
            if now >= next_fault:
                inject_fault(soak)
                next_fault = now + soak.rng.uniform(0.5, 1.5) * args.fault_every
            if now >= next_check:
                check_invariants(soak, scan_files=now >= next_scan)
                next_scan = next_scan + 30 if now >= next_scan else next_scan
                next_check = now + args.check_every
                check_stack_processes_stay_up(soak)
            time.sleep(0.2)
        log("faults stopped; letting the fleet settle")
        soak.expire_node_faults(all_now=True)
        settled = settle(soak)
        time.sleep(2)
        check_invariants(soak, scan_files=True)
        return summary(soak, settled, started)
    finally:
        soak.expire_node_faults(all_now=True)
        stop_lab()
        stack.stop()
        postgres.stop()
        if args.keep:
            print(f"kept {var}")
        else:
            shutil.rmtree(var, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=30)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(2), "big"))
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--port", type=int, default=8130, help="the web/boot service's port")
    parser.add_argument(
        "--pg-port", type=int, default=0, help="the private PostgreSQL's port (default: a free one)"
    )
    parser.add_argument("--action-every", type=float, default=2.0, help="seconds between actions, on average")
    parser.add_argument("--fault-every", type=float, default=4.0, help="seconds between faults, on average")
    parser.add_argument("--check-every", type=float, default=5.0, help="seconds between invariant checks")
    parser.add_argument("--grace", type=float, default=90.0, help="seconds a node may sit transient unworked")
    parser.add_argument(
        "--settle", type=float, default=300.0, help="most seconds to wait for the fleet to settle"
    )
    parser.add_argument("--bmc-timeout", type=float, default=3.0, help="NEOCLOUD_BMC_TIMEOUT_SECONDS")
    parser.add_argument("--keep", action="store_true", help="keep the var dir (logs, database) afterwards")
    parser.add_argument("--verbose", action="store_true", help="print refused actions too")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
