"""Deploy benchmark: N lab servers provisioned in parallel through the real path (BMC, PXE, deploy agent,
Ansible over SSH, burn-in, handover), on SQLite.

Prints, per node, the control-plane time: CPU seconds spent by Neocloud's own processes (workers and
everything they run: ansible-playbook, our Ansible modules; the web process serving the boot service),
i.e. time not spent waiting on the lab. And the image streaming throughput of the deploy agents
(server -> agent -> sha256 -> disk -> fsync, all agents at once) as a ratio to N parallel `cp` + fsync of the
same image in the same run. Last line:
    deploy: N nodes in X s, overhead Y s/node, stream ratio Z
Usage: .venv/bin/python bench/deploy.py --nodes 10   (root: lab namespaces, BMCs on port 623)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TICK = os.sysconf("SC_CLK_TCK")
WRITE_DONE = re.compile(r"^(\S+ \S+) agent INFO stage=write done bytes=(\d+) seconds=([\d.]+)", re.M)


def cpu_split(pid: int) -> tuple[float, float]:
    """(utime + stime of a process, the same of the children it has waited for: ansible runs, modules)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / TICK
    return own, (int(fields[13]) + int(fields[14])) / TICK


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--image-mib", type=int, default=192)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
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

    from provisioner.lab.images import IMAGE_NAME
    from provisioner.management.commands.lab import start_lab, stop_lab
    from provisioner.models import Image, Membership, Node, Organization, Reservation, ServerType, SSHKey
    from provisioner.pxe.images import build_demo_image
    from provisioner.services.audit import Actor
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
        workers = [
            spawn("db_worker", "--queue-name", "*", "--interval", "0.2", "--no-reload")
            for _ in range(args.nodes)
        ]
        specs = start_lab(args.nodes, boot_url=boot_url)
        image_dir = Path(settings.NEOCLOUD_IMAGE_DIR)
        big = image_dir / f"bench-{args.image_mib}.raw"
        sha, size = build_demo_image(big, size_mib=args.image_mib)
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
        cpu_before = sum(cpu_seconds(p.pid) for p in [web, *workers])
        web_before = cpu_seconds(web.pid)
        workers_before = [cpu_split(p.pid) for p in workers]
        started = time.monotonic()
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
        busy, cursor = 0.0, 0.0
        for start, end, _ in sorted(windows):
            if end > cursor:
                busy += end - max(start, cursor)
                cursor = end
        stream_bps = sum(w[2] for w in windows) / busy
        t0 = min(w[0] for w in windows)
        print("windows:", " ".join(f"{w[0] - t0:.1f}-{w[1] - t0:.1f}" for w in sorted(windows)))
        per_agent = sorted(w[2] / (w[1] - w[0]) / 2**20 for w in windows)
        print(
            f"per-agent write rates MiB/s: min {per_agent[0]:.0f}, median {per_agent[len(per_agent) // 2]:.0f}, "
            f"max {per_agent[-1]:.0f}"
        )
        cp_bps = parallel_cp(big, var, args.nodes)
        ratio = stream_bps / cp_bps
        print(f"control plane CPU: {cpu:.1f} s for {args.nodes} nodes; wall {wall:.1f} s")
        print(
            f"  per node: ansible-playbook runs and our modules {worker_children / args.nodes:.2f} s, "
            f"workers themselves {worker_own / args.nodes:.2f} s, web/boot service {web_cpu / args.nodes:.2f} s"
        )
        print(
            f"agents streamed {sum(w[2] for w in windows) / 2**20:.0f} MiB at {stream_bps / 2**20:.0f} MiB/s; "
            f"{args.nodes} parallel cp at {cp_bps / 2**20:.0f} MiB/s"
        )
        print(
            f"deploy: {args.nodes} nodes in {wall:.1f} s, overhead {cpu / args.nodes:.2f} s/node, stream ratio {ratio:.2f}"
        )
        return 0
    finally:
        stop_lab()
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
