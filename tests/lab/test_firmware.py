"""The lab firmware end to end: real HTTP boot service, real image server, the real deploy agent,
and (when root) the real sshd started from the config drive in a network namespace."""

from __future__ import annotations

import importlib.util
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.firmware import Firmware
from lab.spec import LabNodeSpec
from provisioner.drivers.base import BootDevice, BootSetting
from provisioner.pxe.agent import fingerprint
from provisioner.pxe.configdrive import read_config_drive
from provisioner.pxe.images import build_demo_image
from provisioner.pxe.imageserver import ImageServer

_spec = importlib.util.spec_from_file_location(
    "pxe_bootservice", Path(__file__).parents[1] / "pxe" / "bootservice.py"
)
bootservice = importlib.util.module_from_spec(_spec)
sys.modules["pxe_bootservice"] = bootservice
_spec.loader.exec_module(bootservice)

MIB = 1024 * 1024
PXE = BootSetting(BootDevice.PXE)
DISK = BootSetting(BootDevice.DISK)


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    sha, size = build_demo_image(directory / "demo.img", size_mib=16)
    with ImageServer(directory) as server:
        yield server.url_for("demo.img"), sha, size


@pytest.fixture
def boot() -> Iterator[bootservice.BootService]:
    with bootservice.BootService() as service:
        yield service


def make_spec(tmp_path: Path) -> LabNodeSpec:
    tag = secrets.token_hex(3)
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(32 * MIB)
    return LabNodeSpec(
        name=f"fw-{tag}",
        index=1,
        server_type="h100-8x",
        mac="52:54:00:fa:00:01",
        bmc_protocol="ipmi",
        bmc_address="127.0.10.1",
        bmc_port=623,
        bmc_username="admin",
        bmc_password="unused",
        ssh_address=f"198.19.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}",
        netns=f"nctest-{tag}",
        disk_path=str(disk),
        disk_size=32 * MIB,
    )


@pytest.fixture
def node(tmp_path) -> Iterator[tuple[LabNodeSpec, Path]]:
    spec = make_spec(tmp_path)
    lab_dir = tmp_path / "lab"
    yield spec, lab_dir
    if spec.netns and os.path.exists(f"/run/netns/{spec.netns}"):
        from lab import netns

        netns.destroy_node_network(spec)


def power_on(firmware: Firmware, spec: LabNodeSpec, setting: BootSetting, timeout: float = 60) -> None:
    started = time.monotonic()
    firmware.on_power_on(spec, setting)
    assert time.monotonic() - started < 0.5, "the hook must not block the BMC"
    assert firmware.wait_idle(timeout), "the boot did not finish in time"


def console(lab_dir: Path, spec: LabNodeSpec) -> str:
    return (lab_dir / "nodes" / spec.name / "console.log").read_text()


def test_pxe_boot_runs_the_script_and_the_deploy_agent(boot, image, node):
    spec, lab_dir = node
    url, sha, size = image
    token = "fw-token-" + secrets.token_urlsafe(16)
    deployment = boot.add_deployment(spec.name, spec.mac, token, url, sha, size)
    firmware = Firmware(spec, lab_dir, boot.url)

    power_on(firmware, spec, PXE)

    assert firmware.agent_returncode == 0, (lab_dir / "nodes" / spec.name / "agent.log").read_text()
    paths = boot.paths()
    assert paths[:3] == [f"/boot/{spec.mac}.ipxe", "/boot/deploy/vmlinuz", "/boot/deploy/initrd.img"]
    assert "/boot/api/instructions" in paths and "/boot/api/result" in paths
    assert deployment.result["status"] == "ok"
    assert read_config_drive(spec.disk_path)["hostname"] == spec.name
    logs = console(lab_dir, spec) + (lab_dir / "nodes" / spec.name / "agent.log").read_text()
    assert token not in logs


def test_pxe_boot_with_nothing_pending_falls_through_to_an_empty_disk(boot, node):
    spec, lab_dir = node
    firmware = Firmware(spec, lab_dir, boot.url)
    power_on(firmware, spec, PXE)
    assert boot.paths() == [f"/boot/{spec.mac}.ipxe"]
    text = console(lab_dir, spec)
    assert "the script exits" in text and "no bootable device" in text
    assert firmware.agent_returncode is None


def test_unreachable_boot_service_falls_through_to_disk(node):
    spec, lab_dir = node
    firmware = Firmware(spec, lab_dir, "http://127.0.0.1:9")
    power_on(firmware, spec, PXE)
    assert "no boot script" in console(lab_dir, spec) and "no bootable device" in console(lab_dir, spec)


def test_image_corruption_fault_makes_the_deploy_fail_cleanly(boot, image, node):
    spec, lab_dir = node
    url, sha, size = image
    deployment = boot.add_deployment(
        spec.name, spec.mac, "fw-corrupt-" + secrets.token_urlsafe(16), url, sha, size
    )
    (lab_dir / "nodes" / spec.name).mkdir(parents=True)
    (lab_dir / "nodes" / spec.name / "faults.json").write_text('{"image_corruption": true}')
    firmware = Firmware(spec, lab_dir, boot.url)

    power_on(firmware, spec, PXE)

    assert firmware.agent_returncode == 1
    assert deployment.result["error_code"] == "image_checksum_mismatch"
    assert read_config_drive(spec.disk_path) is None
    power_on(firmware, spec, DISK)
    assert console(lab_dir, spec).rstrip().endswith("no bootable device")


def test_agent_crash_fault_leaves_no_result_and_no_config_drive(boot, image, node):
    spec, lab_dir = node
    url, sha, size = image
    deployment = boot.add_deployment(
        spec.name, spec.mac, "fw-crash-" + secrets.token_urlsafe(16), url, sha, size
    )
    (lab_dir / "nodes" / spec.name).mkdir(parents=True)
    (lab_dir / "nodes" / spec.name / "faults.json").write_text('{"agent_crash": true}')
    firmware = Firmware(spec, lab_dir, boot.url)

    power_on(firmware, spec, PXE)

    assert firmware.agent_returncode == -9
    assert deployment.result is None
    assert read_config_drive(spec.disk_path) is None


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
def test_disk_boot_after_deploy_serves_ssh_with_the_reported_host_keys(boot, image, node, tmp_path):
    from lab import sshd

    if not sshd.sshd_available():
        pytest.skip("openssh-server or iproute2 is not installed")
    spec, lab_dir = node
    url, sha, size = image
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-f", str(tmp_path / "customer")], check=True
    )
    customer = (tmp_path / "customer.pub").read_text().strip()
    token = "fw-ssh-" + secrets.token_urlsafe(16)
    deployment = boot.add_deployment(spec.name, spec.mac, token, url, sha, size, [customer])
    firmware = Firmware(spec, lab_dir, boot.url)
    try:
        power_on(firmware, spec, PXE)
        firmware.on_power_off(spec)
        power_on(firmware, spec, DISK)
        assert firmware.os_started, console(lab_dir, spec)
        scan = subprocess.run(
            ["ssh-keyscan", "-T", "5", "-t", "ed25519", spec.ssh_address],
            capture_output=True,
            text=True,
            timeout=30,
        )
        line = next(ln for ln in scan.stdout.splitlines() if not ln.startswith("#"))
        served = fingerprint(" ".join(line.split()[1:]))
        assert served == deployment.result["host_key_fingerprints"]["ssh-ed25519"]
    finally:
        firmware.on_power_off(spec)
