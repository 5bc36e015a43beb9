"""``manage.py lab up --nodes N [--enroll] | status [--json] | down``: the virtual datacenter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from provisioner.lab import supervisor
from provisioner.lab.images import ensure_demo_image, start_image_server, stop_image_server
from provisioner.lab.spec import LabNodeSpec
from provisioner.services.audit import Actor
from provisioner.services.inventory import enroll

ROOT = Path(settings.BASE_DIR)


def lab_inventory(specs: list[LabNodeSpec], image: dict[str, Any]) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "inventory" / "lab.yaml").read_text())
    base["images"] = [image]
    base["nodes"] = [
        {
            "name": s.name,
            "serial": f"LAB{s.index:05d}",
            "server_type": s.server_type,
            "site": "lab",
            "rack": "lab-r1",
            "boot_mac": s.mac,
            "address": s.ssh_address,
            "bmc": {
                "protocol": s.bmc_protocol,
                "address": s.bmc_address,
                "port": s.bmc_port,
                "username": s.bmc_username,
                "password": s.bmc_password,
                "system_id": s.system_id,
            },
        }
        for s in specs
    ]
    return base


def start_lab(
    nodes: int, *, protocols: str = "mixed", do_enroll: bool = True, boot_url: str = ""
) -> list[LabNodeSpec]:
    lab_dir = Path(settings.NEOCLOUD_LAB_DIR)
    lab_dir.mkdir(parents=True, exist_ok=True)
    specs = supervisor.up(nodes, lab_dir, boot_url or settings.NEOCLOUD_BOOT_URL, protocols)
    image = ensure_demo_image(Path(settings.NEOCLOUD_IMAGE_DIR))
    start_image_server(Path(settings.NEOCLOUD_IMAGE_DIR), lab_dir)
    if do_enroll:
        inventory = lab_inventory(specs, image)
        path = lab_dir / "inventory.yaml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(inventory))
        enroll(inventory, actor=Actor.system("lab"))
    return specs


def stop_lab() -> None:
    from provisioner.lab.netns import teardown_all

    lab_dir = Path(settings.NEOCLOUD_LAB_DIR)
    supervisor.down(lab_dir)
    stop_image_server(lab_dir)
    teardown_all("nclab-")


class Command(BaseCommand):
    help = "Start, inspect and stop the lab: simulated GPU servers with real IPMI/Redfish BMCs and sshd."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        up = sub.add_parser("up", help="start the lab (idempotent)")
        up.add_argument("--nodes", type=int, default=4)
        up.add_argument("--protocols", choices=["mixed", "ipmi", "redfish"], default="mixed")
        up.add_argument("--boot-url", default="", help="where lab firmware finds the boot service")
        up.add_argument("--no-enroll", action="store_true", help="do not enroll the nodes into Neocloud")
        st = sub.add_parser("status")
        st.add_argument(
            "--json", action="store_true", help="machine-readable, with the lab's BMC credentials"
        )
        sub.add_parser("down", help="stop every lab process and remove the lab's network namespaces")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            if opts["action"] == "up":
                specs = start_lab(
                    opts["nodes"],
                    protocols=opts["protocols"],
                    do_enroll=not opts["no_enroll"],
                    boot_url=opts["boot_url"],
                )
                self.stdout.write(f"lab up: {len(specs)} nodes ({', '.join(s.bmc_protocol for s in specs)})")
            elif opts["action"] == "down":
                stop_lab()
                self.stdout.write("lab down: no lab process left")
            else:
                rows = supervisor.status(Path(settings.NEOCLOUD_LAB_DIR))
                if opts["json"]:
                    self.stdout.write(json.dumps(rows, indent=2))
                else:
                    for r in rows:
                        self.stdout.write(
                            f"{r['name']:<14} {r['protocol']:<8} {r['address']}:{r['port']:<5} power={r['power']:<7} "
                            f"{'running' if r['alive'] else 'stopped'}"
                        )
        except supervisor.LabError as exc:
            raise CommandError(str(exc))
