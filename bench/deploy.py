"""Deploy benchmark: N lab servers provisioned in parallel through the real path (BMC, PXE, deploy agent,
Ansible over SSH, burn-in, handover), on SQLite.

Prints, per node, the control-plane time: CPU seconds spent by Neocloud's own processes (workers and
everything they run: ansible-playbook, our Ansible modules; the web process serving the boot service),
i.e. time not spent waiting on the lab. And the image streaming throughput of the deploy agents
(server -> agent -> sha256 -> disk -> fsync, all agents at once) as a ratio to N parallel `cp` + fsync of the
same image in the same run, and the agents' data path against ironic-python-agent's on the same image and
disks. Last line:
    deploy: N nodes in X s, overhead Y s/node, stream ratio Z, vs ironic-python-agent R
Usage: .venv/bin/python bench/deploy.py --nodes 10   (root: lab namespaces, BMCs on port 623)

The stream throughput is all bytes over the time during which at least one agent was writing (each agent's
write stage, from its log: connect, stream, hash, write, fsync). Both sides read the image from the page
cache (it was just built and served); `cp` writes new files through the page cache and fsyncs them, the
agents write O_DIRECT into their preallocated disks. The 'agents streamed' line also shows O_DIRECT copies
into preallocated files (the agents' write method without network and sha256), measured in the same run.
cp runs twice and the second run is the baseline: on this virtual machine the first page-cache-heavy copy
after a pause is up to 3x slower (10 x 1 GiB standalone: 1645, then 2714-2802 MiB/s back to back), while the
agents and the O_DIRECT copies show no such step. With a single cp the baseline measured 763-2570 MiB/s in
11 runs of one day and the ratio 0.47-1.47 on unchanged code (agents 1118-1258 MiB/s); with the warm-up
the ratio measured 0.38-0.41 (cp 3077-3228 MiB/s, the run before it 2125-2603).

The image is 1024 MiB by default (``--image-mib``): a real OS image is 2-10 GB. With a small one (192 MiB
was the default before) each agent writes for 2-3 s, about as long as the agents take to start one after
the other, and the start of every node's next Ansible task lands in the same seconds: the window then
measures ramp-up and the control plane's CPU more than the stream (measured on 2 cores: agents 639-747 MiB/s
at 192 MiB, 1194-1245 MiB/s at 1024 MiB). The lab nodes' disks are grown to fit the image.
Keep N x the image well below the RAM: cp goes through the page cache. At 2048 MiB (20 GiB of cp on a
24 GiB machine) cp fell to 970 MiB/s while the O_DIRECT copies held 1987 MiB/s, and the ratio (1.32)
measured the page cache, not the agents (1280 MiB/s).

The same run hashes the cached image with sha256 alone, one thread per core, and prints that rate as a
fraction of cp: the agents must hash every byte, so the stream ratio can never be above it on this machine.
Then it runs the agents' data path alone (the agent's own stream function, one process per lab disk, all at
once, nothing else running) and prints that rate as a fraction of cp: the ceiling of the stream ratio for
this agent on this machine, which the deploy approaches as far as the rest of the control plane leaves it
the cores.

Against what an Ironic user runs: ironic-python-agent 13.0.0 from PyPI, in a virtual environment of the
bench's own (bench/ipa_env.py, made once under ~/.cache/neocloud), streams the same image from the same image
server onto the same lab disk files, one process per disk as N agents would be, all started together with
nothing else running (bench/ipa_stream.py says which IPA functions run and what is patched for disk files:
its raw-image stream, ImageDownload's sha256 verify, open/close with a block device's semantics). It
alternates with the agents' data path alone (``--ipa-rounds``, 2 by default), and R is our total rate over
IPA's. Measured on this 2-core VM shared with other sessions (10 nodes, 1024 MiB, 2026-12-07, 3 runs):
    ours 683 / 850 vs IPA 279 / 324 MiB/s: R 2.52; CPU per GiB written ours 1.64 s, IPA 3.66 s
    ours 637 / 688 vs IPA 195 / 327 MiB/s: R 2.71; CPU per GiB written ours 1.64 s, IPA 3.37 s
    under a load average of 15: ours 499 / 349 vs IPA 111 / 115 MiB/s: R 3.63
(overhead lines 4.01, 3.76 and, under that load, 5.55 s/node: CPU seconds grow on an overloaded machine.)
IPA hashes and writes on the receiving thread, one 1 MiB chunk at a time, copies every chunk (urllib3 into
bytes, bytes into the page cache) and leaves the writing out to the kernel's writeback (its final flush was
under 1 % of its window: ten agents' 10 GiB pass the dirty limits long before); ours receives into its own
buffers, hashes each piece as it arrives and writes O_DIRECT from other threads. Three agents of each on a
256 MiB image used about the same CPU per GiB (ours 1.73 s, IPA 1.85 s; ours 323, IPA 262 MiB/s):
IPA's cost doubles at ten at once (not split further; its 10 GiB of page-cache writes meeting reclaim on
two cores is the likely place), ours does not change.

``--cpu-breakdown`` samples /proc every 0.2 s and prints where the CPU went while agents wrote: on a small
machine the agents, the image server and the whole control plane share the cores.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import mmap
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# lab servers boot without a power-on self-test here (lab.post), as in the figures of earlier sessions;
# a time-to-SSH benchmark is where POST time counts
os.environ.setdefault("NEOCLOUD_LAB_POST_SCALE", "0")
sys.path.insert(0, str(ROOT))
from bench.procstat import TICK, cpu_seconds, cpu_split, stop_all  # noqa: E402

WRITE_DONE = re.compile(r"^(\S+ \S+) agent INFO stage=write done bytes=(\d+) seconds=([\d.]+)", re.M)


def grow_disks(disk_paths: list[str], image_size: int) -> None:
    """Give every lab node a disk that holds the image and its config drive (the lab's default disk is 256 MiB).

    Allocated like the lab's own disks (posix_fallocate), so the agent writes to reserved blocks as on a real disk.
    """
    from provisioner.pxe.configdrive import CONFIG_DRIVE_SIZE

    wanted = image_size + CONFIG_DRIVE_SIZE + 16 * 2**20
    for path in disk_paths:
        with open(path, "r+b") as disk:
            if os.fstat(disk.fileno()).st_size < wanted:
                disk.truncate(wanted)
                os.posix_fallocate(disk.fileno(), 0, wanted)


def process_role(cmdline: str, comm: str) -> str:
    """Which part of the bench a process is, from its command line (kernel threads have none)."""
    if not cmdline:
        return "kernel threads (writeback, softirq)"
    roles = (
        ("provisioner.pxe.agent", "deploy agents: stream, sha256, write"),
        ("ssh-keygen", "deploy agents: host keys (ssh-keygen)"),
        ("provisioner.pxe.imageserver", "image server (sendfile)"),
        ("runserver", "web/boot service (runserver)"),
        ("manage.py worker", "workers"),
        ("ansible-playbook", "ansible-playbook"),
        ("lab.node_process", "lab nodes: BMC, firmware, SSH server"),
        ("bench/deploy.py", "this bench"),
    )
    for needle, role in roles:
        if needle in cmdline:
            return role
    if cmdline == sys.executable:  # Ansible pipelining: the module comes on stdin
        return "Ansible modules (python: BMC, deploy wait, burn-in)"
    return f"not the bench: {comm}"


class CpuSampler:
    """Samples the CPU time (utime + stime) of every process every ``interval`` s, to say afterwards where the
    CPU went during a time window. Costs about 1 % of a core at 0.2 s.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.samples: list[tuple[float, dict[int, tuple[str, int]]]] = []
        self._roles: dict[tuple[int, str], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            now, ticks = time.time(), {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                try:
                    head, rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
                    # keyed by name too: a forked child gets its own role once it has exec'd
                    key = (pid, head.split("(", 1)[1])
                    if key not in self._roles:
                        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                        self._roles[key] = process_role(cmdline.decode(errors="replace").strip(), key[1])
                except OSError:
                    continue
                fields = rest.split()
                ticks[pid] = (self._roles[key], int(fields[11]) + int(fields[12]))
            self.samples.append((now, ticks))
            self._stop.wait(self.interval)

    def breakdown(self, start: float, end: float) -> list[tuple[str, float]]:
        """CPU seconds per role between the last sample before ``start`` and the first after ``end``,
        largest first. A process born inside counts from zero; one that died inside, to its last sample."""
        before = [s for s in self.samples if s[0] <= start] or self.samples[:1]
        inside = [s for s in self.samples if before[-1][0] <= s[0]]
        after = next((i for i, s in enumerate(inside) if s[0] >= end), len(inside) - 1)
        first: dict[int, tuple[str, int]] = before[-1][1]
        last_seen: dict[int, tuple[str, int]] = {}
        for _, sample in inside[: after + 1]:
            last_seen.update(sample)
        per_role: collections.defaultdict[str, float] = collections.defaultdict(float)
        for pid, (role, ticks) in last_seen.items():
            per_role[role] += (ticks - first.get(pid, (role, 0))[1]) / TICK
        return sorted(per_role.items(), key=lambda item: item[1], reverse=True)


def parallel_cp(image: Path, workdir: Path, n: int) -> float:
    """Aggregate bytes/s of n simultaneous `cp` + fsync of the image (the baseline, measured in this run)."""

    def one(i: int) -> None:
        target = workdir / f"cp-{i}.img"
        # --sparse=never: the image is mostly zeros, and the agent writes every byte as a real disk needs
        subprocess.run(["cp", "--sparse=never", str(image), str(target)], check=True)
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)

    started = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, range(n)))
    elapsed = time.monotonic() - started
    for i in range(n):
        (workdir / f"cp-{i}.img").unlink()
    return n * image.stat().st_size / elapsed


def parallel_sha256(image: Path, threads: int) -> float:
    """Aggregate bytes/s of sha256 alone over the cached image, one thread per core (hashlib releases the GIL),
    hashing straight from a mapping of the page cache: no network, no copy, no write. Every agent must hash
    every byte it writes, so the agents can never stream faster than this on this machine."""
    import hashlib

    size, chunk = image.stat().st_size, 4 * 2**20
    with open(image, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    view = memoryview(mapped)

    def one(_: int) -> None:
        digest = hashlib.sha256()
        for offset in range(0, size, chunk):
            digest.update(view[offset : offset + chunk])

    try:
        started = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(threads)))
        elapsed = time.monotonic() - started
    finally:
        view.release()
        mapped.close()
    return threads * size / elapsed


def parallel_direct_copy(image: Path, workdir: Path, n: int) -> float:
    """Aggregate bytes/s of n simultaneous copies of the (cached) image into preallocated files with O_DIRECT
    writes of 4 MiB + fsync: the agents' write method without the network and the sha256. Not the
    baseline of the ratio; printed next to it to show what the disk takes the agents' way in this run.
    """
    size, chunk = image.stat().st_size, 4 * 2**20
    targets = [workdir / f"direct-{i}.img" for i in range(n)]
    for target in targets:
        with open(target, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)

    def one(target: Path) -> None:
        buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
        src, dst = os.open(image, os.O_RDONLY), os.open(target, os.O_WRONLY | os.O_DIRECT)
        try:
            for offset in range(0, size, chunk):
                length = os.preadv(src, [buf], offset)
                os.pwrite(dst, memoryview(buf)[: -(-length // 4096) * 4096], offset)
            os.fsync(dst)
        finally:
            os.close(src)
            os.close(dst)

    started = time.monotonic()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, targets))
    elapsed = time.monotonic() - started
    for target in targets:
        target.unlink()
    return n * size / elapsed


STREAM_ALONE = """
import sys, time
from provisioner.pxe.agent import stream_image_to_disk
url, disk, sha256, size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
print("ready", flush=True)
sys.stdin.readline()
started, cpu = time.time(), time.process_time()
outcome = stream_image_to_disk(url, disk, size)
ended, cpu = time.time(), time.process_time() - cpu
if outcome.sha256 != sha256:
    sys.exit(f"the image streamed onto {disk} has the sha256 {outcome.sha256}, not {sha256}")
print(started, ended, cpu, flush=True)
"""
IPA_STREAM = ROOT / "bench" / "ipa_stream.py"


def union_seconds(windows: list[tuple[float, float]]) -> float:
    """Seconds during which at least one of the (start, end) windows was open."""
    busy, cursor = 0.0, 0.0
    for start, end in sorted(windows):
        if end > cursor:
            busy += end - max(start, cursor)
            cursor = end
    return busy


def last_line(text: str) -> str:
    """The last non-empty line of a process's error output: the exception or exit message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "no error output"


@dataclasses.dataclass
class StreamRun:
    """Streams run at once: aggregate bytes/s over the union of their windows, and their own CPU seconds
    per GiB written (every thread of each stream process; not the kernel's writeback threads, which flush
    what a writer leaves in the page cache)."""

    bps: float
    cpu_per_gib: float
    # ironic-python-agent's: the median agent's final flush (the device's close) as a share of the union window
    flush_share: float | None = None


def parallel_streams(what: str, commands: list[list[str]]) -> tuple[float, float, list[list[str]]]:
    """Run one stream process per command, all at once: each prints ``ready`` once imported and set up,
    then all get the go on stdin together (imports are not timed), then each prints ``START END CPU [more]``.
    Returns the union of their windows in seconds, their CPU seconds together and each one's further fields.
    """
    procs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdin is not None
            if proc.stdout.readline().strip() != "ready":
                _, err = proc.communicate()
                raise SystemExit(f"bench failed: {what} did not start: {last_line(err)}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        windows, extras, cpu = [], [], 0.0
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"bench failed: {what} exited with {proc.returncode}: {last_line(err)}")
            start, end, seconds, *more = out.split()
            windows.append((float(start), float(end)))
            cpu += float(seconds)
            extras.append(more)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return union_seconds(windows), cpu, extras


def parallel_agent_streams(url: str, disks: list[str], sha256: str, size: int) -> StreamRun:
    """Aggregate bytes/s of the agent's own data path (``stream_image_to_disk``: HTTP from the image server,
    sha256, O_DIRECT writes, fsync), one process per disk, all at once, with nothing else running: no
    control plane, no BMCs, no SSH. Timed like the deploy's agents (the union of their write windows), so
    the deploy's stream can only come close to this; the difference is the cores' share the rest of the
    deploy takes while agents write."""
    commands = [[sys.executable, "-c", STREAM_ALONE, url, disk, sha256, str(size)] for disk in disks]
    seconds, cpu, _ = parallel_streams("a lone agent stream", commands)
    return StreamRun(len(disks) * size / seconds, cpu / (len(disks) * size / 2**30))


def parallel_ipa_streams(ipa_python: Path, url: str, disks: list[str], sha256: str, size: int) -> StreamRun:
    """Aggregate bytes/s of ironic-python-agent's own raw-image stream (bench/ipa_stream.py: download,
    sha256 verify, write, the flush of a block device's last close), one process per disk as ten agents
    would be, all at once, nothing else running: the same image server, image and disk files as
    ``parallel_agent_streams``, timed the same way. Checks that each disk then holds the image's file system."""
    from provisioner.pxe.images import DEMO_FS_UUID

    commands = [[str(ipa_python), str(IPA_STREAM), url, disk, sha256, str(size)] for disk in disks]
    seconds, cpu, extras = parallel_streams("an ironic-python-agent stream", commands)
    for disk, more in zip(disks, extras, strict=True):
        if more[:1] != [DEMO_FS_UUID]:
            raise SystemExit(
                f"bench failed: after ironic-python-agent's stream {disk} has the root UUID {more}"
            )
    flush = sorted(float(more[1]) / seconds for more in extras)
    return StreamRun(len(disks) * size / seconds, cpu / (len(disks) * size / 2**30), flush[len(flush) // 2])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--image-mib", type=int, default=1024)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=2, help="worker processes (manage.py worker)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker process")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument(
        "--cpu-breakdown",
        action="store_true",
        help="sample /proc and print where the CPU went while agents wrote",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run's directory (lab, agent logs)")
    parser.add_argument(
        "--ipa-rounds",
        type=int,
        default=2,
        help="rounds of (our agents' data path alone, ironic-python-agent's) back to back",
    )
    args = parser.parse_args()
    if args.ipa_rounds < 1:
        parser.error("--ipa-rounds must be at least 1")
    from bench.ipa_env import IPA_VERSION, IpaEnvError, ensure_ipa_env

    try:
        # before the lab starts: the first run installs it (about 20 s), and a failure costs no lab
        ipa_python = ensure_ipa_env()
    except IpaEnvError as exc:
        raise SystemExit(f"bench failed: {exc}") from None
    # on the project's disk, not /tmp (which may be tmpfs): the agent and `cp` both write to real disk files
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-deploy-", dir=ROOT / "var"))
    boot_url = f"http://127.0.0.1:{args.port}"
    os.environ.update(
        NEOCLOUD_VAR_DIR=str(var),
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NEOCLOUD_DEPLOY_DRIVER="ansible",
        NEOCLOUD_BURNIN_DRIVER="ansible",
        NEOCLOUD_BOOT_URL=boot_url,
        NEOCLOUD_LOG_LEVEL="WARNING",
    )
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from lab.images import IMAGE_NAME
    from lab.management.commands.lab import start_lab, stop_lab
    from provisioner.lifecycle import Actor
    from provisioner.models import Image, Membership, Node, Organization, Reservation, ServerType, SSHKey
    from provisioner.pxe.images import build_demo_image
    from provisioner.services.reservations import book_servers
    from provisioner.sshkeys import generate_keypair, parse_public_key
    from provisioner.states import NodeState, ReservationState

    call_command("migrate", verbosity=0)
    procs: list[subprocess.Popen] = []

    def spawn(*cmd: str) -> subprocess.Popen:
        log = open(var / f"{cmd[0]}-{len(procs)}.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), *cmd],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    try:
        web = spawn("runserver", f"127.0.0.1:{args.port}", "--noreload")
        # a fixed worker set, as the demo and the README run it: waits hold no worker (engine waits)
        workers = [spawn("worker", "--threads", str(args.threads)) for _ in range(args.workers)]
        specs = start_lab(args.nodes, boot_url=boot_url)
        image_dir = Path(settings.NEOCLOUD_IMAGE_DIR)
        big = image_dir / f"bench-{args.image_mib}.raw"
        sha, size = build_demo_image(big, size_mib=args.image_mib)
        grow_disks([spec.disk_path for spec in specs], size)
        image = Image.objects.create(
            slug="bench",
            name="bench image",
            sha256=sha,
            size_bytes=size,
            url=f"http://127.0.0.1:8090/{big.name}",
        )
        assert (image_dir / IMAGE_NAME).exists()
        user = User.objects.create_user("bench")
        org = Organization.objects.create(name="Bench", slug="bench", server_quota=args.nodes)
        Membership.objects.create(organization=org, user=user, role="owner")
        _, public = generate_keypair("ed25519")
        parsed = parse_public_key(public)
        key = SSHKey.objects.create(
            organization=org, name="k", public_key=parsed.line, fingerprint=parsed.fingerprint
        )
        time.sleep(2)  # workers and the web server up
        sampler = CpuSampler() if args.cpu_breakdown else None
        if sampler:
            sampler.start()
        cpu_before = sum(cpu_seconds(p.pid) for p in [web, *workers])
        web_before = cpu_seconds(web.pid)
        workers_before = [cpu_split(p.pid) for p in workers]
        started, wall_start = time.monotonic(), time.time()
        reservation = book_servers(
            org,
            ServerType.objects.get(slug="h100-8x"),
            args.nodes,
            image=image,
            ssh_keys=[key],
            actor=Actor(user=user, label="bench"),
        ).reservation
        while Reservation.objects.get(pk=reservation.pk).state != ReservationState.ACTIVE:
            bad = Node.objects.filter(state__in=[NodeState.ERROR, NodeState.QUARANTINED]).first()
            if bad or time.monotonic() - started > args.timeout:
                raise SystemExit(
                    f"bench failed: {bad.name if bad else 'timeout'} {bad.state_reason if bad else ''}"
                )
            time.sleep(0.5)
        wall = time.monotonic() - started
        cpu = sum(cpu_seconds(p.pid) for p in [web, *workers]) - cpu_before
        web_cpu = cpu_seconds(web.pid) - web_before
        workers_after = [cpu_split(p.pid) for p in workers]
        worker_own = sum(a[0] - b[0] for a, b in zip(workers_after, workers_before, strict=True))
        worker_children = sum(a[1] - b[1] for a, b in zip(workers_after, workers_before, strict=True))
        # stream throughput: all agents' write phases, as one aggregate
        windows = []
        for spec in specs:
            text = (Path(settings.NEOCLOUD_LAB_DIR) / "nodes" / spec.name / "agent.log").read_text()
            match = WRITE_DONE.findall(text)[-1]
            end = datetime.datetime.strptime(match[0], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            windows.append((end - float(match[2]), end, int(match[1])))
        # time during which at least one agent was writing (the agents start at different moments)
        stream_bps = sum(w[2] for w in windows) / union_seconds([(w[0], w[1]) for w in windows])
        t0 = min(w[0] for w in windows)
        print("windows:", " ".join(f"{w[0] - t0:.1f}-{w[1] - t0:.1f}" for w in sorted(windows)))
        per_agent = sorted(w[2] / (w[1] - w[0]) / 2**20 for w in windows)
        print(
            f"per-agent write rates MiB/s: min {per_agent[0]:.0f}, median {per_agent[len(per_agent) // 2]:.0f}, "
            f"max {per_agent[-1]:.0f}"
        )
        if sampler:
            sampler.stop()
            write_end = max(w[1] for w in windows)
            print(f"CPU while agents wrote ({write_end - t0:.1f} s x {os.cpu_count()} cores):")
            for role, seconds in sampler.breakdown(t0, write_end):
                if seconds >= 0.05:
                    print(
                        f"  {seconds:6.2f} s {100 * seconds / (write_end - t0) / (os.cpu_count() or 1):4.0f} %  {role}"
                    )
            # processes that live less than a sample interval are missed: the per-node total above is exact
            print(f"CPU over the whole deploy ({wall:.1f} s), per node, sampled:")
            for role, seconds in sampler.breakdown(wall_start, wall_start + wall):
                if seconds >= 0.05 * args.nodes:
                    print(f"  {seconds / args.nodes:6.2f} s  {role}")
        # twice, the second is the baseline: the first copy after a pause is up to 3x slower (module docstring)
        cold_cp_bps = parallel_cp(big, var, args.nodes)
        cp_bps = parallel_cp(big, var, args.nodes)
        direct_bps = parallel_direct_copy(big, var, args.nodes)
        cores = os.cpu_count() or 1
        sha_bps = parallel_sha256(big, cores)
        # ours and ironic-python-agent's, alternating, on the same disks: each side's total bytes over its
        # total time, so a slow moment of this shared machine weighs on the side it fell on by its length
        disks = [spec.disk_path for spec in specs]
        ours_rates, ipa_rates = [], []
        for _ in range(args.ipa_rounds):
            ours_rates.append(parallel_agent_streams(image.url, disks, sha, size))
            ipa_rates.append(parallel_ipa_streams(ipa_python, image.url, disks, sha, size))
        alone_bps = len(ours_rates) / sum(1 / r.bps for r in ours_rates)
        ipa_bps = len(ipa_rates) / sum(1 / r.bps for r in ipa_rates)
        ours_cpu = sum(r.cpu_per_gib for r in ours_rates) / len(ours_rates)
        ipa_cpu = sum(r.cpu_per_gib for r in ipa_rates) / len(ipa_rates)
        ratio = stream_bps / cp_bps
        print(f"control plane CPU: {cpu:.1f} s for {args.nodes} nodes; wall {wall:.1f} s")
        print(
            f"  per node: ansible-playbook runs and our modules {worker_children / args.nodes:.2f} s, "
            f"workers themselves {worker_own / args.nodes:.2f} s, web/boot service {web_cpu / args.nodes:.2f} s"
        )
        print(
            f"agents streamed {sum(w[2] for w in windows) / 2**20:.0f} MiB at {stream_bps / 2**20:.0f} MiB/s; "
            f"{args.nodes} parallel cp at {cp_bps / 2**20:.0f} MiB/s (the run before: {cold_cp_bps / 2**20:.0f}) "
            f"(O_DIRECT copies into preallocated files: {direct_bps / 2**20:.0f} MiB/s)"
        )
        print(
            f"sha256 alone on all {cores} cores (from the page cache, nothing else running): "
            f"{sha_bps / 2**20:.0f} MiB/s = {sha_bps / cp_bps:.2f} of cp: the agents hash every byte they "
            f"write, so no stream ratio above {sha_bps / cp_bps:.2f} is possible on this machine"
        )
        print(
            f"the agents' data path alone ({args.nodes} agent streams at once, nothing else running): "
            f"{alone_bps / 2**20:.0f} MiB/s = {alone_bps / cp_bps:.2f} of cp; in the deploy, where the rest of the "
            f"control plane shares the {cores} cores, they reached {stream_bps / alone_bps:.2f} of that"
        )
        print(
            f"ironic-python-agent {IPA_VERSION} ({args.nodes} agents at once, one process each, its raw-image "
            f"stream: download, sha256 verify, write, flush), {args.ipa_rounds} round(s) alternating with our "
            f"agents' data path alone: "
            + "; ".join(
                f"ours {o.bps / 2**20:.0f} vs ipa {i.bps / 2**20:.0f} MiB/s"
                for o, i in zip(ours_rates, ipa_rates, strict=True)
            )
            + f"; together ours {alone_bps / 2**20:.0f} vs ipa {ipa_bps / 2**20:.0f} MiB/s; their own CPU per "
            f"GiB written: ours {ours_cpu:.2f} s, ipa {ipa_cpu:.2f} s (plus the kernel's writeback of its page "
            f"cache); ipa's median agent spent {ipa_rates[-1].flush_share or 0:.0%} of the window in its final flush"
        )
        print(
            f"deploy: {args.nodes} nodes in {wall:.1f} s, overhead {cpu / args.nodes:.2f} s/node, stream ratio {ratio:.2f}"
            f", vs ironic-python-agent {alone_bps / ipa_bps:.2f}"
        )
        return 0
    finally:
        stop_lab()
        stop_all(procs, var, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
