"""An emulated computer deployed end to end through the real boot service.

QEMU (TCG, never KVM) network-boots Debian's iPXE ROM. Slirp's DHCP hands it the bootfile
``http://10.0.2.100/boot/${mac:hexhyp}.ipxe``, and guestfwd relays 10.0.2.100:80 to the Django live server:
``GET /boot/<mac>.ipxe`` claims the node's deploy ticket and answers our script with a fresh one-time token,
then the same service serves the real deploy kernel and initrd (NEOCLOUD_BOOT_DIR, built by
lab.ramdisk). In the ramdisk the agent fetches its instructions with the token, streams the
image from our image server (10.0.2.101:80, relayed), checks its sha256, writes the config drive to the
virtio disk and posts its result, then the ramdisk powers the computer off.
"""

from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lab.qemu import GuestForward, QemuComputer, qemu_available
from lab.ramdisk import ensure_ramdisk
from provisioner.pxe.agent import fingerprint
from provisioner.pxe.configdrive import read_config_drive
from provisioner.pxe.images import build_demo_image
from provisioner.pxe.imageserver import ImageServer

BOOT_HOST = "10.0.2.100"
IMAGE_HOST = "10.0.2.101"
NODE = "node-h100-8x-01"  # boot MAC 52:54:00:00:00:01 in the inventory fixture
DEADLINE = 300.0

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86 and ipxe-qemu are needed"),
]


def test_emulated_computer_pxe_boots_and_the_agent_deploys_through_the_boot_service(
    transactional_db, inventory, live_server, settings, client, tmp_path: Path
) -> None:
    from provisioner.boot import tickets
    from provisioner.engine.queue import create_operation
    from provisioner.models import DeployTicket, Node

    ramdisk = ensure_ramdisk()
    settings.NEOCLOUD_BOOT_DIR = ramdisk.directory
    images = tmp_path / "images"
    sha256, size = build_demo_image(images / "demo.raw", 16)
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)

    node = Node.objects.get(name=NODE)
    customer_key = inventory.key.public_key
    instructions = {
        "action": "deploy",
        "node": node.name,
        "image": {"url": f"http://{IMAGE_HOST}/demo.raw", "sha256": sha256, "format": "raw", "size": size},
        "config": {
            "hostname": "gpu-box-1",
            "authorized_keys": [customer_key],
            "network": {"address": "198.18.0.11", "prefix": 15},
        },
    }
    ticket = tickets.open_ticket(node, create_operation("provision", node), instructions)

    live_port = urlsplit(live_server.url).port
    assert live_port is not None
    with ImageServer(images) as image_server:
        computer = QemuComputer(
            workdir=tmp_path / "qemu",
            mac=node.boot_mac,
            disk=disk,
            forwards=[
                GuestForward(BOOT_HOST, 80, live_port),
                GuestForward(IMAGE_HOST, 80, image_server.port),
            ],
            bootfile=f"http://{BOOT_HOST}/boot/${{mac:hexhyp}}.ipxe",
        )
        started = time.monotonic()
        with computer:
            exit_code = computer.wait(DEADLINE)
        elapsed = time.monotonic() - started
    console = computer.console()

    assert exit_code == 0, f"the computer did not power itself off in {DEADLINE:.0f} s:\n{console[-4000:]}"
    # Real iPXE fetched our script, and the kernel that ran is Debian's, fetched from the boot service.
    assert f"{node.boot_mac.replace(':', '-')}.ipxe" in console
    assert f"Linux version {ramdisk.kernel_version}" in console
    assert "neocloud-ramdisk: agent exited with status 0" in console, console[-4000:]
    # The kernel printed its command line; the console log masks the one-time token in it.
    assert "neocloud.token=***" in console and not re.search(r"neocloud\.token=(?!\*\*\*)", console)

    ticket = DeployTicket.objects.get(pk=ticket.pk)
    assert ticket.script_served_at is not None and ticket.instructions_fetched_at is not None
    assert ticket.result_at is not None
    result = ticket.result
    assert result["status"] == "ok", result
    assert result["sha256"] == sha256 and result["bytes_written"] == size
    assert ticket.progress["stage"] == "configdrive" and ticket.progress["percent"] == 100

    with open(disk, "rb") as fh:
        assert hashlib.sha256(fh.read(size)).hexdigest() == sha256
    drive = read_config_drive(str(disk))
    assert drive is not None
    assert drive["hostname"] == "gpu-box-1"
    assert drive["authorized_keys"] == [customer_key]
    assert drive["network"] == {"address": "198.18.0.11", "prefix": 15}
    assert drive["image"]["sha256"] == sha256
    # The host keys the agent reported are the ones it wrote for the node's sshd.
    written = {kind: pair["public"] for kind, pair in drive["host_keys"].items()}
    assert result["host_keys"] == written
    assert result["host_key_fingerprints"] == {kind: fingerprint(line) for kind, line in written.items()}

    # The deploy is over: the next network boot of this MAC is told to boot its disk.
    again = client.get(f"/boot/{node.boot_mac}.ipxe")
    assert again.status_code == 200 and "exit" in again.content.decode()
    print(f"QEMU computer PXE-booted and deployed {size} bytes in {elapsed:.1f} s (TCG)")
