"""A ``qemu`` lab node: the lab's IPMI BMC powers an emulated computer, driven by the engine's IPMI driver.

``supervisor.up(..., kind="qemu")`` starts the node process with its real IPMI endpoint; our IPMI power
driver sets a one-time PXE boot and powers on, and QEMU (TCG) network-boots through the Django boot service
into the deploy ramdisk, whose agent writes the lab OS image (lab.osimage). Then the engine's
next steps: boot from disk and reset (QEMU starts again, disk first, and the deployed OS's sshd answers
with the host keys the agent reported), and power off, which quits QEMU over QMP.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lab import supervisor
from lab.osimage import ensure_os_image
from lab.qemu import qemu_available
from lab.ramdisk import ensure_ramdisk
from provisioner.drivers.base import BmcAccess, BootDevice, BootSetting, PowerDriver, PowerState
from provisioner.drivers.registry import power_driver_for
from provisioner.pxe.configdrive import read_config_drive
from provisioner.pxe.imageserver import ImageServer
from tests.conftest import ssh_keygen, wait_for

NODE = "node-h100-8x-01"  # boot MAC 52:54:00:00:00:01, the MAC of lab-node-01

pytestmark = [
    pytest.mark.slow,
    pytest.mark.lab,
    pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86 and ipxe-qemu are needed"),
]


def _qemu_children(parent: int) -> list[int]:
    """The QEMU processes whose parent is ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == parent and stat[0] != "Z" and b"qemu-system-x86_64" in cmdline:
            found.append(int(entry.name))
    return found


def test_lab_bmc_powers_an_emulated_computer_through_a_deploy_and_off(
    transactional_db, inventory, live_server, settings, tmp_path: Path
) -> None:
    from provisioner.boot import tickets
    from provisioner.engine.queue import create_operation
    from provisioner.models import DeployTicket, Node

    settings.NEOCLOUD_BOOT_DIR = ensure_ramdisk().directory
    image = ensure_os_image()
    sha256, size = image.sha256, image.size
    _, customer_key = ssh_keygen(tmp_path, name="customer")
    node = Node.objects.get(name=NODE)
    lab_dir = tmp_path / "lab"
    opened: list[PowerDriver] = []
    with ImageServer(image.path.parent) as image_server:
        try:
            (spec,) = supervisor.up(
                1, lab_dir, live_server.url, protocols="ipmi", kind="qemu", image_port=image_server.port
            )
            assert spec.mac == node.boot_mac
            node_pid = int((lab_dir / "nodes" / spec.name / "node.pid").read_text())
            qemu_console = lab_dir / "nodes" / spec.name / "qemu" / "console.log"
            ticket = tickets.open_ticket(
                node,
                create_operation("provision", node),
                {
                    "action": "deploy",
                    "node": node.name,
                    "image": {
                        "url": f"http://10.0.2.101/{image.path.name}",
                        "sha256": sha256,
                        "format": "raw",
                        "size": size,
                    },
                    "config": {"hostname": "gpu-box-2", "authorized_keys": [customer_key], "network": {}},
                },
            )
            bmc = power_driver_for(
                BmcAccess("ipmi", spec.bmc_address, spec.bmc_port, spec.bmc_username, spec.bmc_password)
            )
            opened.append(bmc)
            bmc.power_off()
            bmc.set_boot_device(BootSetting(BootDevice.PXE))
            bmc.power_on()
            wait_for(lambda: _qemu_children(node_pid), timeout=10, message="QEMU started by the node process")

            def deployed() -> bool:
                return DeployTicket.objects.get(pk=ticket.pk).result_at is not None

            started = time.monotonic()
            wait_for(
                deployed,
                timeout=300,
                interval=1,
                message="the agent's result",
                details=qemu_console.read_text,
            )
            deploy_seconds = time.monotonic() - started
            result = DeployTicket.objects.get(pk=ticket.pk).result
            assert result["status"] == "ok" and result["sha256"] == sha256, result
            # The ramdisk powers the computer off when the agent is done, and the BMC says so (as a real one
            # reads the host's power rails).
            wait_for(lambda: not _qemu_children(node_pid), timeout=30, message="the ramdisk's power-off")
            assert bmc.get_power_state() == PowerState.OFF
            with open(spec.disk_path, "rb") as fh:
                assert hashlib.sha256(fh.read(size)).hexdigest() == sha256
            drive = read_config_drive(spec.disk_path)
            assert drive is not None and drive["hostname"] == "gpu-box-2"

            # The engine's next step: boot from disk, reset. QEMU comes up again with the disk first, and the
            # deployed OS's sshd answers with the host keys of the agent's result.
            bmc.set_boot_device(BootSetting(BootDevice.DISK, persistent=True))
            bmc.reset()
            wait_for(lambda: _qemu_children(node_pid), timeout=10, message="QEMU started again")
            wait_for(
                lambda: "neocloud-os: sshd started" in qemu_console.read_text(errors="replace"),
                timeout=120,
                interval=0.5,
                message="sshd in the deployed OS",
                details=lambda: qemu_console.read_text(errors="replace")[-3000:],
            )
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(
                "".join(
                    f"[127.0.0.1]:{spec.ssh_forward_port} {key}\n" for key in result["host_keys"].values()
                )
            )
            login = subprocess.run(
                [
                    "ssh", "-i", str(tmp_path / "customer"), "-p", str(spec.ssh_forward_port),
                    "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                    "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "root@127.0.0.1", "hostname",
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )  # fmt: skip
            assert login.returncode == 0 and login.stdout.strip() == "gpu-box-2", login.stderr
            bmc.power_off()  # the BMC answers at once; its firmware thread then quits QEMU over QMP
            wait_for(lambda: not _qemu_children(node_pid), timeout=15, message="QEMU to quit")
            assert bmc.get_power_state() == PowerState.OFF
            console = lab_dir / "nodes" / spec.name / "console.log"
            wait_for(
                lambda: "power off: QEMU quit" in console.read_text(), timeout=10, message="the quit logged"
            )
        finally:
            for driver in opened:  # the IPMI driver keeps its session: later tests must not inherit it
                driver.close()
            supervisor.down(lab_dir)
    print(f"BMC power-on to the agent's result: {deploy_seconds:.1f} s (TCG)")


def _tcp_answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=3).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab switch needs root (network namespaces, a tap)")
def test_an_emulated_computer_on_the_lab_switch_network_boots_on_the_provisioning_vlan(
    transactional_db, inventory, live_server, settings, tmp_path: Path
) -> None:
    """``lab up --switch --kind qemu``: the computer's NIC is a tap that is the lab switch's port swp1 on VLAN 100.
    Its iPXE ROM gets its address and boot URL from the lab's dnsmasq on that VLAN, boots the deploy ramdisk
    from the boot service at 198.18.0.1, whose agent hears the switch by LLDP and streams the image from
    198.18.0.1; the deployed OS takes its address by DHCP there and its sshd answers the host over the switch,
    until the port is moved to a tenant VLAN."""
    from lab import switch as lab_switch
    from lab import switched
    from provisioner.boot import tickets
    from provisioner.engine.queue import create_operation
    from provisioner.models import DeployTicket, Node

    settings.NEOCLOUD_BOOT_DIR = ensure_ramdisk().directory
    image = ensure_os_image()
    _, customer_key = ssh_keygen(tmp_path, name="customer")
    node = Node.objects.get(name=NODE)
    lab_dir = tmp_path / "lab"
    opened: list[PowerDriver] = []
    with ImageServer(image.path.parent) as image_server:
        try:
            (spec,) = supervisor.up(
                1, lab_dir, live_server.url, "ipmi", kind="qemu", image_port=image_server.port, switch=True
            )
            switch = switched.running_switch(lab_dir)
            assert switch is not None and spec.ssh_forward_port == 0
            assert lab_switch.bridge_link(switch)[spec.switch_port] == "br100"
            ticket = tickets.open_ticket(
                node,
                create_operation("provision", node),
                {
                    "action": "deploy",
                    "node": node.name,
                    "image": {
                        "url": f"http://198.18.0.1:{image_server.port}/{image.path.name}",
                        "sha256": image.sha256,
                        "format": "raw",
                        "size": image.size,
                    },
                    "config": {"hostname": "gpu-box-3", "authorized_keys": [customer_key], "network": {}},
                },
            )
            bmc = power_driver_for(
                BmcAccess("ipmi", spec.bmc_address, spec.bmc_port, spec.bmc_username, spec.bmc_password)
            )
            opened.append(bmc)
            qemu_console = lab_dir / "nodes" / spec.name / "qemu" / "console.log"
            bmc.power_off()
            bmc.set_boot_device(BootSetting(BootDevice.PXE))
            bmc.power_on()
            wait_for(
                lambda: DeployTicket.objects.get(pk=ticket.pk).result_at is not None,
                timeout=300,
                interval=1,
                message="the agent's result",
                details=lambda: qemu_console.read_text(errors="replace")[-3000:],
            )
            result = DeployTicket.objects.get(pk=ticket.pk).result
            assert result["status"] == "ok" and result["sha256"] == image.sha256, result
            console = qemu_console.read_text(errors="replace")
            assert f"eth0 {spec.ssh_address}/24" in console  # the lab dnsmasq's lease, on VLAN 100
            assert spec.mac in (switched.switch_directory(lab_dir) / "dhcp" / "leases").read_text()
            heard = result.get("lldp") or {}
            assert (heard.get("switch"), heard.get("port")) == (switch.name, spec.switch_port), heard

            # the deployed OS: its address by DHCP on the provisioning VLAN, its sshd reached over the switch
            bmc.set_boot_device(BootSetting(BootDevice.DISK, persistent=True))
            bmc.reset()
            wait_for(
                lambda: "neocloud-os: sshd started" in qemu_console.read_text(errors="replace"),
                timeout=180,
                interval=0.5,
                message="sshd in the deployed OS",
                details=lambda: qemu_console.read_text(errors="replace")[-3000:],
            )
            known_hosts = tmp_path / "known_hosts"
            known_hosts.write_text(
                "".join(f"{spec.ssh_address} {key}\n" for key in result["host_keys"].values())
            )
            login = subprocess.run(
                [
                    "ssh", "-i", str(tmp_path / "customer"), "-o", f"UserKnownHostsFile={known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30",
                    f"root@{spec.ssh_address}", "hostname",
                ],
                capture_output=True,
                text=True,
                timeout=90,
            )  # fmt: skip
            assert login.returncode == 0 and login.stdout.strip() == "gpu-box-3", login.stderr
            # moved off the provisioning VLAN, the computer is out of the host's reach
            lab_switch.set_port_vlan(switch, spec.switch_port, 1000)
            assert not _tcp_answers(spec.ssh_address, 22)
            lab_switch.set_port_vlan(switch, spec.switch_port, switched.PROVISIONING_VLAN)
            assert _tcp_answers(spec.ssh_address, 22)
            bmc.power_off()
        finally:
            for driver in opened:
                driver.close()
            supervisor.down(lab_dir)
    assert not any(n.startswith("ncsw-lab-leaf1") for n in lab_switch.namespaces())  # switch and DHCP gone
