"""Time to SSH: from "reserve" to the customer's first successful SSH login, for the three paths a server
can take, measured in one run on the lab with its firmware's power-on self-test (POST) at the realistic
default of the server type (lab/post.py: 240 s for h100-8x) scaled x0.1 (``--post-scale``):

- cold: the server is off; the deploy power cycles it into the deploy ramdisk (one POST), streams the image,
  reboots into the OS (a second POST), burns in (full profile) and hands over;
- fast-track: the server's wipe left the deploy agent up and heartbeating (NEOCLOUD_FAST_TRACK); the deploy
  streams at once and pays one POST, into the OS;
- warm: the server is in the warm pool (deployed, burned in, powered on): new host keys generated on it,
  the customer's key in, ours out, a short NVML re-check, handover; no POST at all.

Each path: ``--count`` (10) single-server reservations made at once on a lab of as many servers. The clock
of each starts before ``book_servers`` and stops at the first successful login with the customer's key over
real SSH (paramiko, strict host-key checking against the fingerprints the API shows), tried once its
reservation is active, as a customer would. p50 and p99 (nearest rank) of each path are printed as measured,
then converted back to the unscaled POST time: each measured time plus the POST time the scale saved, once
per POST paid on that path (``(1 - scale) x POST(type)``: twice cold, once fast-track, never warm). Last line:
    time to ssh (unscaled): cold p50 A s, fast-track p50 B s, warm p50 C s p99 D s, warm speedup E
where E is the unscaled cold p50 over the warm p50. Targets: warm p99 < 60 s, E >= 5.

Usage: .venv/bin/python bench/time_to_ssh.py [--count 10] [--post-scale 0.1]   (root: lab namespaces)
Only one lab runs on a machine at a time: when another one runs, the bench waits and tries again.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.procstat import stop_all  # noqa: E402

SERVER_TYPE = "h100-8x"
POSTS_PAID = {"cold": 2, "fast-track": 1, "warm": 0}


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=10, help="single-server reservations per path")
    parser.add_argument("--post-scale", type=float, default=0.1, help="the lab POST's time scale")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900, help="seconds each phase may take")
    parser.add_argument(
        "--lab-retries", type=int, default=15, help="tries, 2 minutes apart, while another lab runs"
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    (ROOT / "var").mkdir(exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="bench-ssh-", dir=ROOT / "var"))
    boot_url = f"http://127.0.0.1:{args.port}"
    os.environ.update(
        NEOCLOUD_VAR_DIR=str(var),
        DJANGO_SETTINGS_MODULE="webapp.settings",
        NEOCLOUD_DEPLOY_DRIVER="ansible",
        NEOCLOUD_BURNIN_DRIVER="ansible",
        NEOCLOUD_BOOT_URL=boot_url,
        NEOCLOUD_LOG_LEVEL="WARNING",
        NEOCLOUD_LAB_POST_SCALE=str(args.post_scale),
        NEOCLOUD_FAST_TRACK="1",
        NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS="2",
        NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS="5",
    )
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    from lab import post
    from lab.management.commands.lab import start_lab, stop_lab
    from lab.supervisor import LabError
    from provisioner.handover import run_command
    from provisioner.lifecycle import Actor
    from provisioner.models import Image, Membership, Node, Organization, Reservation, ServerType, SSHKey
    from provisioner.services.reservations import book_servers, release_reservation
    from provisioner.sshkeys import generate_keypair, parse_public_key
    from provisioner.states import NodeState, ReservationState

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

    def wait_until(check, what: str) -> None:
        started = time.monotonic()
        while not check():
            bad = Node.objects.filter(state__in=[NodeState.ERROR, NodeState.QUARANTINED]).first()
            if bad is not None:
                raise SystemExit(f"bench failed while {what}: {bad.name} is {bad.state}: {bad.state_reason}")
            if time.monotonic() - started > args.timeout:
                raise SystemExit(f"bench failed: timed out {what}")
            time.sleep(0.5)

    lab_started = False
    try:
        spawn("runserver", f"127.0.0.1:{args.port}", "--noreload")
        for attempt in range(args.lab_retries):
            try:
                start_lab(args.count, boot_url=boot_url, post_scale=args.post_scale)
                lab_started = True
                break
            except LabError as exc:
                if "another lab runs" not in str(exc) or attempt == args.lab_retries - 1:
                    raise
                print(f"another lab runs; trying again in 2 minutes ({exc})", flush=True)
                time.sleep(120)
        for _ in range(args.workers):
            spawn("worker", "--threads", str(args.threads))
        spawn("scheduler", "--interval", "1", "--no-power-sync")
        image = Image.objects.get(slug="neocloud-demo-linux")
        server_type = ServerType.objects.get(slug=SERVER_TYPE)
        user = User.objects.create_user("bench-ssh")
        org = Organization.objects.create(name="Bench SSH", slug="bench-ssh", server_quota=args.count)
        Membership.objects.create(organization=org, user=user, role="owner")
        private, public = generate_keypair("ed25519")
        parsed = parse_public_key(public)
        key = SSHKey.objects.create(
            organization=org, name="k", public_key=parsed.line, fingerprint=parsed.fingerprint
        )
        actor = Actor(user=user, label="bench")
        time.sleep(2)  # the web server and workers up

        def one(results: list[float], errors: list[str]) -> None:
            """One single-server reservation, timed from reserve to the customer's first SSH login."""
            started = time.monotonic()
            reservation = book_servers(
                org, server_type, 1, image=image, ssh_keys=[key], actor=actor
            ).reservation
            deadline = started + args.timeout
            while Reservation.objects.get(pk=reservation.pk).state != ReservationState.ACTIVE:
                if time.monotonic() > deadline:
                    errors.append(f"reservation {reservation.pk} not active in time")
                    return
                time.sleep(0.1)
            node = Node.objects.get(reservation=reservation)
            while True:
                try:
                    status, _, _ = run_command(
                        node.ssh_address,
                        node.ssh_port,
                        node.ssh_user,
                        private,
                        node.host_key_fingerprints,
                        "true",
                        30,
                    )
                    if status == 0:
                        break
                except Exception as exc:  # not yet: tried again, as a customer would
                    if time.monotonic() > deadline:
                        errors.append(f"{node.name}: no SSH login: {exc}")
                        return
                time.sleep(0.1)
            results.append(time.monotonic() - started)

        def phase_breakdown(since) -> str:
            """The median time of each provisioning phase (the portal's time per phase) of the provisioning
            operations created since ``since``."""
            from statistics import median

            from provisioner.models import Operation
            from provisioner.services.phases import phase_times

            seen: dict[str, list[float]] = {}
            for op in Operation.objects.filter(kind="provision", created_at__gte=since):
                for label, seconds in phase_times(op):
                    seen.setdefault(label, []).append(seconds)
            return ", ".join(f"{label} {median(times):.1f} s" for label, times in seen.items())

        def phase(name: str) -> list[float]:
            from django.utils import timezone

            since = timezone.now()
            results: list[float] = []
            errors: list[str] = []
            threads = [threading.Thread(target=one, args=(results, errors)) for _ in range(args.count)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise SystemExit(f"bench failed in the {name} phase: {'; '.join(errors)}")
            print(
                f"{name}: {len(results)} reservations, reserve to SSH p50 {percentile(results, 50):.1f} s, "
                f"p99 {percentile(results, 99):.1f} s (POST scaled x{args.post_scale})",
                flush=True,
            )
            print(f"  {name}, median per phase: {phase_breakdown(since)}", flush=True)
            return results

        def release_all_and_wait_fast_tracked() -> None:
            for reservation in Reservation.objects.filter(state=ReservationState.ACTIVE):
                release_reservation(reservation, actor=actor, reason="bench: next phase")
            wait_until(
                lambda: (
                    Node.objects.filter(state=NodeState.AVAILABLE, fast_track_ticket__isnull=False).count()
                    == args.count
                ),
                "waiting for the wipes to leave their agents up",
            )

        measured = {"cold": phase("cold")}
        release_all_and_wait_fast_tracked()
        measured["fast-track"] = phase("fast-track")
        release_all_and_wait_fast_tracked()
        server_type.warm_pool_size, server_type.warm_pool_image = args.count, image
        server_type.save(update_fields=["warm_pool_size", "warm_pool_image"])
        warm_up_started = time.monotonic()
        wait_until(
            lambda: Node.objects.filter(state=NodeState.WARM).count() == args.count,
            "waiting for the warm pool",
        )
        print(f"warm pool of {args.count} filled in {time.monotonic() - warm_up_started:.1f} s", flush=True)
        measured["warm"] = phase("warm")

        post_full = post.seconds_for(SERVER_TYPE, 1.0)
        saved = (1 - args.post_scale) * post_full
        unscaled = {path: [t + POSTS_PAID[path] * saved for t in times] for path, times in measured.items()}
        print(
            f"unscaled: each POST of {SERVER_TYPE} takes {post_full:.0f} s at scale 1; added back "
            f"{saved:.0f} s per POST paid (cold 2, fast-track 1, warm 0)"
        )
        for path, times in unscaled.items():
            print(f"{path} (unscaled): p50 {percentile(times, 50):.1f} s, p99 {percentile(times, 99):.1f} s")
        cold50 = percentile(unscaled["cold"], 50)
        fast50 = percentile(unscaled["fast-track"], 50)
        warm50, warm99 = percentile(unscaled["warm"], 50), percentile(unscaled["warm"], 99)
        print(
            f"time to ssh (unscaled): cold p50 {cold50:.1f} s, fast-track p50 {fast50:.1f} s, "
            f"warm p50 {warm50:.1f} s p99 {warm99:.1f} s, warm speedup {cold50 / warm50:.1f}"
        )
        return 0
    finally:
        if lab_started:
            stop_lab()
        stop_all(procs, var, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
