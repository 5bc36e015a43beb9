"""What the network adds to a reservation's handover: 32 servers through the engine with and without a real
switch to move (issue 18's benchmark: "handover of a 32-server reservation adds < 5 s for the network").

    .venv/bin/python bench/network_handover.py [--servers 32] [--rounds 2] [--database-url URL]   (root)

Starts a lab switch of its own (lab/switch.py: namespace ``ncsw-h<random>``, a real sshd, a bridge per VLAN,
nftables for the public addresses) with ``--servers`` ports cabled into one server namespace of its own, all on
the provisioning VLAN. Enrolls two sites of ``--servers`` servers each on the fake power and deploy drivers
(the fake deploy agent streams for ``--agent-seconds``, parked as a real one is): site ``net`` is
network-managed (a SiteNetwork, a Switch row pointing at the lab switch with the real Linux driver over SSH,
server i cabled to ``swp<i>``), site ``plain`` is not. With the demo's worker set (``--workers`` worker
process(es) of ``--threads`` threads and the scheduler), it books one reservation of all the servers of one
site, waits until all are active and releases it (waits until all are available again); plain and managed
alternate for ``--rounds`` rounds. Checks on the switch itself (``bridge link``, nftables' map) that every
port is on the reservation's VLAN and every public address published, and counts the switch's SSH logins
(its sshd log). Stops everything it started and prints as its last line:

    network handover: 32 servers, +X s for the network (target < 5 s), N switch sessions, L SSH logins

X is the median over rounds of (managed wall time - plain wall time), reserve to all active; N the switch
sessions (batches) of one managed reservation's network steps (the median), against 2 x servers for a session
per server and step (network_provisioning, network_tenant); the SSH logins are fewer still, as a worker keeps
its session for its next batch on the switch.

After each reservation is active it prints where the time went (from the engine's own records): per step,
when the first server reached it and the last one finished it (seconds after the booking) and each server's
time at it (finished minus reached, waiting on the switch included: median/max); then each switch session:
when its leader logged it, its step, how many ports it moved and how long the session took.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet import fake_engine_environment, spawner, stop_all  # noqa: E402

PROVISIONING_VLAN = 100


def main() -> int:
    parser = argparse.ArgumentParser(description="what the network adds to a reservation's handover")
    parser.add_argument("--servers", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (the demo: 1)")
    parser.add_argument("--threads", type=int, default=8, help="threads per worker (the demo: 8)")
    parser.add_argument("--agent-seconds", type=float, default=2.0)
    parser.add_argument("--database-url", default="", help="default: a new SQLite file")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--keep", action="store_true", help="keep the bench's var directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/network_handover.py makes network namespaces: run it as root")
    if not 1 <= args.servers <= 200:
        raise SystemExit("--servers must be 1-200 (one switch port and one public address each)")

    def say(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)

    # the drift job would add sessions of its own to the count
    var = fake_engine_environment(
        "bench-nethandover-", args.agent_seconds, args.database_url, NEOCLOUD_NETWORK_DRIFT_SECONDS="0"
    )
    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.utils import timezone

    from lab import switch as lab_switch
    from lab.spec import H100_8X_TYPE
    from provisioner.lifecycle import Actor
    from provisioner.models import (
        Image,
        LogLine,
        Membership,
        NetworkAttachment,
        Node,
        Operation,
        Organization,
        Reservation,
        ServerType,
        Site,
        SSHKey,
        Step,
        Switch,
        TenantNetwork,
    )
    from provisioner.services.inventory import enroll
    from provisioner.services.reservations import book_servers, release_reservation
    from provisioner.sshkeys import generate_keypair, parse_public_key
    from provisioner.states import FINISHED_OPERATION_STATES, NodeState, ReservationState

    call_command("migrate", verbosity=0)
    tag = secrets.token_hex(3)
    server_ns = f"ncsrv-h{tag}"
    n = args.servers
    procs: list[subprocess.Popen] = []
    switch = None
    with tempfile.TemporaryDirectory(prefix="bench-nethandover-switch-") as tmp:
        try:
            switch = lab_switch.start_switch(
                f"h{tag}", f"198.19.{secrets.randbelow(100) + 1}.9", Path(tmp), lldp=False
            )
            lab_switch.create_server_namespace(server_ns)
            say(
                f"lab switch {switch.name} at {switch.address}: cabling {n} ports on VLAN {PROVISIONING_VLAN}"
            )
            for i in range(1, n + 1):
                lab_switch.add_port(
                    switch, f"swp{i}", server_ns, peer_interface=f"p{i}", vlan=PROVISIONING_VLAN
                )

            server_type = H100_8X_TYPE

            def node(site: str, i: int) -> dict:
                entry = {
                    "name": f"{site}-{i:03d}",
                    "server_type": site,
                    "site": site,
                    "rack": "r1",
                    "boot_mac": f"52:54:00:{1 if site == 'net' else 2:02x}:{i >> 8:02x}:{i & 255:02x}",
                    "bmc": {
                        "protocol": "fake",
                        "address": f"fake-{site}-{i}",
                        "port": 623,
                        "username": "admin",
                        "password": "bench-bmc-pw",
                    },
                }
                if site == "net":
                    entry["switch"] = {"name": switch.name, "port": f"swp{i}"}
                return entry

            # the Switch row first: the managed site's nodes must find their switch registered
            record = Switch(
                name=switch.name,
                driver="linux",
                address=switch.address,
                port=lab_switch.SSH_PORT,
                username=lab_switch.SSH_USER,
            )
            record.private_key = switch.private_key
            record.save()
            enroll(
                {
                    "sites": [
                        {
                            "slug": "net",
                            "name": "Managed network",
                            "racks": ["r1"],
                            "network": {
                                "provisioning_vlan": PROVISIONING_VLAN,
                                "cleaning_vlan": PROVISIONING_VLAN,
                                "quarantine_vlan": 4000,
                                "tenant_vlans": "1000-1099",
                                "tenant_supernet": "198.19.128.0/20",
                                "tenant_prefix": 24,
                                "public_range": "198.19.252.0/24",
                            },
                        },
                        {"slug": "plain", "name": "Unmanaged network", "racks": ["r1"]},
                    ],
                    "server_types": [{"slug": "net", **server_type}, {"slug": "plain", **server_type}],
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
                    "nodes": [node("net", i) for i in range(1, n + 1)]
                    + [node("plain", i) for i in range(1, n + 1)],
                },
                actor=Actor.system("bench"),
            )
            Switch.objects.filter(pk=record.pk).update(site=Site.objects.get(slug="net"))
            user = User.objects.create_user("bench")
            org = Organization.objects.create(name="Bench", slug="bench", server_quota=4 * n)
            Membership.objects.create(organization=org, user=user, role="owner")
            _, public = generate_keypair("ed25519")
            parsed = parse_public_key(public)
            key = SSHKey.objects.create(
                organization=org, name="k", public_key=parsed.line, fingerprint=parsed.fingerprint
            )
            image = Image.objects.get(slug="ubuntu-24.04")
            actor = Actor(user=user, label="bench")

            def until(done, what: str) -> None:
                deadline = time.monotonic() + args.timeout
                while not done():
                    bad = Node.objects.filter(state__in=[NodeState.ERROR, NodeState.QUARANTINED]).first()
                    if bad is not None:
                        raise SystemExit(f"bench failed: {bad.name} is {bad.state}: {bad.state_reason}")
                    if time.monotonic() > deadline:
                        raise SystemExit(f"bench failed: {what} did not happen within {args.timeout:.0f} s")
                    time.sleep(0.1)

            def timeline(reservation, booked_at, kind: str = "provision") -> str:
                """Where the time went: per step, when the first server reached it and the last one finished
                it (seconds after booking), and each server's time at it (finished - reached: waiting on
                the switch included), median/max; then each switch session (a batch's leader's line)."""
                steps: dict[str, list[tuple[float, float]]] = {}
                for operation in Operation.objects.filter(reservation=reservation, kind=kind):
                    rows = list(Step.objects.filter(operation=operation).order_by("index"))
                    reached = operation.started_at or operation.created_at
                    for row in rows:
                        if row.finished_at is None:
                            continue
                        steps.setdefault(row.name, []).append(
                            (
                                (reached - booked_at).total_seconds(),
                                (row.finished_at - booked_at).total_seconds(),
                            )
                        )
                        reached = row.finished_at
                parts = []
                for name, spans in steps.items():
                    at = sorted(f - r for r, f in spans)
                    parts.append(
                        f"{name} {min(r for r, _ in spans):.1f}-{max(f for _, f in spans):.1f} "
                        f"(at it {statistics.median(at):.2f}/{at[-1]:.2f})"
                    )
                sessions = []
                for line in (
                    LogLine.objects.filter(
                        operation__reservation=reservation,
                        operation__kind=kind,
                        step__name__in=["network_provisioning", "network_tenant", "network_cleaning"],
                        message__contains=" on VLAN ",
                    )
                    .exclude(message__contains="moved in one session")
                    .exclude(message__contains="moved and read back")
                    .select_related("step")
                    .order_by("created_at")
                ):
                    more = re.search(r"; (\d+) more port", line.message)
                    took = re.search(r"switch session ([0-9.]+) s", line.message)
                    sessions.append(
                        f"+{(line.created_at - booked_at).total_seconds():.1f} {line.step.name[8:12]} "
                        f"x{1 + int(more.group(1)) if more else 1}"
                        + (f" ({took.group(1)} s)" if took else "")
                    )
                return "; ".join(parts) + ("\n    sessions: " + ", ".join(sessions) if sessions else "")

            def cycle(site: str) -> tuple[float, float, int]:
                """Book all servers of ``site`` in one reservation; seconds to all active, switch sessions
                meanwhile; then release and the seconds until all are available again."""
                st = ServerType.objects.get(slug=site)
                sessions = switch.ssh_sessions()
                t0 = time.monotonic()
                booked_at = timezone.now()
                reservation = book_servers(org, st, n, image=image, ssh_keys=[key], actor=actor).reservation
                until(
                    lambda: Reservation.objects.filter(
                        pk=reservation.pk, state=ReservationState.ACTIVE
                    ).exists(),
                    f"all {n} {site} servers active",
                )
                active = time.monotonic() - t0
                logins = switch.ssh_sessions() - sessions
                # a batch's leader logs "<node>: switch S port P on VLAN V (why)[; k more port(s) ...]"; the
                # ports it covered and those that found their port done say "moved ..."
                batches = (
                    LogLine.objects.filter(
                        operation__reservation=reservation,
                        step__name__in=["network_provisioning", "network_tenant"],
                        message__contains=" on VLAN ",
                    )
                    .exclude(message__contains="moved in one session")
                    .exclude(message__contains="moved and read back")
                    .count()
                )
                if site == "net":
                    network = TenantNetwork.objects.get(reservation=reservation)
                    shown = lab_switch.bridge_link(switch)
                    wrong = [
                        p for p in (f"swp{i}" for i in range(1, n + 1)) if shown.get(p) != f"br{network.vlan}"
                    ]
                    if wrong:
                        raise SystemExit(f"bench failed: ports not on br{network.vlan}: {', '.join(wrong)}")
                    published = lab_switch.published_on_switch(switch)
                    want = dict(
                        NetworkAttachment.objects.filter(reservation=reservation).values_list(
                            "public_address", "private_address"
                        )
                    )
                    if any(published.get(p) != v for p, v in want.items()):
                        raise SystemExit("bench failed: the switch's NAT map lacks a public address")
                say(f"{site}: {timeline(reservation, booked_at)}")
                t1 = time.monotonic()
                released_at = timezone.now()
                release_reservation(Reservation.objects.get(pk=reservation.pk), actor=actor)
                until(
                    lambda: (
                        not Operation.objects.exclude(state__in=FINISHED_OPERATION_STATES).exists()
                        and Node.objects.filter(server_type=st, state=NodeState.AVAILABLE).count() == n
                    ),
                    f"all {n} {site} servers released and available",
                )
                released = time.monotonic() - t1
                say(f"{site} release: {timeline(reservation, released_at, 'release')}")
                if site == "net":
                    shown = lab_switch.bridge_link(switch)
                    wrong = [p for p in (f"swp{i}" for i in range(1, n + 1)) if shown.get(p) != "br100"]
                    if wrong:
                        raise SystemExit(f"bench failed: released ports not on br100: {', '.join(wrong)}")
                say(
                    f"{site}: {n} servers active in {active:.2f} s ({batches} switch sessions, {logins} SSH "
                    f"logins), released and available in {released:.2f} s"
                )
                return active, released, batches, logins

            spawn_process = spawner(procs, var)
            for _ in range(args.workers):
                spawn_process(
                    "worker",
                    sys.executable,
                    str(ROOT / "manage.py"),
                    "worker",
                    "--threads",
                    str(args.threads),
                )
            spawn_process(
                "scheduler",
                sys.executable,
                str(ROOT / "manage.py"),
                "scheduler",
                "--interval",
                "1",
                "--no-power-sync",
            )
            time.sleep(3)
            plain, managed = [], []
            for _ in range(args.rounds):
                plain.append(cycle("plain"))
                managed.append(cycle("net"))
        finally:
            stop_all(procs, var, keep=args.keep)
            if switch is not None:
                lab_switch.stop_switch(switch)
            lab_switch.destroy_server_namespace(server_ns)

    added = statistics.median(m[0] - p[0] for p, m in zip(plain, managed, strict=True))
    added_release = statistics.median(m[1] - p[1] for p, m in zip(plain, managed, strict=True))
    sessions = statistics.median(m[2] for m in managed)
    logins = statistics.median(m[3] for m in managed)
    print(
        f"{n} servers, {args.workers} worker(s) x {args.threads} threads: reserve to all active "
        f"{', '.join(f'{p[0]:.2f}' for p in plain)} s without network management, "
        f"{', '.join(f'{m[0]:.2f}' for m in managed)} s with it; release to all available "
        f"{', '.join(f'{p[1]:.2f}' for p in plain)} s / {', '.join(f'{m[1]:.2f}' for m in managed)} s "
        f"(+{added_release:.2f} s)"
    )
    print(
        f"network handover: {n} servers, +{added:.2f} s for the network (target < 5 s), {sessions:.0f} switch "
        f"sessions, {logins:.0f} SSH logins (a session per server and step: {2 * n})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
