"""The ``qemu`` kind of lab server: the lab BMC's power commands drive an emulated computer.

Where a ``simulated`` node's firmware (lab.firmware) fetches the iPXE script itself and runs
the agent on the host, a ``qemu`` node is a QEMU computer (lab.qemu: TCG, never KVM) with the
node's MAC and its file-backed disk on virtio:

- power on, boot device PXE: QEMU starts with the network first: Debian's iPXE ROM takes slirp's DHCP
  bootfile ``http://10.0.2.100/boot/${mac:hexhyp}.ipxe``, relayed to the lab's boot service, and boots what
  the script says (the deploy ramdisk of lab.ramdisk runs the agent, then powers off);
- power on, boot device DISK: QEMU starts with the disk first (SeaBIOS boots whatever is on it: the lab
  OS image of lab.osimage starts sshd, reached at 127.0.0.1:``spec.ssh_forward_port``);
- power off: QMP ``quit``, as a hard power-off; the QEMU process is gone when the hook returns.

Cabled to the lab switch (``lab up --switch --kind qemu``: ``spec.switch_port``), the NIC is instead a tap
that is the switch's port ``swp<index>`` (lab.switch.add_tap_port; opened in the switch's namespace at each
power-on and handed to QEMU as ``-netdev tap,fd=``). Then the computer is on whatever VLAN the switch puts
its port on: on the provisioning VLAN, the lab's dnsmasq (lab.switched.start_pxe_service) gives it its
address and points its iPXE at the boot service at 198.18.0.1, which it reaches, as the image server, through
the lab's provisioning relay; its sshd is reached at its own address. Without the switch:

The guest reaches two host services, both on loopback: the boot service (the port of ``boot_url``) at
10.0.2.100:80 and the lab image server (``spec.image_port``) at 10.0.2.101:80. Image URLs handed to a
``qemu`` node must therefore name 10.0.2.101, not 127.0.0.1 (the guest's own loopback). The fault
injections of the simulated firmware (agent crash, image corruption) do not reach a guest's agent.

A computer that powers itself off (the deploy ramdisk when it is done, an OS's ``poweroff``) makes QEMU exit;
the BMC then reports power off (``halted``), as a real BMC reads the host's power from its rails, and the
engine's reset after the deploy powers it on again. QEMU's console is ``nodes/<name>/qemu/console.log``.
"""

from __future__ import annotations

import datetime
import os
import threading
from pathlib import Path
from urllib.parse import urlsplit

from lab import post
from lab.qemu import GuestForward, QemuComputer
from lab.spec import LabNodeSpec
from lab.switch import LabSwitchError, open_tap_port
from provisioner.drivers.base import BootDevice, BootSetting

BOOT_SERVICE_GUEST_ADDRESS = "10.0.2.100"
IMAGE_SERVER_GUEST_ADDRESS = "10.0.2.101"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class QemuFirmwareError(ValueError):
    """The node cannot be an emulated computer: its boot URL is not an http URL on this host's loopback."""


class QemuFirmware:
    """FirmwareHooks for a ``qemu`` lab node. Thread-safe: one QEMU process at a time per node."""

    def __init__(self, spec: LabNodeSpec, lab_dir: Path, boot_url: str) -> None:
        parts = urlsplit(boot_url)
        if parts.scheme != "http" or parts.hostname not in LOOPBACK_HOSTS or parts.port is None:
            raise QemuFirmwareError(
                f"a qemu lab node needs the boot service at http://127.0.0.1:<port>, not {boot_url!r}"
            )
        self.spec = spec
        self.node_dir = Path(lab_dir) / "nodes" / spec.name
        self.node_dir.mkdir(parents=True, exist_ok=True)
        # cabled to the lab switch (a tap in its port): the provisioning VLAN's DHCP service and relay instead
        self.switched = bool(spec.switch_port)
        self.forwards = (
            []
            if self.switched
            else [
                GuestForward(BOOT_SERVICE_GUEST_ADDRESS, 80, parts.port),
                GuestForward(IMAGE_SERVER_GUEST_ADDRESS, 80, spec.image_port),
            ]
        )
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every power change: a POST of an earlier power-on stops
        self.computer: QemuComputer | None = None

    def on_power_on(self, spec: LabNodeSpec, boot: BootSetting) -> None:
        """Start the power-on self-test, then QEMU booting ``boot.device`` first, on a thread of their own (the
        node's hooks thread stays free for a power-off, which ends the POST). Idempotent while it runs."""
        with self._lock:
            if self.computer is not None and self.computer.running():
                return
            self._generation += 1
            generation = self._generation
            self.computer = None  # a QEMU that exited by itself is gone; none runs during the POST
        threading.Thread(
            target=self._post_then_start,
            args=(spec, boot, generation),
            name=f"qemu-post-{spec.name}",
            daemon=True,
        ).start()

    def _post_then_start(self, spec: LabNodeSpec, boot: BootSetting, generation: int) -> None:
        network = boot.device == BootDevice.PXE
        if not post.run(
            self.node_dir, spec.post_seconds, lambda: self._generation == generation, self._console
        ):
            return
        with self._lock:
            if self._generation != generation or (self.computer is not None and self.computer.running()):
                return
            tap_fd = None
            if self.switched:
                try:
                    tap_fd = open_tap_port(spec.switch_name, spec.switch_port)
                except LabSwitchError as exc:
                    self._console(f"power on: no link: {exc}")
                    return
            self.computer = QemuComputer(
                workdir=self.node_dir / "qemu",
                mac=spec.mac,
                disk=Path(spec.disk_path),
                forwards=self.forwards,
                host_forwards=[(spec.ssh_forward_port, 22)] if spec.ssh_forward_port else [],
                bootfile=None
                if self.switched
                else f"http://{BOOT_SERVICE_GUEST_ADDRESS}/boot/${{mac:hexhyp}}.ipxe",
                boot_from="network" if network else "disk",
                tap_fd=tap_fd,
            )
            try:
                self.computer.start()
            finally:
                if tap_fd is not None:
                    os.close(tap_fd)  # QEMU holds its own copy
            process = self.computer.process
        self._console(
            f"power on: QEMU (pid {process.pid if process else None}) boots "
            f"{'the network' if network else 'the disk'} first"
        )
        # QEMU dies with the thread that started it (PR_SET_PDEATHSIG follows the parent *thread*, lab/qemu.py):
        # this thread lives as long as the QEMU it started
        if process is not None:
            process.wait()

    def halted(self, spec: LabNodeSpec) -> bool:
        """Whether QEMU exited by itself since the last power on (the guest powered the computer off)."""
        computer = self.computer  # no lock: a power off in progress holds it for seconds (QMP quit)
        return computer is not None and computer.process is not None and not computer.running()

    def on_power_off(self, spec: LabNodeSpec) -> None:
        """QMP ``quit`` (then SIGTERM/SIGKILL); returns when QEMU is gone. Idempotent."""
        with self._lock:
            self._generation += 1  # ends a POST in progress; its thread starts no QEMU after this
        post.write_state(self.node_dir, "off")
        with self._lock:
            computer = self.computer
            was_running = computer is not None and computer.running()
            if computer is not None:
                computer.power_off()
        self._console("power off: QEMU quit" if was_running else "power off: QEMU was not running")

    def _console(self, line: str) -> None:
        stamp = datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")
        with open(self.node_dir / "console.log", "a") as fh:
            fh.write(f"{stamp} {line}\n")
