"""Operator CLI: ``manage.py nodes list|show NAME|enroll FILE|maintain NAME|unmaintain NAME``."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from provisioner.errors import NeocloudError
from provisioner.models import AuditEvent, Node
from provisioner.services import nodes as node_services
from provisioner.services.audit import Actor
from provisioner.services.inventory import enroll_file
from provisioner.sshkeys import ssh_command


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
        for name in ("maintain", "unmaintain"):
            p = sub.add_parser(name)
            p.add_argument("name")
            p.add_argument("--reason", default="")

    def handle(self, *args: Any, **opts: Any) -> None:
        actor = Actor.system("cli")
        try:
            getattr(self, f"do_{opts['action']}")(opts, actor)
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

    def do_maintain(self, opts: dict[str, Any], actor: Actor) -> None:
        node_services.set_maintenance(self._node(opts["name"]), True, actor=actor, reason=opts["reason"])
        self.stdout.write(f"{opts['name']}: maintenance")

    def do_unmaintain(self, opts: dict[str, Any], actor: Actor) -> None:
        node_services.set_maintenance(self._node(opts["name"]), False, actor=actor, reason=opts["reason"])
        self.stdout.write(f"{opts['name']}: back from maintenance (being wiped, then available)")
