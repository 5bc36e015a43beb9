"""Operator CLI: ``manage.py network_drift [--repair] [--node NAME ...]``: read every managed switch port back,
report the ports whose VLAN differs from what their node's state requires, and with ``--repair`` move them
back. Exit status 1 while something drifts or a switch cannot be read."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from provisioner.lifecycle import Actor
from provisioner.management.database import require_migrated_database
from provisioner.services.network_drift import check_network_drift


class Command(BaseCommand):
    help = "Check (and with --repair, fix) the VLAN of every network-managed server's switch port."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--repair", action="store_true", help="move drifting ports back to their VLAN")
        parser.add_argument("--node", action="append", dest="nodes", help="only this node (repeatable)")

    def handle(self, *args: Any, **opts: Any) -> None:
        require_migrated_database()
        report = check_network_drift(
            repair=opts["repair"], actor=Actor.system("manage.py network_drift"), node_names=opts["nodes"]
        )
        for line in report.drifting + report.unreadable:
            self.stdout.write(line)
        for name in report.repaired:
            self.stdout.write(f"{name}: repaired")
        counts = report.counts()
        self.stdout.write(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items()))
        left = len(report.drifting) - len(report.repaired) + len(report.unreadable)
        if left:
            sys.exit(1)
