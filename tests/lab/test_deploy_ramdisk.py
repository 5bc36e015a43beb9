"""The deploy ramdisk (lab.ramdisk): a real Debian kernel and an initramfs that runs our agent.

The fast tests check the archive format and the module ordering on synthetic inputs. The slow one builds
the real ramdisk (from Debian's kernel and busybox-static, downloaded by scripts/bootstrap.sh), boots it in
QEMU under TCG with the kernel command line our iPXE script passes, and lets the agent deploy an image
from our image server onto the computer's virtio disk, reporting to the boot-service stand-in of
tests/pxe/bootservice.py. The whole-path test with iPXE and the Django boot service is test_qemu_deploy.py.
"""

from __future__ import annotations

import gzip
import hashlib
import time
from pathlib import Path

import pytest

from lab.qemu import GuestForward, QemuComputer, qemu_available
from lab.ramdisk import (
    Cpio,
    RamdiskBuildError,
    download_package,
    ensure_ramdisk,
    kernel_package,
    module_order,
    python_modules,
)
from provisioner.pxe.configdrive import read_config_drive
from provisioner.pxe.images import build_demo_image
from provisioner.pxe.imageserver import ImageServer
from tests.pxe.bootservice import BootService, Deployment

REPO = Path(__file__).resolve().parents[2]
MAC = "52:54:00:12:34:57"
TOKEN = "ramdisk-token-0123456789abcdef"
BOOT_HOST = "10.0.2.100"
IMAGE_HOST = "10.0.2.101"


def test_tests_never_download_a_missing_package(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("NEOCLOUD_LAB_OFFLINE", "1")  # tests/conftest.py sets it for the whole suite
    with pytest.raises(RamdiskBuildError, match=r"run scripts/bootstrap\.sh"):
        download_package("busybox-static", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_downloaded_kernel_is_kept_until_its_deb_is_deleted(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("NEOCLOUD_RAMDISK_KERNEL_PACKAGE", raising=False)
    (tmp_path / "linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb").write_bytes(b"")
    (tmp_path / "busybox-static_1.35.0_amd64.deb").write_bytes(b"")
    assert kernel_package(tmp_path) == "linux-image-6.1.0-9-amd64"
    assert download_package("linux-image-6.1.0-9-amd64", tmp_path).name.startswith("linux-image-6.1.0-9")


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes, int]]:
    """name -> (mode, data, rdev) of a newc cpio archive; checks the magic and the 4-byte alignment."""
    entries: dict[str, tuple[int, bytes, int]] = {}
    offset = 0
    while True:
        assert data[offset : offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        rdev = (fields[9] << 8) | fields[10]
        name = data[offset + 110 : offset + 110 + name_size - 1].decode()
        offset += 110 + name_size
        offset += -offset % 4
        body = data[offset : offset + size]
        offset += size
        offset += -offset % 4
        if name == "TRAILER!!!":
            assert offset == len(data)
            return entries
        entries[name] = (mode, body, rdev)


@pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(), reason="Debian's python3.11 is not installed")
def test_the_ramdisk_carries_the_lldp_reader_the_agent_imports_and_its_standard_library(
    tmp_path: Path,
) -> None:
    files, _ = python_modules(tmp_path)
    ours = {f.relative_to(REPO).as_posix() for f in files if f.is_relative_to(REPO)}
    assert {"provisioner/pxe/agent.py", "provisioner/pxe/lldp.py"} <= ours
    # nothing of Django or of our control plane: the ramdisk carries only the standard library
    assert all(name.startswith("provisioner/pxe/") or name.endswith("__init__.py") for name in ours)
    assert {"ipaddress.py", "struct.py", "socket.py"} <= {f.name for f in files}


def test_cpio_archive_holds_parents_before_children_and_round_trips() -> None:
    archive = Cpio()
    archive.file("usr/bin/tool", b"abc", 0o755)
    archive.symlink("bin/sh", "busybox")
    archive.char_device("dev/console", 5, 1)
    data = archive.tobytes()
    entries = _read_newc(data)
    names = list(entries)
    assert names.index("usr") < names.index("usr/bin") < names.index("usr/bin/tool")
    assert entries["usr/bin/tool"] == (0o100755, b"abc", 0)
    assert entries["bin/sh"] == (0o120777, b"busybox", 0)
    assert entries["dev/console"] == (0o020600, b"", (5 << 8) | 1)
    assert archive.tobytes() == data  # the same inputs give the same bytes


def test_module_order_loads_dependencies_first(tmp_path: Path) -> None:
    def module(path: str, depends: str) -> None:
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"\x7fELF...\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0")

    module("drivers/net/virtio_net.ko", "virtio_ring,virtio,net_failover")
    module("drivers/net/net_failover.ko", "failover")
    module("net/core/failover.ko", "")
    module("drivers/virtio/virtio.ko", "")
    module("drivers/virtio/virtio_ring.ko", "virtio")
    module("drivers/block/unused.ko", "")
    order = [path.name for path in module_order(tmp_path, ["virtio_net"])]
    assert order == ["virtio.ko", "virtio_ring.ko", "failover.ko", "net_failover.ko", "virtio_net.ko"]
    with pytest.raises(RamdiskBuildError, match="virtio_blk"):
        module_order(tmp_path, ["virtio_blk"])


needs_qemu = pytest.mark.skipif(not qemu_available(), reason="qemu-system-x86 and ipxe-qemu are needed")


def _deploy_in_qemu(
    tmp_path: Path, image: Path, sha256: str, size: int
) -> tuple[Deployment, Path, str, float]:
    """Boot the ramdisk with a deployment of ``image`` pending; (deployment, disk, console, seconds)."""
    ramdisk = ensure_ramdisk()
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)
    with BootService() as boot, ImageServer(image.parent) as image_server:
        deployment = boot.add_deployment(
            "qemu-ramdisk",
            MAC,
            TOKEN,
            f"http://{IMAGE_HOST}/{image.name}",
            sha256,
            size,
            ["ssh-ed25519 AAAA test"],
        )
        computer = QemuComputer(
            workdir=tmp_path / "qemu",
            mac=MAC,
            disk=disk,
            forwards=[
                GuestForward(BOOT_HOST, 80, int(boot.url.rsplit(":", 1)[1])),
                GuestForward(IMAGE_HOST, 80, image_server.port),
            ],
            kernel=ramdisk.kernel,
            initrd=ramdisk.initrd,
            append=f"console=ttyS0 neocloud.api=http://{BOOT_HOST}/boot/api neocloud.token={TOKEN} "
            "neocloud.node=qemu-ramdisk",
        )
        started = time.monotonic()
        with computer:
            exit_code = computer.wait(180)
        elapsed = time.monotonic() - started
        console = computer.console()
    assert exit_code == 0, f"the computer did not power itself off within 180 s; console:\n{console[-4000:]}"
    assert TOKEN not in console and "neocloud.token=***" in console  # the kernel printed its command line
    return deployment, disk, console, elapsed


@pytest.mark.slow
@needs_qemu
def test_ramdisk_boots_a_debian_kernel_and_the_agent_deploys_onto_the_virtio_disk(tmp_path: Path) -> None:
    ramdisk = ensure_ramdisk()
    with gzip.open(ramdisk.initrd) as fh:
        names = _read_newc(fh.read())
    assert {"init", "bin/busybox", "usr/bin/python3.11", "usr/bin/ssh-keygen"} <= set(names)
    assert "opt/neocloud/provisioner/pxe/agent.py" in names
    assert "usr/lib/python3.11/unittest/__init__.py" not in names  # only what the agent imports

    image = tmp_path / "images" / "demo.raw"
    sha256, size = build_demo_image(image, 16)
    deployment, disk, console, elapsed = _deploy_in_qemu(tmp_path, image, sha256, size)
    assert "neocloud-ramdisk: agent exited with status 0" in console, console[-4000:]
    assert deployment.result is not None and deployment.result["status"] == "ok", deployment.result
    assert deployment.result["sha256"] == sha256
    with open(disk, "rb") as fh:
        assert hashlib.sha256(fh.read(size)).hexdigest() == sha256
    drive = read_config_drive(str(disk))
    assert drive is not None and drive["hostname"] == "qemu-ramdisk"
    assert drive["authorized_keys"] == ["ssh-ed25519 AAAA test"]
    assert set(drive["host_keys"]) == {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"}
    print(f"ramdisk booted and deployed {size} bytes in {elapsed:.1f} s (TCG)")


@pytest.mark.slow
@needs_qemu
def test_ramdisk_agent_reports_a_checksum_mismatch_and_leaves_no_bootable_disk(tmp_path: Path) -> None:
    image = tmp_path / "images" / "demo.raw"
    _, size = build_demo_image(image, 16)
    deployment, disk, console, _ = _deploy_in_qemu(tmp_path, image, "0" * 64, size)
    assert "neocloud-ramdisk: agent exited with status 1" in console, console[-4000:]
    assert deployment.result is not None and deployment.result["status"] == "failed"
    assert deployment.result["error_code"] == "image_checksum_mismatch"
    with open(disk, "rb") as fh:
        assert fh.read(1024 * 1024) == bytes(1024 * 1024)  # the file system's superblock is gone
    assert read_config_drive(str(disk)) is None
