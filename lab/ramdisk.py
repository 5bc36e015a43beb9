"""The deploy ramdisk for the lab's emulated computers: a real Debian kernel and an initramfs running our agent.

    python -m lab.ramdisk [--dir var/ramdisk]     (prints the kernel and initrd paths)

What it is made of:
- the kernel: Debian bookworm's current ``linux-image-*-amd64`` (what ``linux-image-amd64`` depends on),
  fetched with ``apt-get download`` and unpacked with ``dpkg -x``. Debian builds virtio as modules, so the
  initramfs carries ``virtio_pci``, ``virtio_blk`` and ``virtio_net`` and what they depend on (read from each
  module's ``depends=`` field), loaded in dependency order by ``/init``;
- ``busybox`` from Debian's ``busybox-static`` (shell, mount, insmod, ip, udhcpc, poweroff);
- Debian's ``/usr/bin/python3.11`` and ``ssh-keygen`` (the agent makes the host keys with it), taken from
  this machine with the libraries ``ldd`` lists, and only the standard-library modules the agent imports
  (found by importing it with that same interpreter), compiled to ``.pyc`` ahead of time;
- the agent itself (``provisioner.pxe.agent`` and the modules of ours it imports).

``/init`` mounts the pseudo file systems, loads the modules, brings ``eth0`` up with DHCP (QEMU's user-mode
network gives 10.0.2.15), runs ``python3.11 -m provisioner.pxe.agent --cmdline /proc/cmdline --disk
/dev/vda`` (the iPXE script of provisioner.pxe.ipxe puts ``neocloud.api=`` and ``neocloud.token=`` on the
kernel command line) and powers the machine off, so a QEMU run ends when the deploy does.

The initramfs is a newc cpio written here with fixed owners and times and gzip without a timestamp: the
same inputs give the same bytes. The downloaded packages are kept under ``<dir>/debs`` (and unpacked only
while building); both files are rebuilt when a package, this module or anything taken from this machine
changes (``stamp.json`` holds the package names and a hash of the rest). Nothing here is committed:
``<dir>`` is under the ignored ``var/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIR = REPO_ROOT / "var" / "ramdisk"
# Set: never download a package, build only from what ``debs`` already holds (the test suite sets it).
OFFLINE_VARIABLE = "NEOCLOUD_LAB_OFFLINE"
DEBIAN_PYTHON = Path("/usr/bin/python3.11")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
ROOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_net")
AGENT_MODULE = "provisioner.pxe.agent"
AGENT_ROOT = "/opt/neocloud"
# Imported only when a program runs, not when it is imported: codecs looked up by name (header decoding,
# the IDNA step of getaddrinfo for a host name), locale (gettext's, for argparse's messages) and runpy
# for ``python -m``.
RUNTIME_MODULES = ("runpy", "locale", "encodings.latin_1", "encodings.ascii", "encodings.idna", "stringprep")

INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin LD_LIBRARY_PATH=/lib/x86_64-linux-gnu HOME=/root
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
exec </dev/console >/dev/console 2>&1
say() { echo "neocloud-ramdisk: $*"; }
finish() { say "$1"; sync; poweroff -f; sleep 60; }
say "kernel $(uname -r), loading $(wc -l </etc/neocloud/modules) modules"
while read -r module; do
    insmod "/lib/modules/$module.ko" || finish "insmod $module failed"
done </etc/neocloud/modules
ip link set lo up
for i in $(seq 50); do [ -e /sys/class/net/eth0 ] && [ -b /dev/vda ] && break; sleep 0.2; done
[ -e /sys/class/net/eth0 ] || finish "no eth0"
[ -b /dev/vda ] || finish "no /dev/vda"
ip link set eth0 up
udhcpc -i eth0 -s /etc/neocloud/udhcpc.script -n -q -t 10 -T 2 || finish "no DHCP lease on eth0"
say "eth0 $(ip -4 -o addr show eth0 | awk '{print $4}'), running the deploy agent"
cd /opt/neocloud
/usr/bin/python3.11 -S -m provisioner.pxe.agent --cmdline /proc/cmdline --disk /dev/vda
finish "agent exited with status $?"
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
case "$1" in
    deconfig)
        ip -4 addr flush dev "$interface"
        ip link set "$interface" up
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        if [ -n "$router" ]; then
            ip route add default via "${router%% *}" dev "$interface"
        fi
        ;;
esac
exit 0
"""

# Run by Debian's python3.11 (-I -S): import the agent as ``python -m`` would, exercise what it loads lazily,
# compile every Python source it loaded into <staging> (unchecked-hash pycs: no timestamps to compare) and
# print the loaded files as JSON.
_COLLECTOR = r"""
import importlib, socket, sys
repo, staging, agent, runtime = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
sys.path.insert(0, repo)
importlib.import_module(agent)
for name in runtime:
    importlib.import_module(name)
socket.getaddrinfo("localhost", 80)
b"x".decode("iso-8859-1")
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
import importlib.util, json, py_compile
compiled = []
for path in files:
    if path.endswith(".py"):
        target = path if not path.startswith(repo + "/") else "/opt/neocloud/" + path[len(repo) + 1 :]
        cfile = importlib.util.cache_from_source(target)
        py_compile.compile(path, cfile=staging + cfile, dfile=target, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        compiled.append(cfile)
print(json.dumps({"files": files, "compiled": compiled}))
"""


class RamdiskBuildError(Exception):
    """The deploy ramdisk could not be built (a package, a host binary or a kernel module is missing)."""


@dataclasses.dataclass(frozen=True)
class Ramdisk:
    """A built deploy ramdisk: the two files the boot service serves as ``vmlinuz`` and ``initrd.img``."""

    kernel: Path
    initrd: Path
    kernel_version: str

    @property
    def directory(self) -> Path:
        return self.kernel.parent


# --- the initramfs archive ------------------------------------------------------------------------------


class Cpio:
    """A newc ("070701") cpio archive built in memory: directories, files, symlinks and device nodes, all
    owned by root with time 0, so the same inputs give the same bytes."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[int, bytes, int]] = {}  # path -> (mode, data, rdev)

    def directory(self, path: str) -> None:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            self._entries.setdefault("/".join(parts[:i]), (0o040755, b"", 0))

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        path = path.strip("/")
        if "/" in path:
            self.directory(path.rsplit("/", 1)[0])
        self._entries[path] = (0o100000 | mode, data, 0)

    def symlink(self, path: str, target: str) -> None:
        path = path.strip("/")
        if "/" in path:
            self.directory(path.rsplit("/", 1)[0])
        self._entries[path] = (0o120777, target.encode(), 0)

    def char_device(self, path: str, major: int, minor: int, mode: int = 0o600) -> None:
        path = path.strip("/")
        self.directory(path.rsplit("/", 1)[0])
        self._entries[path] = (0o020000 | mode, b"", (major << 8) | minor)

    def __contains__(self, path: str) -> bool:
        return path.strip("/") in self._entries

    def tobytes(self) -> bytes:
        out = io.BytesIO()
        # Sorted: a directory always comes before what it holds.
        for ino, (name, (mode, data, rdev)) in enumerate(sorted(self._entries.items()), start=1):
            self._write(out, ino, name, mode, data, rdev)
        self._write(out, 0, "TRAILER!!!", 0, b"", 0)
        return out.getvalue()

    @staticmethod
    def _write(out: io.BytesIO, ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o170000 == 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev >> 8, rdev & 0xFF, len(encoded), 0)
        out.write(b"070701" + b"".join(f"{field:08x}".encode() for field in fields))
        out.write(encoded)
        out.write(b"\0" * (-(110 + len(encoded)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))


# --- the pieces -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def build_lock(directory: Path) -> Iterator[None]:
    """Hold ``<directory>/.build.lock`` (flock): two test runs never build into one directory at once."""
    with open(directory / ".build.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_command(cmd: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build step and return its output.

    :raises RamdiskBuildError: it could not start or failed (with the end of its error output).
    """
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise RamdiskBuildError(f"cannot run {cmd[0]}: {exc.strerror}")
    if proc.returncode != 0:
        raise RamdiskBuildError(f"{' '.join(cmd)} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc.stdout


def kernel_package(debs: Path | None = None) -> str:
    """The versioned kernel package to use (e.g. linux-image-6.1.0-56-amd64): the one already downloaded
    into ``debs``, else the one Debian's ``linux-image-amd64`` points at now. Delete the cached .deb to move
    to a newer kernel."""
    override = os.environ.get("NEOCLOUD_RAMDISK_KERNEL_PACKAGE")
    if override:
        return override
    cached = sorted(debs.glob("linux-image-*-amd64_*.deb")) if debs is not None else []
    if cached:
        return cached[-1].name.split("_", 1)[0]
    for line in run_command(["apt-cache", "depends", KERNEL_META_PACKAGE]).splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+)", line)
        if match:
            return match.group(1)
    raise RamdiskBuildError(
        f"apt-cache does not know what {KERNEL_META_PACKAGE} depends on (apt-get update?)"
    )


def download_package(name: str, debs: Path) -> Path:
    """The .deb of package ``name`` in ``debs``, fetched with ``apt-get download`` unless already there."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{name}_*.deb"))
    if not found and os.environ.get(OFFLINE_VARIABLE):
        # the test suite sets it: tests reach only loopback and the lab; scripts/bootstrap.sh downloads
        raise RamdiskBuildError(
            f"{name} is not in {debs} and {OFFLINE_VARIABLE} forbids downloading it: run scripts/bootstrap.sh"
        )
    if not found:
        run_command(["apt-get", "download", "-q", name], cwd=debs)
        found = sorted(debs.glob(f"{name}_*.deb"))
    if not found:
        raise RamdiskBuildError(f"apt-get download {name} gave no .deb in {debs}")
    return found[-1]


def unpack(deb: Path, into: Path) -> Path:
    """Unpack a .deb's files into ``into`` (``dpkg-deb -x``, no maintainer scripts, no root needed)."""
    into.mkdir(parents=True, exist_ok=True)
    run_command(["dpkg-deb", "-x", str(deb), str(into)])
    return into


def module_order(module_dir: Path, roots: Iterable[str]) -> list[Path]:
    """The .ko files for ``roots`` and everything they depend on, dependencies first.

    Debian's kernel package has no modules.dep (depmod makes it on install), so the dependencies come from
    each module's own ``depends=`` modinfo string.

    :raises RamdiskBuildError: a module is not in the kernel package.
    """
    by_name = {path.name.removesuffix(".ko").replace("-", "_"): path for path in module_dir.rglob("*.ko")}
    ordered: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        seen.add(name)
        path = by_name.get(name)
        if path is None:
            raise RamdiskBuildError(f"kernel module {name} is not in {module_dir}")
        match = re.search(rb"\0depends=([A-Za-z0-9_,-]*)\0", path.read_bytes())
        for dependency in match.group(1).decode().split(",") if match else []:
            if dependency:
                visit(dependency)
        ordered.append(path)

    for root in roots:
        visit(root)
    return ordered


def shared_libraries(binaries: Iterable[Path]) -> set[Path]:
    """Every library ``ldd`` lists for the binaries, by the path the dynamic linker finds it at."""
    libraries: set[Path] = set()
    for binary in binaries:
        for line in run_command(["ldd", str(binary)]).splitlines():
            match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
            if match:
                libraries.add(Path(match.group(1)))
    return libraries


def python_modules(
    staging: Path, module: str = AGENT_MODULE, runtime: Iterable[str] = RUNTIME_MODULES
) -> tuple[list[Path], list[str]]:
    """The files Debian's python3.11 loads to run ``module`` (plus ``runtime``), and the .pyc paths
    compiled into ``staging``."""
    if not DEBIAN_PYTHON.exists():
        raise RamdiskBuildError(f"{DEBIAN_PYTHON} is missing (Debian package python3.11-minimal)")
    out = run_command(
        [
            str(DEBIAN_PYTHON), "-I", "-S", "-c", _COLLECTOR,
            str(REPO_ROOT), str(staging), module, ",".join(runtime),
        ]
    )  # fmt: skip
    document = json.loads(out)
    return [Path(f) for f in document["files"]], document["compiled"]


def _inputs_digest(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ProgramFiles:
    """A program taken from this machine: the files Debian's python3.11 loads to run one of our modules,
    the .pyc files compiled for them, and the binaries it runs (their libraries come from ``ldd``)."""

    files: list[Path]
    compiled: list[str]  # paths inside the initramfs, their bytes under ``staging``
    staging: Path
    binaries: list[Path]

    def digest(self) -> str:
        """A hash of every input taken from this machine and of this build script."""
        return _inputs_digest([*self.files, *self.binaries, Path(__file__).resolve()])


def collect_program_files(
    staging: Path, module: str, binaries: list[Path], runtime: Iterable[str] = RUNTIME_MODULES
) -> ProgramFiles:
    """Find (and compile into ``staging``) what running ``python3.11 -m module`` and ``binaries`` needs.

    :raises RamdiskBuildError: Debian's python3.11 or one of the binaries is not installed.
    """
    for binary in (DEBIAN_PYTHON, *binaries):
        if not binary.exists():
            raise RamdiskBuildError(
                f"{binary} is missing (Debian packages python3.11-minimal, libpython3.11-stdlib, "
                "openssh-client, openssh-server)"
            )
    files, compiled = python_modules(staging, module, runtime)
    return ProgramFiles(files, compiled, staging, [DEBIAN_PYTHON, *binaries])


def collect_agent_files(staging: Path) -> ProgramFiles:
    """What the deploy agent needs from this machine: python3.11, its modules, ssh-keygen."""
    return collect_program_files(staging, AGENT_MODULE, [SSH_KEYGEN])


def base_archive(init_script: str, modules: list[Path], busybox: Path, program: ProgramFiles) -> Cpio:
    """An initramfs with ``/init``, busybox, the kernel modules (loaded by /init in this order, listed in
    /etc/neocloud/modules), the DHCP script, and the program with its libraries."""
    archive = Cpio()
    for directory in ("proc", "sys", "dev", "tmp", "run", "root", "etc/neocloud", "usr/bin", "lib/modules"):
        archive.directory(directory)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.file("init", init_script.encode(), 0o755)
    archive.file("bin/busybox", busybox.read_bytes(), 0o755)
    archive.file("etc/neocloud/udhcpc.script", UDHCPC_SCRIPT.encode(), 0o755)
    archive.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    archive.file("etc/group", b"root:x:0:\n")
    archive.file("etc/neocloud/modules", "".join(f"{m.name.removesuffix('.ko')}\n" for m in modules).encode())
    for module in modules:
        archive.file(f"lib/modules/{module.name}", module.read_bytes())
    repo = str(REPO_ROOT) + "/"
    for path in program.files:
        inside = f"{AGENT_ROOT}/{str(path)[len(repo) :]}" if str(path).startswith(repo) else str(path)
        archive.file(inside, path.read_bytes(), 0o755 if path.suffix == ".so" else 0o644)
    for cfile in program.compiled:
        archive.file(cfile, (program.staging / cfile.lstrip("/")).read_bytes())
    for binary in program.binaries:
        archive.file(str(binary), binary.read_bytes(), 0o755)
    extensions = [p for p in program.files if p.suffix == ".so"]
    for library in sorted(shared_libraries(program.binaries + extensions)):
        archive.file(str(library), library.resolve().read_bytes(), 0o755)
    return archive


def write_initrd(archive: Cpio, target: Path) -> None:
    """Write the archive gzip'd (no timestamp) to ``target``, atomically."""
    tmp_target = target.with_name(f".{target.name}.tmp")
    with open(tmp_target, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(archive.tobytes())
    tmp_target.replace(target)


def build_initrd(target: Path, modules: list[Path], busybox: Path, agent: ProgramFiles) -> None:
    """Write the deploy ramdisk's gzip'd initramfs to ``target`` (atomically)."""
    write_initrd(base_archive(INIT_SCRIPT, modules, busybox, agent), target)


def ensure_ramdisk(directory: Path = DEFAULT_DIR) -> Ramdisk:
    """Build (or reuse) the deploy ramdisk in ``directory``: ``vmlinuz`` and ``initrd.img``. Idempotent.

    The first build downloads Debian's kernel (~70 MB) and busybox-static (~1 MB) with ``apt-get download``.

    :raises RamdiskBuildError: a download, a host binary or a kernel module is missing.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with build_lock(directory):
        return _ensure_ramdisk(directory)


def _ensure_ramdisk(directory: Path) -> Ramdisk:
    debs = directory / "debs"
    kernel_deb = download_package(kernel_package(debs), debs)
    busybox_deb = download_package(BUSYBOX_PACKAGE, debs)
    kernel = directory / "vmlinuz"
    initrd = directory / "initrd.img"
    stamp = directory / "stamp.json"
    with tempfile.TemporaryDirectory(prefix="neocloud-ramdisk-") as tmp:
        agent = collect_agent_files(Path(tmp) / "pyc")
        wanted = {"kernel_deb": kernel_deb.name, "busybox_deb": busybox_deb.name, "inputs": agent.digest()}
        current = json.loads(stamp.read_text()) if stamp.exists() else {}
        if {k: current.get(k) for k in wanted} == wanted and kernel.exists() and initrd.exists():
            return Ramdisk(kernel, initrd, str(current["kernel_version"]))
        kernel_tree = unpack(kernel_deb, Path(tmp) / "kernel")
        busybox = unpack(busybox_deb, Path(tmp) / "busybox") / "bin/busybox"
        vmlinuz = sorted((kernel_tree / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise RamdiskBuildError(f"{kernel_deb.name} has no /boot/vmlinuz-*")
        if not busybox.exists():
            raise RamdiskBuildError(f"{busybox_deb.name} has no /bin/busybox")
        version = vmlinuz[-1].name.removeprefix("vmlinuz-")
        modules = module_order(kernel_tree / "lib/modules" / version, ROOT_MODULES)
        stamp.unlink(missing_ok=True)
        shutil.copyfile(vmlinuz[-1], kernel)
        build_initrd(initrd, modules, busybox, agent)
    stamp.write_text(json.dumps({**wanted, "kernel_version": version}, indent=1))
    return Ramdisk(kernel, initrd, version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the lab's deploy ramdisk (Debian kernel + our agent)."
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    try:
        ramdisk = ensure_ramdisk(args.dir)
    except RamdiskBuildError as exc:
        print(f"ramdisk: {exc}", file=sys.stderr)
        return 1
    print(f"kernel {ramdisk.kernel} ({ramdisk.kernel_version}, {ramdisk.kernel.stat().st_size} bytes)")
    print(f"initrd {ramdisk.initrd} ({ramdisk.initrd.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
