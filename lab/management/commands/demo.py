"""``manage.py demo``: the whole product on one machine, on SQLite.

Starts the boot service/portal (gunicorn), a worker (8 threads) and the scheduler with the real drivers (Ansible,
IPMI/Redfish, PXE, SSH), brings up a 3-node lab, reserves two servers (one IPMI, one Redfish) for a demo
customer, prints progress as it happens, prints the ssh command and host-key fingerprints, logs in with
strict host-key checking to prove it, releases, waits for the wipe, and stops everything it started. The lab is
the switched one (lab.switched): the servers are deployed on the provisioning VLAN, handed over on their
reservation's own VLAN, reached by the customer through their public addresses; from inside, each pings the
other on the private network and cannot reach the boot service.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError, CommandParser

from lab.database import migrate_if_needed
from lab.management.commands.lab import start_lab, stop_lab
from provisioner.lifecycle import Actor
from provisioner.models import (
    AuditEvent,
    Image,
    LogLine,
    Membership,
    Node,
    Organization,
    Reservation,
    ServerType,
    SSHKey,
)
from provisioner.services.reservations import book_servers, release_reservation
from provisioner.sshkeys import generate_keypair, parse_public_key, ssh_command
from provisioner.states import NodeState, ReservationState
from webapp.env import database_url

ROOT = Path(settings.BASE_DIR)


class Command(BaseCommand):
    help = "Run the end-to-end demo: lab, portal, reserve -> reimage -> burn-in -> SSH -> release."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--keep", action="store_true", help="leave everything running at the end")
        parser.add_argument("--timeout", type=float, default=600)

    def handle(self, *args: Any, **opts: Any) -> None:
        if os.geteuid() != 0:
            raise CommandError("the demo needs root: lab servers get network namespaces and BMCs on port 623")
        migrate_if_needed(self.stdout.write)
        self.procs: list[subprocess.Popen] = []
        self.seen_events: set[int] = set()
        self.seen_lines: set[int] = set()
        self.log_dir = Path(settings.VAR_DIR) / "demo"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        boot_url = f"http://127.0.0.1:{opts['port']}"
        env = dict(
            os.environ,
            NEOCLOUD_DEPLOY_DRIVER="ansible",
            NEOCLOUD_BURNIN_DRIVER="ansible",
            NEOCLOUD_BOOT_URL=boot_url,
            DATABASE_URL=database_url(settings.DATABASES["default"]),
            DJANGO_SETTINGS_MODULE="webapp.settings",
        )
        settings.NEOCLOUD_DEPLOY_DRIVER = settings.NEOCLOUD_BURNIN_DRIVER = "ansible"
        try:
            self.step("Starting the portal/boot service (gunicorn), a worker (8 threads) and the scheduler")
            # the README's production server, and the README's fixed worker set: one worker process runs
            # operations on threads, and waits (the agents streaming, the OS booting) hold none
            self.spawn(
                env,
                "web",
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                str(ROOT / "webapp" / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{opts['port']}",
                "--workers",
                "2",
                "webapp.wsgi",
                manage=False,
            )
            self.spawn(env, "worker", "worker", "--threads", "8")
            self.spawn(env, "scheduler", "scheduler", "--interval", "0.5")
            self.wait_http(boot_url)
            self.step(
                "Starting the lab: 3 simulated H100 servers with real IPMI/Redfish BMCs, cabled to a lab switch"
            )
            specs = start_lab(3, boot_url=boot_url, switch=True)
            for s in specs:
                self.say(
                    f"  {s.name}: {s.bmc_protocol} BMC at {s.bmc_address}:{s.bmc_port}, MAC {s.mac}, "
                    f"cabled to {s.switch_name} {s.switch_port}"
                )
            customer, key, private_path = self.demo_customer()
            self.step(f"Portal: {boot_url}/  (demo customer: demo / demo-password-1)")
            reservation = book_servers(
                customer,
                ServerType.objects.get(slug="h100-8x"),
                2,
                image=Image.objects.get(slug="neocloud-demo-linux"),
                ssh_keys=[key],
                actor=Actor(user=User.objects.get(username="demo"), label="demo"),
                name="demo training run",
            ).reservation
            nodes = list(Node.objects.filter(reservation=reservation).order_by("name"))
            self.step(f"Reserved {', '.join(f'{n.name} ({n.bmc_protocol})' for n in nodes)}: provisioning")
            self.follow(reservation, nodes, ReservationState.ACTIVE, opts["timeout"])
            self.show_access(nodes, private_path)
            self.step("Releasing: wipe and return to the pool")
            release_reservation(
                reservation, actor=Actor(user=User.objects.get(username="demo"), label="demo")
            )
            self.follow(reservation, nodes, ReservationState.RELEASED, opts["timeout"])
            for n in nodes:
                self.check_wiped(n)
            self.step(
                "Demo complete: every server went reserve -> deploy -> burn-in -> active -> release -> available"
            )
            if opts["keep"]:
                self.say(f"Leaving everything running (--keep). Portal: {boot_url}/ ; Ctrl-C to stop.")
                signal.sigwait({signal.SIGINT, signal.SIGTERM})
        finally:
            self.say("Stopping the lab and the processes the demo started")
            stop_lab()
            for proc in self.procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc in self.procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

    # --- helpers -------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def step(self, text: str) -> None:
        self.say(self.style.MIGRATE_HEADING(f"==> {text}"))

    def spawn(self, env: dict[str, str], name: str, *args: str, manage: bool = True) -> None:
        """Start ``manage.py <args>`` (or, with ``manage=False``, the command ``args``) in the background."""
        log = open(self.log_dir / f"{name}.log", "w")  # noqa: SIM115 - lives as long as the process
        self.procs.append(
            subprocess.Popen(
                [sys.executable, str(ROOT / "manage.py"), *args] if manage else list(args),
                env=env,
                cwd=ROOT,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )

    def wait_http(self, url: str) -> None:
        import urllib.request

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{url}/boot/deploy/vmlinuz", timeout=1).read()  # noqa: S310 - loopback
                return
            except OSError:
                time.sleep(0.3)
        raise CommandError(f"the web server did not start; see {self.log_dir / 'web.log'}")

    def demo_customer(self) -> tuple[Organization, SSHKey, Path]:
        user, created = User.objects.get_or_create(username="demo", defaults={"email": "demo@example.com"})
        if created:
            user.set_password("demo-password-1")
            user.save()
        org, _ = Organization.objects.get_or_create(
            slug="demo", defaults={"name": "Demo AI Lab", "server_quota": 8}
        )
        Membership.objects.get_or_create(
            organization=org, user=user, defaults={"role": Membership.Role.OWNER}
        )
        private_path = self.log_dir / "id_ed25519"
        if not private_path.exists():
            private, public = generate_keypair("ed25519", comment="demo@neocloud")
            private_path.touch(mode=0o600)
            private_path.write_text(private)
            (self.log_dir / "id_ed25519.pub").write_text(public + "\n")
        parsed = parse_public_key((self.log_dir / "id_ed25519.pub").read_text())
        key, _ = SSHKey.objects.get_or_create(
            organization=org,
            fingerprint=parsed.fingerprint,
            defaults={"name": "demo laptop", "public_key": parsed.line, "created_by": user},
        )
        return org, key, private_path

    def follow(self, reservation: Reservation, nodes: list[Node], target: str, timeout: float) -> None:
        seen_events, seen_lines = self.seen_events, self.seen_lines
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in AuditEvent.objects.filter(node__in=nodes, action="transition").order_by("id"):
                if ev.pk not in seen_events:
                    seen_events.add(ev.pk)
                    self.say(f"  {ev.node}: {ev.from_state} -> {ev.to_state}  ({ev.reason[:90]})")
            for line in LogLine.objects.filter(
                operation__node__in=nodes, message__startswith="TASK ["
            ).order_by("id"):
                if line.pk not in seen_lines:
                    seen_lines.add(line.pk)
                    self.say(f"      {line.operation.node.name} {line.message}")
            reservation.refresh_from_db()
            if reservation.state == target and all(
                Node.objects.get(pk=n.pk).state
                in (NodeState.ACTIVE if target == ReservationState.ACTIVE else NodeState.AVAILABLE,)
                for n in nodes
            ):
                return
            failed = [
                n
                for n in nodes
                if Node.objects.get(pk=n.pk).state in (NodeState.ERROR, NodeState.QUARANTINED)
            ]
            if failed:
                raise CommandError(
                    f"{failed[0].name} ended in {Node.objects.get(pk=failed[0].pk).state}: "
                    f"{Node.objects.get(pk=failed[0].pk).state_reason}; logs in {self.log_dir}"
                )
            time.sleep(0.5)
        raise CommandError(f"timed out waiting for the reservation to be {target}; logs in {self.log_dir}")

    def show_access(self, nodes: list[Node], private_path: Path) -> None:
        from provisioner import networking
        from provisioner.handover import run_command

        reservation_id = nodes[0].reservation_id if nodes else None
        networks = networking.reservation_networks(reservation_id) if reservation_id else []
        for network in networks:
            self.step(
                f"Private network {network['cidr']} (gateway {network['gateway']}), the reservation's own VLAN"
            )
        private: dict[str, str] = {}
        for network in networks:
            servers: list[dict[str, str]] = network["servers"]  # type: ignore[assignment]
            private.update({server["name"]: server["private_address"] for server in servers})
        for n in nodes:
            n.refresh_from_db()
            report = n.burnin_reports.first()
            self.step(f"{n.name} is yours")
            address, port, _known_hosts = networking.customer_endpoint(n) or (n.ssh_address, n.ssh_port, "")
            self.say(f"  {ssh_command(n.ssh_user, address, port, identity=str(private_path))}")
            for kind, fp in n.host_key_fingerprints.items():
                self.say(f"  host key {kind}: {fp}")
            if report:
                self.say(f"  burn-in: {report.summary}")
            # from inside: its peers answer on the private network; the boot service does not
            peers = [a for name, a in private.items() if name != n.name]
            probes = "".join(
                f"; ping -c1 -W2 {target} >/dev/null 2>&1 && echo '{target} answers' || echo '{target} unreachable'"
                for target in [*peers, "198.18.0.1"]
            )
            status, out, err = run_command(
                address,
                port,
                n.ssh_user,
                private_path.read_text(),
                n.host_key_fingerprints,
                "hostname; ip -4 -o addr show scope global | awk '{print $4}' | paste -sd ' '" + probes,
                30,
            )
            lines = out.strip().splitlines()
            seen = f"{lines[0]} at {lines[1] if len(lines) > 1 else 'no address'}" if lines else err.strip()
            self.say(f"  logged in at {address} with strict host-key checking (exit {status}): {seen}")
            for line in lines[2:]:
                self.say(f"  from {n.name}: {line}")
            if private and (
                any(f"{peer} answers" not in lines for peer in peers) or "198.18.0.1 unreachable" not in lines
            ):
                raise CommandError(
                    f"{n.name}: the private network or its isolation is not as it should be: {lines}"
                )

    def check_wiped(self, node: Node) -> None:
        from lab.spec import load_specs
        from provisioner.pxe.configdrive import read_config_drive

        spec = next((s for s in load_specs(Path(settings.NEOCLOUD_LAB_DIR)) if s.name == node.name), None)
        if spec is None:
            return
        with open(spec.disk_path, "rb") as disk:
            head = disk.read(1024 * 1024)
        wiped = not any(head) and read_config_drive(spec.disk_path) is None
        self.say(f"  {node.name}: disk {'wiped (first MiB zero, no config drive)' if wiped else 'NOT wiped'}")
        if not wiped:
            raise CommandError(f"{node.name}'s disk was not wiped")
