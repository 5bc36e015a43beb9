"""An emulated lab computer: QEMU under software emulation (TCG, never KVM) with a virtio NIC and disk.

The computer's network is QEMU's user-mode stack with ``restrict=on``: the guest reaches nothing on the
host or beyond except the addresses forwarded with ``guestfwd`` (each connection is relayed to a loopback
port by lab/guestfwd_relay.py); ``host_forwards`` (``hostfwd``, bound to 127.0.0.1) let this host
reach a guest port such as its sshd. Its DHCP server (slirp, 10.0.2.2) gives the guest 10.0.2.15
and, for a network boot, a ``bootfile`` URL. Booted from the network with no ``kernel`` given, SeaBIOS
runs Debian's iPXE ROM for virtio-net (package ipxe-qemu), which fetches that bootfile; given ``kernel``
and ``initrd``, QEMU loads them directly (for tests of the ramdisk alone).

The serial console goes to ``<workdir>/console.log``, line by line through a thread that masks the one-time
deploy token (the kernel prints its command line, which carries ``neocloud.token=``); QMP listens on ``<workdir>/qmp.sock``, so
``power_off()`` ends the machine the way a BMC's hard power-off would (``quit``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

QEMU_BINARY = "qemu-system-x86_64"
# QEMU loads the virtio-net boot ROM from ipxe-qemu by itself; its presence is what a network boot needs.
IPXE_ROM = Path("/usr/lib/ipxe/qemu/efi-virtio.rom")
RELAY = Path(__file__).with_name("guestfwd_relay.py")
GUEST_ADDRESS = "10.0.2.15"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
TOKEN_ARGUMENT = re.compile(rb"(neocloud\.token=)[^\s\x1b]+")


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started QEMU dies, so a lab node that is
    killed never leaves its computer running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class QemuError(Exception):
    """QEMU is missing, would not start, or did not answer on QMP."""


def qemu_available() -> bool:
    """True when qemu-system-x86_64 and Debian's iPXE ROM for QEMU are installed."""
    return shutil.which(QEMU_BINARY) is not None and IPXE_ROM.exists()


@dataclasses.dataclass(frozen=True)
class GuestForward:
    """Guest connections to ``guest_address:guest_port`` are relayed to ``127.0.0.1:host_port``."""

    guest_address: str  # inside slirp's 10.0.2.0/24, e.g. 10.0.2.100
    guest_port: int
    host_port: int

    def netdev_option(self) -> str:
        command = f"{sys.executable} {RELAY} {self.host_port}"
        if "," in command:
            raise QemuError(
                f"the relay command {command!r} has a comma, which QEMU's option syntax splits on"
            )
        return f"guestfwd=tcp:{self.guest_address}:{self.guest_port}-cmd:{command}"


@dataclasses.dataclass
class QemuComputer:
    """One emulated computer. ``start()`` powers it on, ``power_off()`` ends it; also a context manager."""

    workdir: Path
    mac: str
    disk: Path
    forwards: list[GuestForward] = dataclasses.field(default_factory=list)
    # (host port, guest port): 127.0.0.1:<host port> on this host reaches the guest's TCP <guest port>
    host_forwards: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    bootfile: str | None = None  # DHCP bootfile for a network boot (iPXE expands ${mac:hexhyp})
    # a tap's descriptor (lab.switch.open_tap_port): the NIC is cabled to a lab switch port instead of QEMU's
    # user network (no forwards, no bootfile: the switch's VLAN and its DHCP service decide what it reaches)
    tap_fd: int | None = None
    boot_from: str = "network"  # "network" or "disk": which the firmware tries first (the other second)
    kernel: Path | None = None  # direct kernel boot instead of the network
    initrd: Path | None = None
    append: str = ""
    memory_mib: int = 1024
    process: subprocess.Popen[bytes] | None = dataclasses.field(default=None, init=False, repr=False)
    _console_copier: threading.Thread | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def console_path(self) -> Path:
        return self.workdir / "console.log"

    @property
    def qmp_path(self) -> Path:
        return self.workdir / "qmp.sock"

    def command(self) -> list[str]:
        """The QEMU command line. Pure."""
        if self.tap_fd is not None:
            netdev = f"tap,id=n0,fd={self.tap_fd}"
        else:
            netdev = ",".join(
                ["user", "id=n0", "restrict=on"]
                + [forward.netdev_option() for forward in self.forwards]
                + [f"hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in self.host_forwards]
                + ([f"bootfile={self.bootfile}"] if self.bootfile else [])
            )
        if self.boot_from not in ("network", "disk"):
            raise QemuError(f"boot_from must be 'network' or 'disk', not {self.boot_from!r}")
        net_index, disk_index = (1, 2) if self.boot_from == "network" else (2, 1)
        cmd = [
            QEMU_BINARY, "-accel", "tcg", "-nographic", "-nodefaults", "-serial", "stdio",
            "-m", str(self.memory_mib), "-no-reboot",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-netdev", netdev,
            "-device", f"virtio-net-pci,netdev=n0,mac={self.mac},bootindex={net_index}",
            "-drive", f"file={self.disk},format=raw,if=none,id=disk0,cache=unsafe",
            "-device", f"virtio-blk-pci,drive=disk0,bootindex={disk_index}",
        ]  # fmt: skip
        if self.kernel is not None:
            cmd += ["-kernel", str(self.kernel), "-append", self.append]
            if self.initrd is not None:
                cmd += ["-initrd", str(self.initrd)]
        elif self.boot_from == "network":
            cmd += ["-boot", "n"]
        return cmd

    def start(self) -> None:
        """Power on: start QEMU. Not idempotent (a running computer raises).

        :raises QemuError: already running, or QEMU is not installed.
        """
        if self.running():
            raise QemuError("the computer is already running")
        if shutil.which(QEMU_BINARY) is None:
            raise QemuError(f"{QEMU_BINARY} is not installed (Debian package qemu-system-x86)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.qmp_path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            pass_fds=() if self.tap_fd is None else (self.tap_fd,),
        )
        self._console_copier = threading.Thread(
            target=self._copy_console, args=(self.process.stdout,), name="qemu-console", daemon=True
        )
        self._console_copier.start()

    def _copy_console(self, pipe: IO[bytes]) -> None:
        with pipe, open(self.console_path, "ab") as console:
            for line in pipe:
                console.write(TOKEN_ARGUMENT.sub(rb"\1***", line))
                console.flush()

    def _console_done(self, timeout: float = 5.0) -> None:
        if self._console_copier is not None:
            self._console_copier.join(timeout)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the computer to power itself off; its exit code, or None."""
        if self.process is None:
            return None
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._console_done()
        return code

    def power_off(self, timeout: float = 10.0) -> None:
        """Hard power-off: QMP ``quit``, then SIGTERM/SIGKILL if QEMU does not go. Idempotent."""
        if not self.running():
            return
        with contextlib.suppress(QemuError, OSError):
            self.qmp("quit")
        if self.wait(timeout) is None and self.process is not None:
            self.process.terminate()
            if self.wait(timeout) is None:
                self.process.kill()
                self.process.wait(timeout=timeout)
                self._console_done()

    def qmp(self, command: str, timeout: float = 5.0) -> dict[str, object]:
        """Run one QMP command and return its answer.

        :raises QemuError: QMP did not answer, or answered with an error.
        """
        deadline = time.monotonic() + timeout
        while not self.qmp_path.exists():
            if time.monotonic() > deadline:
                raise QemuError(f"QMP socket {self.qmp_path} did not appear")
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("rb")
            json.loads(reader.readline())  # the greeting
            answer: dict[str, object] = {}
            for name in ("qmp_capabilities", command):
                sock.sendall(json.dumps({"execute": name}).encode() + b"\n")
                while True:
                    line = reader.readline()
                    if not line:
                        if name == "quit":
                            return answer  # QEMU closed the connection while quitting
                        raise QemuError(f"QMP closed the connection during {name}")
                    answer = json.loads(line)
                    if "return" in answer or "error" in answer:
                        break  # events ({"event": ...}) are skipped
                if "error" in answer:
                    raise QemuError(f"QMP {name} failed: {answer['error']}")
            return answer

    def console(self) -> str:
        """The serial console output so far."""
        try:
            return self.console_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def __enter__(self) -> QemuComputer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.power_off()
