"""Operator CLI: ``manage.py nodes list|show NAME|enroll FILE|sync-netbox|maintain NAME [--when-free]|unmaintain NAME``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from provisioner import hardware
from provisioner.errors import NeocloudError
from provisioner.lifecycle import Actor
from provisioner.management.argtypes import positive_seconds
from provisioner.management.database import require_migrated_database
from provisioner.models import AuditEvent, Node
from provisioner.services import netbox
from provisioner.services import nodes as node_services
from provisioner.services.inventory import enroll_file
from provisioner.sshkeys import ssh_command
from provisioner.states import NodeState


class Command(BaseCommand):
    help = "List nodes, show a node's history, enroll nodes from an inventory YAML file, maintenance."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        ls = sub.add_parser("list", help="nodes with state and power")
        ls.add_argument("--state")
        ls.add_argument("--json", action="store_true")
        show = sub.add_parser("show", help="a node and its history")
        show.add_argument("name")
        enroll = sub.add_parser("enroll", help="enroll sites, server types, images and nodes from YAML")
        enroll.add_argument("file")
        nb = sub.add_parser(
            "sync-netbox",
            help="sync sites, racks and GPU servers from NetBox (exit status 1 when a device is skipped)",
        )
        nb.add_argument("--url", help="NetBox's web root (default: NEOCLOUD_NETBOX_URL)")
        nb.add_argument(
            "--token-file",
            help="file holding the API token (default: NEOCLOUD_NETBOX_TOKEN_FILE or NEOCLOUD_NETBOX_TOKEN)",
        )
        nb.add_argument(
            "--credentials",
            help="BMC credentials file for new nodes (inventory/netbox-credentials.example.yaml)",
        )
        nb.add_argument("--role", help="device role slug of GPU servers (default: NEOCLOUD_NETBOX_ROLE)")
        nb.add_argument("--dry-run", action="store_true", help="report the plan, write nothing")
        nb.add_argument("--timeout", type=positive_seconds, default=30.0, help="seconds per NetBox request")
        nb.add_argument("--verbose-unchanged", action="store_true", help="also list unchanged devices")
        for name in ("maintain", "unmaintain"):
            p = sub.add_parser(name)
            p.add_argument("name")
            p.add_argument("--reason", default="")
            if name == "maintain":
                p.add_argument(
                    "--when-free",
                    action="store_true",
                    help="a server a customer holds (or being prepared or wiped): on hold once free and wiped",
                )

    def handle(self, *args: Any, **opts: Any) -> None:
        require_migrated_database()
        actor = Actor.system("cli")
        try:
            getattr(self, f"do_{opts['action'].replace('-', '_')}")(opts, actor)
        except NeocloudError as exc:
            raise CommandError(str(exc))

    def _node(self, name: str) -> Node:
        try:
            return Node.objects.select_related("server_type", "owner").get(name=name)
        except Node.DoesNotExist:
            raise CommandError(f"no node named {name!r}")

    def do_list(self, opts: dict[str, Any], actor: Actor) -> None:
        nodes = Node.objects.select_related("server_type", "owner").order_by("name")
        if opts["state"]:
            nodes = nodes.filter(state=opts["state"])
        rows = [
            {
                "name": n.name,
                "type": n.server_type.slug,
                "state": n.state,
                "power": n.power_state,
                "bmc": f"{n.bmc_protocol}://{n.bmc_address}:{n.bmc_port}",
                "owner": n.owner.slug if n.owner else "",
            }
            for n in nodes
        ]
        if opts["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        header = f"{'NAME':<18} {'TYPE':<12} {'STATE':<12} {'POWER':<8} {'OWNER':<14} BMC"
        self.stdout.write(header)
        for r in rows:
            self.stdout.write(
                f"{r['name']:<18} {r['type']:<12} {r['state']:<12} {r['power']:<8} {r['owner']:<14} {r['bmc']}"
            )

    def do_show(self, opts: dict[str, Any], actor: Actor) -> None:
        n = self._node(opts["name"])
        self.stdout.write(f"{n.name}  {n.server_type.name}  state={n.state}  power={n.power_state}")
        self.stdout.write(f"  BMC {n.bmc_protocol}://{n.bmc_address}:{n.bmc_port}  MAC {n.boot_mac}")
        if n.ssh_address:
            login = ssh_command(n.ssh_user, n.ssh_address, n.ssh_port)
            self.stdout.write(f"  {login}  {json.dumps(n.host_key_fingerprints)}")
        self.stdout.write(
            f"  Drivers: power {n.bmc_protocol}, deploy {hardware.deploy_driver_name(n.server_type)}, "
            f"burn-in {hardware.burnin_driver_name(n.server_type)}"
        )
        problems = hardware.pool_problems(n)
        if problems:
            self.stdout.write("  Validation FAILED (not offered to reservations until fixed):")
            for interface, err in problems.items():
                self.stdout.write(f"    {interface}: {err.field}: {err.reason}")
        else:
            self.stdout.write("  Validation: passes its drivers' checks")
        self.stdout.write("History:")
        for ev in AuditEvent.objects.filter(node=n).order_by("created_at", "id"):
            arrow = f"{ev.from_state} -> {ev.to_state}" if ev.to_state else ev.action
            self.stdout.write(
                f"  {ev.created_at:%Y-%m-%d %H:%M:%S}  {arrow:<28} {ev.actor_label:<24} {ev.reason}"
            )

    def do_enroll(self, opts: dict[str, Any], actor: Actor) -> None:
        counts = enroll_file(opts["file"], actor=actor)
        self.stdout.write(
            f"enrolled: {counts['nodes_created']} new node(s), {counts['nodes_updated']} updated, "
            f"{counts['server_types']} server type(s), {counts['images']} image(s)"
        )

    def do_sync_netbox(self, opts: dict[str, Any], actor: Actor) -> None:
        src = netbox.source(
            url=opts["url"],
            token_file=opts["token_file"],
            credentials_file=opts["credentials"],
            role=opts["role"],
        )
        api = netbox.connect(src.url, src.token, timeout=opts["timeout"])
        report = netbox.sync(
            api, actor=actor, credentials=src.credentials, dry_run=opts["dry_run"], role=src.role
        )
        head = "NetBox sync, dry run (nothing written)" if report.dry_run else "NetBox sync"
        self.stdout.write(f"{head}: {netbox.where(src.url)}, role {src.role}")
        for place in report.places:
            self.stdout.write(f"  {place}")
        for note in report.notes:
            self.stdout.write(f"  note: {note}")
        for r in report.results:
            if r.outcome != "unchanged" or opts["verbose_unchanged"]:
                self.stdout.write(
                    f"  {r.outcome:<11} {r.device}: {r.message}"
                    if r.message
                    else f"  {r.outcome:<11} {r.device}"
                )
        self.stdout.write(f"{report.summary()}" + ("" if report.changed else "; nothing to change"))
        if not report.ok:
            raise CommandError(f"{report.count('skipped')} device(s) skipped; see the reasons above")

    def do_maintain(self, opts: dict[str, Any], actor: Actor) -> None:
        node = node_services.set_maintenance(
            self._node(opts["name"]), True, actor=actor, reason=opts["reason"], when_free=opts["when_free"]
        )
        if node.state == NodeState.MAINTENANCE:
            self.stdout.write(f"{node.name}: maintenance")
        else:
            self.stdout.write(
                f"{node.name}: {node.state}; on hold once it is free and wiped (no new bookings)"
            )

    def do_unmaintain(self, opts: dict[str, Any], actor: Actor) -> None:
        was = self._node(opts["name"])
        node = node_services.set_maintenance(was, False, actor=actor, reason=opts["reason"])
        if was.state != NodeState.MAINTENANCE:
            self.stdout.write(f"{node.name}: {node.state}; hold request withdrawn")
        else:
            self.stdout.write(f"{node.name}: back from maintenance (being wiped, then available)")
