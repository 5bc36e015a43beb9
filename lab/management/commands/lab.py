"""``manage.py lab up --nodes N [--kind simulated|qemu] [--no-enroll] | status [--json] | down``: the
virtual datacenter.

A simulated lab's servers reach the boot service and the image server on the provisioning network, at
198.18.0.1 (lab.provisioning_relay): the lab site's image mirror is the image server there.

A ``qemu`` lab's nodes are emulated computers (lab.qemu_firmware) on a site of their own,
``lab-qemu``, whose facts differ from the loopback lab's the way one real site's differ from another's: its
servers fetch images from the site's image mirror (the lab image server, which they reach at 10.0.2.101),
and each one's SSH is reached through a port forward (127.0.0.1:22000+index), its inventory SSH endpoint.
Cabled to the lab switch (``--switch --kind qemu``), emulated computers are on the lab site instead, reached
at their own address over the provisioning VLAN, like the simulated servers (lab.qemu_firmware).
The emulated computers boot the deploy ramdisk from the boot service's NEOCLOUD_BOOT_DIR (bootstrap.sh
builds it in var/ramdisk) and are deployed with the bootable lab OS image.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from lab import provisioning_relay, supervisor, switched
from lab import switch as lab_switch
from lab.database import migrate_if_needed
from lab.images import (
    IMAGE_SERVER_PORT,
    ensure_demo_image,
    ensure_lab_os_image,
    start_image_server,
    stop_image_server,
)
from lab.node_process import node_dir
from lab.qemu_firmware import IMAGE_SERVER_GUEST_ADDRESS
from lab.ramdisk import RamdiskBuildError
from lab.spec import LabNodeSpec
from provisioner.lifecycle import Actor
from provisioner.models import Site, Switch
from provisioner.services.inventory import enroll

ROOT = Path(settings.BASE_DIR)
QEMU_SITE = {
    "slug": "lab-qemu",
    "name": "Neocloud Lab (emulated computers)",
    "racks": ["lab-qemu-r1"],
    # the guests reach the lab image server only at this address (QEMU user networking, restrict=on)
    "image_mirror_url": f"http://{IMAGE_SERVER_GUEST_ADDRESS}",
}


def _node_placement(spec: LabNodeSpec) -> dict[str, Any]:
    """Site, rack and, for an emulated computer, the SSH endpoint (its forwarded port) of a lab node."""
    if spec.kind != "qemu" or spec.switch_port:
        # a switched emulated computer is on the lab site's switch, reached at its own address
        return {"site": "lab", "rack": "lab-r1"}
    return {
        "site": QEMU_SITE["slug"],
        "rack": QEMU_SITE["racks"][0],
        "ssh_endpoint": {"address": "127.0.0.1", "port": spec.ssh_forward_port},
    }


# A lab server's burn-in is a simulated host of its server type, quick: a second of load, short waits.
LAB_BURNIN = {
    "burnin_backend": "simulated",
    "burnin_load_seconds": 1,
    "burnin_xid_wait_seconds": 0.2,
    "burnin_sample_interval": 0.2,
}
GPU_FAULTS_FILE = "gpu_faults.json"


def lab_driver_info(spec: LabNodeSpec, lab_dir: Path) -> dict[str, Any]:
    """What the Ansible drivers need to know about a lab server, recorded with it at enrollment: its OS's
    Python and a simulated burn-in, with the GPU faults a test writes into ``<node dir>/gpu_faults.json``."""
    return {
        "python": spec.os_python(),
        **LAB_BURNIN,
        "burnin_faults_file": str(node_dir(lab_dir.absolute(), spec.name) / GPU_FAULTS_FILE),
    }


def lab_inventory(specs: list[LabNodeSpec], image: dict[str, Any], lab_dir: Path) -> dict[str, Any]:
    base = yaml.safe_load((ROOT / "inventory" / "lab.yaml").read_text())
    if any(s.kind == "qemu" and not s.switch_port for s in specs):
        base["sites"] = [*base.get("sites", []), QEMU_SITE]
    for site in base.get("sites", []):
        if site.get("slug") != "lab":
            continue
        if any(s.kind == "simulated" or s.switch_port for s in specs):
            # the simulated servers fetch images on the provisioning network (lab.provisioning_relay)
            site["image_mirror_url"] = provisioning_relay.server_url(f"http://127.0.0.1:{IMAGE_SERVER_PORT}")
        if any(s.switch_port for s in specs):
            site["network"] = switched.site_network()
    base["images"] = [image]
    base["nodes"] = [
        {
            "name": s.name,
            "serial": f"LAB{s.index:05d}",
            "server_type": s.server_type,
            **_node_placement(s),
            "boot_mac": s.mac,
            "address": s.ssh_address,
            "bmc": {
                "protocol": s.bmc_protocol,
                "address": s.bmc_address,
                "port": s.bmc_port,
                **({"scheme": s.bmc_scheme} if s.bmc_scheme else {}),
                "username": s.bmc_username,
                "password": s.bmc_password,
                "system_id": s.system_id,
            },
            "driver_info": lab_driver_info(s, lab_dir),
            **({"switch": {"name": s.switch_name, "port": s.switch_port}} if s.switch_port else {}),
        }
        for s in specs
    ]
    return base


def _post_scale(value: str) -> float:
    try:
        scale = float(value)
    except ValueError:
        scale = -1.0
    if not scale >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {value}")
    return scale


def start_lab(
    nodes: int,
    *,
    protocols: str = "mixed",
    do_enroll: bool = True,
    boot_url: str = "",
    kind: str = "simulated",
    post_scale: float | None = None,
    switch: bool = False,
) -> list[LabNodeSpec]:
    """Start (or keep) the lab (``switch``: the switched topology, lab.switched, its switch registered) and enroll its nodes with the image they are deployed with (``post_scale``:
    the servers' power-on self-test time scale, lab.post; None: NEOCLOUD_LAB_POST_SCALE or its default).

    :raises supervisor.LabError: a node did not start, or emulated computers would find no deploy ramdisk.
    """
    lab_dir = Path(settings.NEOCLOUD_LAB_DIR)
    lab_dir.mkdir(parents=True, exist_ok=True)
    if kind == "qemu":
        missing = [
            n for n in ("vmlinuz", "initrd.img") if not (Path(settings.NEOCLOUD_BOOT_DIR) / n).exists()
        ]
        if missing:
            raise supervisor.LabError(
                f"emulated computers boot the deploy ramdisk, but NEOCLOUD_BOOT_DIR ({settings.NEOCLOUD_BOOT_DIR}) "
                f"has no {' or '.join(missing)}: run scripts/bootstrap.sh and set NEOCLOUD_BOOT_DIR=var/ramdisk"
            )
    specs = supervisor.up(
        nodes,
        lab_dir,
        boot_url or settings.NEOCLOUD_BOOT_URL,
        protocols,
        kind=kind,
        post_scale=post_scale,
        switch=switch,
    )
    image_dir = Path(settings.NEOCLOUD_IMAGE_DIR)
    image = ensure_lab_os_image(image_dir) if kind == "qemu" else ensure_demo_image(image_dir)
    start_image_server(Path(settings.NEOCLOUD_IMAGE_DIR), lab_dir)
    if do_enroll:
        inventory = lab_inventory(specs, image, lab_dir)
        path = lab_dir / "inventory.yaml"
        path.touch(mode=0o600)
        path.write_text(yaml.safe_dump(inventory))
        enroll(inventory, actor=Actor.system("lab"))
        if switch:
            register_lab_switch(lab_dir)
    return specs


def register_lab_switch(lab_dir: Path) -> Switch:
    """Record the running lab switch (driver linux, its management address, root with the switch's own key)
    so that the switch driver of its nodes' cabling can log in. Idempotent.

    :raises supervisor.LabError: the lab switch is not running.
    """
    running = switched.running_switch(lab_dir)
    if running is None:
        raise supervisor.LabError("the lab switch is not running: start the lab with --switch")
    switch, _ = Switch.objects.get_or_create(
        name=running.name, defaults={"address": running.address, "username": lab_switch.SSH_USER}
    )
    switch.site = Site.objects.filter(slug="lab").first()
    switch.driver = "linux"
    switch.address = running.address
    switch.port = lab_switch.SSH_PORT
    switch.username = lab_switch.SSH_USER
    switch.password = ""
    switch.private_key = running.private_key
    switch.save()
    return switch


def stop_lab() -> None:
    from lab.netns import teardown_all

    lab_dir = Path(settings.NEOCLOUD_LAB_DIR)
    supervisor.down(lab_dir)
    stop_image_server(lab_dir)
    # The namespaces nclab-* are every lab's: while another lab's nodes run (this one never started, refused
    # because of it), they are that lab's network, not leftovers of this one.
    if not supervisor.other_labs(lab_dir):
        teardown_all("nclab-")


def _node_count(text: str) -> int:
    """--nodes: refused by argparse (a clear usage error) unless the lab can hold that many."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= supervisor.MAX_NODES:
        raise argparse.ArgumentTypeError(f"the lab holds 1 to {supervisor.MAX_NODES} nodes, not {text}")
    return n


class Command(BaseCommand):
    help = "Start, inspect and stop the lab: simulated GPU servers with real IPMI/Redfish BMCs and sshd."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        up = sub.add_parser("up", help="start the lab (idempotent)")
        up.add_argument("--nodes", type=_node_count, default=4)
        up.add_argument("--protocols", choices=["mixed", "ipmi", "redfish"], default="mixed")
        up.add_argument(
            "--kind",
            choices=["simulated", "qemu"],
            default="simulated",
            help="simulated servers, or emulated computers (QEMU, TCG) that PXE-boot and run a real OS",
        )
        up.add_argument(
            "--switch",
            action="store_true",
            help="cable every server to the lab switch lab-leaf1 (VLANs, tenant networks, public addresses; "
            "emulated computers through a tap, with DHCP on the provisioning VLAN)",
        )
        up.add_argument("--boot-url", default="", help="where lab firmware finds the boot service")
        up.add_argument("--no-enroll", action="store_true", help="do not enroll the nodes into Neocloud")
        up.add_argument(
            "--post-scale",
            type=_post_scale,
            default=None,
            help="time scale of the servers' power-on self-test (1: real, 240 s for 8x H100; 0.1: 24 s; "
            "0: none); default NEOCLOUD_LAB_POST_SCALE or 0.1",
        )
        st = sub.add_parser("status")
        st.add_argument(
            "--json", action="store_true", help="machine-readable, with the lab's BMC credentials"
        )
        sub.add_parser("down", help="stop every lab process and remove the lab's network namespaces")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            if opts["action"] == "up":
                if not opts["no_enroll"]:
                    migrate_if_needed(self.stdout.write)
                specs = start_lab(
                    opts["nodes"],
                    protocols=opts["protocols"],
                    do_enroll=not opts["no_enroll"],
                    boot_url=opts["boot_url"],
                    kind=opts["kind"],
                    post_scale=opts["post_scale"],
                    switch=opts["switch"],
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
                            f"post={r['post']:<8} {'running' if r['alive'] else 'stopped'}"
                        )
        except (supervisor.LabError, RamdiskBuildError) as exc:
            raise CommandError(str(exc))
