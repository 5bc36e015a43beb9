"""The simulated server behind a lab BMC: power state, boot device, firmware hooks, fault injection.

``SimulatedServer`` is what a real BMC controls: it really changes power state and boot device, a
one-time boot override is consumed by the next boot (then the persistent device applies again), and
every power change calls the firmware hooks so the simulated firmware can PXE-boot or boot the disk.

State persists in ``<node dir>/state.json`` (written atomically on every change) so that
``lab status`` can read it and a restarted node process keeps it. Faults are read from
``<node dir>/faults.json`` on each BMC request so a test can inject them into a running lab:
``{"delay": 0.5}`` (answer slowly), ``{"drop": true}`` (never answer), ``{"unsupported_boot": ["pxe",
"legacy"]}`` (refuse those boot devices or modes), ``{"boot_flag_timeout": 0.5}`` (the IPMI BMC's 60 s
boot-flag timer, shortened), ``{"wrong_power": true}`` (a wrong answer: report the opposite power state;
commands still act on the real one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any, Protocol

from lab.spec import LabNodeSpec
from provisioner.drivers.base import BootDevice, BootMode, BootSetting, PowerState

STATE_FILE = "state.json"
FAULTS_FILE = "faults.json"


class FirmwareHooks(Protocol):
    """What the firmware hangs on power changes (lab.firmware, lab.qemu_firmware).
    ``on_power_on`` is called under the server's lock and must return at once."""

    def on_power_on(self, spec: LabNodeSpec, boot: BootSetting) -> None: ...

    def on_power_off(self, spec: LabNodeSpec) -> None: ...

    def halted(self, spec: LabNodeSpec) -> bool:
        """Whether the machine powered itself off since its last power on (its OS shut down)."""
        ...


class NoFirmware:
    """Hooks that do nothing: used when lab.firmware is not installed."""

    def on_power_on(self, spec: LabNodeSpec, boot: BootSetting) -> None:
        return None

    def on_power_off(self, spec: LabNodeSpec) -> None:
        return None

    def halted(self, spec: LabNodeSpec) -> bool:
        return False


@dataclasses.dataclass(frozen=True)
class Faults:
    """Faults injected into one lab BMC (see the module docstring)."""

    delay: float = 0.0
    drop: bool = False
    unsupported_boot: frozenset[str] = frozenset()
    # IPMI: seconds a boot flag stays valid without a chassis power command (IPMI 2.0 sec. 28.12: 60)
    boot_flag_timeout: float = 60.0
    wrong_power: bool = False

    def refuses(self, setting: BootSetting) -> bool:
        return setting.device.value in self.unsupported_boot or setting.mode.value in self.unsupported_boot


NO_FAULTS = Faults()


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so that a concurrent reader sees the old or the new file, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def read_state_file(node_dir: Path) -> dict[str, Any]:
    """The persisted state of a node ({} when the node never ran). Idempotent."""
    try:
        return json.loads((node_dir / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def write_faults(node_dir: Path, **faults: Any) -> None:
    """Inject faults into a (running) lab node; no arguments clears them. Idempotent."""
    node_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(node_dir / FAULTS_FILE, faults)


class SimulatedServer:
    """One lab server. Thread-safe: the Redfish endpoint serves requests from several threads."""

    def __init__(self, spec: LabNodeSpec, node_dir: Path | None, hooks: FirmwareHooks | None = None) -> None:
        self.spec = spec
        self.node_dir = node_dir
        self.hooks: FirmwareHooks = hooks or NoFirmware()
        self._lock = threading.RLock()
        self.power = PowerState.OFF
        self.persistent = BootSetting(BootDevice.DISK, persistent=True, mode=BootMode.UEFI)
        self.override: BootSetting | None = None
        self.boots = 0
        self._faults_mtime: tuple[int, int, int] | None = None
        self._faults = NO_FAULTS
        if node_dir is not None:
            self._load(read_state_file(node_dir))
            self._save()  # so that `lab status` shows the state from the first second

    # --- persistence ------------------------------------------------------------------------------

    def _load(self, data: dict[str, Any]) -> None:
        if not data:
            return
        self.power = PowerState(data.get("power", "off"))
        self.persistent = _setting_from(data.get("persistent_boot")) or self.persistent
        self.override = _setting_from(data.get("boot_override"))
        self.boots = int(data.get("boots", 0))

    def _save(self) -> None:
        if self.node_dir is None:
            return
        current = self.boot_setting()
        write_json_atomic(
            self.node_dir / STATE_FILE,
            {
                "name": self.spec.name,
                "power": self.power.value,
                "boot_device": current.device.value,
                "boot_persistent": current.persistent,
                "boot_mode": current.mode.value,
                "persistent_boot": _setting_to(self.persistent),
                "boot_override": _setting_to(self.override) if self.override else None,
                "boots": self.boots,
                "pid": os.getpid(),
            },
        )

    def faults(self) -> Faults:
        """The faults injected right now (re-read when faults.json changes)."""
        if self.node_dir is None:
            return NO_FAULTS
        path = self.node_dir / FAULTS_FILE
        try:
            st = path.stat()
            # faults.json is replaced atomically: a new inode marks a change even within one mtime tick
            mtime = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self._faults_mtime, self._faults = None, NO_FAULTS
            return NO_FAULTS
        if mtime != self._faults_mtime:
            try:
                data = json.loads(path.read_text() or "{}")
            except json.JSONDecodeError:
                data = {}
            self._faults = Faults(
                delay=float(data.get("delay", 0.0)),
                drop=bool(data.get("drop", False)),
                unsupported_boot=frozenset(data.get("unsupported_boot", ())),
                boot_flag_timeout=float(data.get("boot_flag_timeout", 60.0)),
                wrong_power=bool(data.get("wrong_power", False)),
            )
            self._faults_mtime = mtime
        return self._faults

    # --- what the BMC does ------------------------------------------------------------------------

    def power_state(self) -> PowerState:
        with self._lock:
            self._observe_halt()
            return self.power

    def reported_power_state(self) -> PowerState:
        """The power state the BMC answers with: the real one, or its opposite under a wrong_power fault."""
        power = self.power_state()
        if self.faults().wrong_power:
            return PowerState.OFF if power == PowerState.ON else PowerState.ON
        return power

    def _observe_halt(self) -> None:
        """A machine that powered itself off (its OS ran ``poweroff``) is off, as a BMC reads it from the
        power rails; call with the lock held."""
        if self.power == PowerState.ON and self.hooks.halted(self.spec):
            self.power = PowerState.OFF
            self._save()

    def boot_setting(self) -> BootSetting:
        """The device the next boot uses: the one-time override if set, else the persistent one."""
        with self._lock:
            return self.override or self.persistent

    def set_boot(self, setting: BootSetting) -> None:
        """Set the next boot device. Idempotent. Raises ValueError when the device is refused."""
        if self.faults().refuses(setting):
            raise ValueError(f"boot {setting.device.value}/{setting.mode.value} not supported")
        with self._lock:
            if setting.persistent:
                self.persistent = setting
                self.override = None
            else:
                self.override = setting
            self._save()

    def clear_override(self) -> None:
        """Forget the one-time boot device (the persistent one applies again). Idempotent."""
        with self._lock:
            if self.override is not None:
                self.override = None
                self._save()

    def power_on(self) -> None:
        """Power on (booting the next boot device). Idempotent."""
        with self._lock:
            self._observe_halt()
            if self.power == PowerState.ON:
                return
            self.power = PowerState.ON
            boot = self._consume_boot()
            self._save()
            # under the lock: a power_state() in between would ask the hooks about the previous boot
            self.hooks.on_power_on(self.spec, boot)

    def power_off(self) -> None:
        """Power off (hard or soft: the simulation has no OS to wait for). Idempotent."""
        with self._lock:
            if self.power == PowerState.OFF:
                return
            self.power = PowerState.OFF
            self._save()
        self.hooks.on_power_off(self.spec)

    def reset(self) -> None:
        """Reboot a running server; power on one that is off."""
        with self._lock:
            self._observe_halt()
            was_on = self.power == PowerState.ON
        if was_on:
            self.power_off()
        self.power_on()

    def _consume_boot(self) -> BootSetting:
        boot = self.override or self.persistent
        self.override = None
        self.boots += 1
        return boot


def _setting_to(setting: BootSetting) -> dict[str, Any]:
    return {"device": setting.device.value, "persistent": setting.persistent, "mode": setting.mode.value}


def _setting_from(data: dict[str, Any] | None) -> BootSetting | None:
    if not data:
        return None
    return BootSetting(
        BootDevice(data["device"]), persistent=bool(data["persistent"]), mode=BootMode(data["mode"])
    )
