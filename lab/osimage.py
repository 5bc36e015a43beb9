"""A bootable OS image for the lab's emulated computers: deployed by the agent, booted from the disk, sshd up.

    python -m lab.osimage [--dir var/ramdisk]     (prints the image path, size and sha256)

The raw image is what a real site's OS image is to a bare-metal server: an MBR disk that the firmware
(SeaBIOS in QEMU) boots. Layout: Debian's SYSLINUX MBR code and one bootable FAT16 partition from 1 MiB
holding SYSLINUX (package syslinux, installed with its mtools-based installer: no loop device, no root),
``syslinux.cfg``, Debian's kernel and the OS's initramfs. The OS runs from that initramfs: busybox, Debian's
OpenSSH server (``/usr/sbin/sshd`` with the libraries ``ldd`` lists) and, at first boot,
``lab.os_firstboot`` under Debian's python3.11, which applies the config drive the agent wrote
at the end of the disk (hostname, root's authorized keys, the SSH host keys the agent reported). Its
``/init`` loads the virtio modules, takes a DHCP lease on eth0, applies the config drive and starts sshd. The
engine then works on the server as on any: ``/usr/bin/python3`` (Debian's python3.11 with the standard library
modules Ansible's modules and the burn-in agent load, and nvidia-ml-py) runs handover's Ansible module and
the burn-in agent over SSH.

Tools and packages come from Debian with ``apt-get download`` (kept in ``<dir>/debs``, unpacked only while
building): the kernel and busybox-static of lab.ramdisk, and syslinux, syslinux-common, mtools and
dosfstools. The image is rebuilt when its inputs change (``os-stamp.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

from lab.ramdisk import (
    BUSYBOX_PACKAGE,
    DEFAULT_DIR,
    ROOT_MODULES,
    RUNTIME_MODULES,
    RamdiskBuildError,
    base_archive,
    build_lock,
    collect_program_files,
    download_package,
    kernel_package,
    module_order,
    run_command,
    unpack,
    write_initrd,
)
from provisioner.pxe.images import sha256_file

IMAGE_NAME = "neocloud-lab-os.raw"
FIRSTBOOT_MODULE = "lab.os_firstboot"
SSHD = Path("/usr/sbin/sshd")
TOOL_PACKAGES = ("syslinux", "syslinux-common", "mtools", "dosfstools")
# The standard library modules that the engine's work on a deployed server loads, besides first boot's: Ansible's
# module runner (AnsiballZ) with ansible.module_utils.basic (handover's neocloud_authorized_keys) and the
# burn-in agent (a zip application) with nvidia-ml-py. Found by running both under Debian's python3.11 and
# listing the standard library modules it loaded (cp437: zipfile decodes AnsiballZ's member names with it);
# the image's /usr/bin/python3 has these and no others.
ENGINE_RUNTIME_MODULES = (
    "argparse", "ast", "base64", "bisect", "bz2", "ctypes", "ctypes.util", "dataclasses", "datetime", "decimal",
    "dis", "encodings.cp437", "encodings.utf_8", "errno", "fcntl", "fnmatch", "gettext", "glob", "grp", "hashlib", "hmac",
    "importlib.util", "inspect", "ipaddress", "json", "locale", "logging", "lzma", "numbers", "pathlib",
    "pkgutil", "platform", "pwd", "random", "runpy", "secrets", "select", "selectors", "shlex", "shutil",
    "signal", "site", "socket", "string", "struct", "subprocess", "syslog", "tempfile", "textwrap",
    "threading", "tokenize", "traceback", "typing", "urllib.parse", "uuid", "zipfile", "zipimport",
)  # fmt: skip
# nvidia-ml-py: what a GPU server's OS image carries for NVML (the burn-in imports it, also when simulated).
NVML_MODULE = "pynvml"
DIST_PACKAGES = "usr/lib/python3/dist-packages"
PARTITION_START = 2048  # sectors: the partition starts at 1 MiB
SECTOR = 512
FAT_LABEL = "NEOCLOUDOS"
FAT_VOLUME_ID = "4e454f43"
FIXED_TIME = 1_700_000_000

OS_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu HOME=/root
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
say() { echo "neocloud-os: $*"; }
say "kernel $(uname -r) booted from the disk"
while read -r module; do
    insmod "/lib/modules/$module.ko" || say "insmod $module failed"
done </etc/neocloud/modules
ip link set lo up
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && [ -b /dev/vda ] && break; sleep 0.2; done
ip link set eth0 up
udhcpc -i eth0 -s /etc/neocloud/udhcpc.script -n -q -t 10 -T 2 || say "no DHCP lease on eth0"
cd /opt/neocloud
if /usr/bin/python3.11 -S -m lab.os_firstboot --disk /dev/vda --set-hostname; then
    mkdir -p /run/sshd
    chmod 0755 /run/sshd
    if /usr/sbin/sshd -e -f /etc/ssh/sshd_config; then
        say "sshd started on $(ip -4 -o addr show eth0 | awk '{print $4}') as $(hostname)"
    else
        say "sshd did not start"
    fi
else
    say "first boot configuration failed: no sshd"
fi
while true; do sleep 3600; done
"""

SSHD_CONFIG = """\
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
HostKey /etc/ssh/ssh_host_rsa_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AuthorizedKeysFile .ssh/authorized_keys
PidFile /run/sshd.pid
"""

SYSLINUX_CFG = """\
SERIAL 0 115200
DEFAULT os
PROMPT 0
TIMEOUT 0
LABEL os
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND console=ttyS0
"""


@dataclasses.dataclass(frozen=True)
class OsImage:
    """A built OS image: the raw file, its sha256 and size (what the image catalog publishes)."""

    path: Path
    sha256: str
    size: int


def mbr(boot_code: bytes, start: int, sectors: int) -> bytes:
    """A master boot record: ``boot_code`` (at most 440 bytes) and one bootable FAT16 (LBA) partition
    of ``sectors`` sectors from ``start``. Pure."""
    if len(boot_code) > 440:
        raise RamdiskBuildError(f"MBR boot code of {len(boot_code)} bytes does not fit in 440")
    # status 0x80 (bootable), CHS fields saturated (LBA is what counts), type 0x0e (FAT16, LBA)
    entry = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff", start, sectors)
    return boot_code.ljust(440, b"\0") + b"\0" * 6 + entry + b"\0" * 48 + b"\x55\xaa"


def build_os_image(target: Path, work: Path, kernel: Path, initrd: Path, tools: Path) -> None:
    """Write the bootable raw image to ``target`` from a kernel and initramfs, with the unpacked tools."""
    env = dict(
        os.environ,
        PATH=f"{tools / 'usr/bin'}:{tools / 'sbin'}:{os.environ.get('PATH', '')}",
        MTOOLS_SKIP_CHECK="1",
        SOURCE_DATE_EPOCH=str(FIXED_TIME),
    )
    config = work / "syslinux.cfg"
    config.write_text(SYSLINUX_CFG)
    payload = kernel.stat().st_size + initrd.stat().st_size
    size_kib = max(32 * 1024, (payload // (1024 * 1024) + 8) * 1024)
    partition = work / "partition.img"
    partition.unlink(missing_ok=True)

    def run(*cmd: str) -> None:
        run_command(list(cmd), env=env)

    run(str(tools / "sbin/mkfs.fat"), "-C", "-F", "16", "-n", FAT_LABEL, "-i", FAT_VOLUME_ID, "--invariant",
        str(partition), str(size_kib))  # fmt: skip
    for source, name in ((kernel, "vmlinuz"), (initrd, "initrd.img"), (config, "syslinux.cfg")):
        os.utime(source, (FIXED_TIME, FIXED_TIME))
        run(str(tools / "usr/bin/mcopy"), "-m", "-i", str(partition), str(source), f"::/{name}")
    run(str(tools / "usr/bin/syslinux"), "--install", str(partition))
    boot_code = (tools / "usr/lib/syslinux/mbr/mbr.bin").read_bytes()
    sectors = partition.stat().st_size // SECTOR
    tmp_target = target.with_name(f".{target.name}.tmp")
    with open(tmp_target, "wb") as out, open(partition, "rb") as part:
        out.write(mbr(boot_code, PARTITION_START, sectors))
        out.write(b"\0" * (PARTITION_START * SECTOR - SECTOR))
        while chunk := part.read(4 * 1024 * 1024):
            out.write(chunk)
    tmp_target.replace(target)


def ensure_os_image(directory: Path = DEFAULT_DIR) -> OsImage:
    """Build (or reuse) the lab OS image in ``directory``. Idempotent.

    :raises RamdiskBuildError: a download, a host binary (sshd, python3.11) or a tool failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with build_lock(directory):
        return _ensure_os_image(directory)


def _ensure_os_image(directory: Path) -> OsImage:
    debs = directory / "debs"
    kernel_deb = download_package(kernel_package(debs), debs)
    busybox_deb = download_package(BUSYBOX_PACKAGE, debs)
    tool_debs = [download_package(name, debs) for name in TOOL_PACKAGES]
    target = directory / IMAGE_NAME
    stamp = directory / "os-stamp.json"
    with tempfile.TemporaryDirectory(prefix="neocloud-osimage-") as tmp:
        work = Path(tmp)
        program = collect_program_files(
            work / "pyc", FIRSTBOOT_MODULE, [SSHD], (*RUNTIME_MODULES, *ENGINE_RUNTIME_MODULES)
        )
        nvml = _nvml_source()
        digest = hashlib.sha256(program.digest().encode() + Path(__file__).read_bytes() + nvml).hexdigest()
        wanted = {"debs": [d.name for d in (kernel_deb, busybox_deb, *tool_debs)], "inputs": digest}
        current = json.loads(stamp.read_text()) if stamp.exists() else {}
        if {k: current.get(k) for k in wanted} == wanted and target.exists():
            return OsImage(target, str(current["sha256"]), int(current["size"]))
        kernel_tree = unpack(kernel_deb, work / "kernel")
        busybox = unpack(busybox_deb, work / "busybox") / "bin/busybox"
        tools = work / "tools"
        for deb in tool_debs:
            unpack(deb, tools)
        vmlinuz = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise RamdiskBuildError(f"{kernel_deb.name} has no /boot/vmlinuz-*")
        version = vmlinuz[-1].name.removeprefix("vmlinuz-")
        modules = module_order(kernel_tree / "lib/modules" / version, ROOT_MODULES)
        archive = base_archive(OS_INIT, modules, busybox, program)
        archive.file(
            "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        )
        archive.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
        archive.file("etc/shadow", b"root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n", 0o600)
        archive.file("etc/ssh/sshd_config", SSHD_CONFIG.encode())
        archive.symlink("usr/bin/python3", "python3.11")
        archive.file(f"{DIST_PACKAGES}/{NVML_MODULE}.py", nvml)
        archive.directory("run/sshd")
        initrd = work / "initrd.img"
        write_initrd(archive, initrd)
        stamp.unlink(missing_ok=True)
        build_os_image(target, work, vmlinuz[-1], initrd, tools)
    sha256, size = sha256_file(target), target.stat().st_size
    stamp.write_text(
        json.dumps({**wanted, "sha256": sha256, "size": size, "kernel_version": version}, indent=1)
    )
    return OsImage(target, sha256, size)


def _nvml_source() -> bytes:
    """pynvml.py (nvidia-ml-py, one pure-Python file) from this project's environment.

    :raises RamdiskBuildError: nvidia-ml-py is not installed here.
    """
    spec = importlib.util.find_spec(NVML_MODULE)
    if spec is None or spec.origin is None:
        raise RamdiskBuildError("nvidia-ml-py (module pynvml) is not installed in this environment")
    return Path(spec.origin).read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the lab's bootable OS image (SYSLINUX, Debian kernel, sshd)."
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    try:
        image = ensure_os_image(args.dir)
    except RamdiskBuildError as exc:
        print(f"osimage: {exc}", file=sys.stderr)
        return 1
    print(f"image {image.path} ({image.size} bytes, sha256 {image.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
