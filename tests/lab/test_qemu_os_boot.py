"""An emulated computer deployed with a bootable OS image boots it from its disk and serves SSH with the host
keys the boot service recorded.

The deploy is the one of test_qemu_deploy.py (QEMU under TCG, Debian's iPXE ROM, the Django boot service,
the agent in the deploy ramdisk), with the lab OS image of lab.osimage instead of a plain file
system. Then the computer starts again with the disk first: SeaBIOS runs SYSLINUX from the image, Debian's
kernel boots, the first-boot step applies the config drive, and Debian's sshd answers on a host-forwarded
loopback port. The client trusts only the host keys from the agent's result (StrictHostKeyChecking=yes)
and logs in as root with the customer's key.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lab.osimage import ensure_os_image
from lab.qemu import GuestForward, QemuComputer, qemu_available
from lab.ramdisk import ensure_ramdisk
from provisioner.pxe.imageserver import ImageServer
from tests.conftest import ssh_keygen, wait_for

BOOT_HOST = "10.0.2.100"
IMAGE_HOST = "10.0.2.101"
NODE = "node-h100-8x-02"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86 and ipxe-qemu are needed"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_deployed_os_image_boots_from_disk_and_serves_ssh_with_the_reported_host_keys(
    transactional_db, inventory, live_server, settings, tmp_path: Path
) -> None:
    from provisioner.boot import tickets
    from provisioner.engine.queue import create_operation
    from provisioner.models import DeployTicket, Node

    settings.NEOCLOUD_BOOT_DIR = ensure_ramdisk().directory
    image = ensure_os_image()
    _, public_key = ssh_keygen(tmp_path, kind="ed25519", name="customer")
    private_key = tmp_path / "customer"
    node = Node.objects.get(name=NODE)
    ticket = tickets.open_ticket(
        node,
        create_operation("provision", node),
        {
            "action": "deploy",
            "node": node.name,
            "image": {
                "url": f"http://{IMAGE_HOST}/{image.path.name}",
                "sha256": image.sha256,
                "format": "raw",
                "size": image.size,
            },
            "config": {"hostname": "gpu-box-7", "authorized_keys": [public_key], "network": {}},
        },
    )
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(128 * 1024 * 1024)
    live_port = urlsplit(live_server.url).port
    assert live_port is not None
    ssh_port = _free_port()

    def computer(boot_from: str, workdir: str) -> QemuComputer:
        return QemuComputer(
            workdir=tmp_path / workdir,
            mac=node.boot_mac,
            disk=disk,
            forwards=[
                GuestForward(BOOT_HOST, 80, live_port),
                GuestForward(IMAGE_HOST, 80, image_server.port),
            ],
            host_forwards=[(ssh_port, 22)],
            bootfile=f"http://{BOOT_HOST}/boot/${{mac:hexhyp}}.ipxe",
            boot_from=boot_from,
        )

    with ImageServer(image.path.parent) as image_server:
        deploy = computer("network", "deploy")
        with deploy:
            assert deploy.wait(300) == 0, deploy.console()[-4000:]
        result = DeployTicket.objects.get(pk=ticket.pk).result
        assert result["status"] == "ok" and result["sha256"] == image.sha256, result

        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(
            "".join(f"[127.0.0.1]:{ssh_port} {line}\n" for line in result["host_keys"].values())
        )
        installed = computer("disk", "installed")
        started = time.monotonic()
        with installed:
            wait_for(
                lambda: "neocloud-os: sshd started" in installed.console(),
                timeout=120,
                interval=0.5,
                message="sshd in the deployed OS",
                details=lambda: installed.console()[-4000:],
            )
            boot_seconds = time.monotonic() - started
            login = subprocess.run(
                [
                    "ssh", "-i", str(private_key), "-p", str(ssh_port),
                    "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                    "root@127.0.0.1", "hostname; uname -r",
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )  # fmt: skip
    console = installed.console()
    assert "SYSLINUX" in console and "neocloud-os: kernel" in console
    assert login.returncode == 0, f"{login.stderr}\n{console[-3000:]}"
    assert login.stdout.split() == ["gpu-box-7", ensure_ramdisk().kernel_version]
    print(f"deployed OS booted from its disk to sshd in {boot_seconds:.1f} s (TCG)")
