"""A fake power driver whose hardware is a small JSON file per BMC, shared between processes.

``<dir>/<address>_<port>.json`` holds the fake BMC: ``power``, ``boot`` (device/persistent/mode),
``password`` (when set, the caller's password must match), ``unsupported_boot`` (devices or modes it
refuses) and ``fault``: ``"timeout"`` (never answers: BmcTimeout, a BmcUnreachable, after access.timeout),
``"auth"`` (refuses credentials), ``"slow"`` (answers after ``slow_seconds``, default 0.5 s) or
``"command"`` (refuses every command). The directory comes from ``NEOCLOUD_FAKE_HW_DIR``, else
``var/fake-hw``. A file lock (fcntl) serializes read-modify-write, so a test and a worker process see
and change the same fake hardware.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from provisioner.drivers.base import BmcAccess, BootDevice, BootMode, BootSetting, PowerDriver, PowerState
from provisioner.errors import BmcAuthFailed, BmcCommandFailed, BmcTimeout, UnsupportedOperation

DEFAULT_DIR = "var/fake-hw"
DEFAULT_STATE: dict[str, Any] = {
    "power": "off",
    "boot": {"device": "disk", "persistent": True, "mode": "uefi"},
    "override": None,
    "fault": None,
}


def fake_hw_dir() -> Path:
    return Path(os.environ.get("NEOCLOUD_FAKE_HW_DIR", DEFAULT_DIR))


def fake_bmc_path(access: BmcAccess, directory: Path | None = None) -> Path:
    return (directory or fake_hw_dir()) / f"{access.address}_{access.port}.json"


def write_fake_bmc(access: BmcAccess, directory: Path | None = None, **fields: Any) -> Path:
    """Create or update a fake BMC's file (e.g. ``fault="timeout"``). Idempotent."""
    path = fake_bmc_path(access, directory)
    with _locked(path) as state:
        state.update(fields)
    return path


def read_fake_bmc(access: BmcAccess, directory: Path | None = None) -> dict[str, Any]:
    path = fake_bmc_path(access, directory)
    with _locked(path) as state:
        return dict(state)


@contextlib.contextmanager
def locked_state(path: Path, defaults: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield the JSON file's state (``defaults`` for keys it lacks) under an exclusive lock, shared between
    processes, and write it back afterwards: the fake hardware's (BMCs, switches) one store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            fresh = json.loads(
                json.dumps(defaults)
            )  # a copy: the defaults' own lists and dicts stay unshared
            try:
                state = {**fresh, **json.loads(path.read_text())}
            except (FileNotFoundError, json.JSONDecodeError):
                state = fresh
            yield state
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _locked(path: Path) -> contextlib.AbstractContextManager[dict[str, Any]]:
    return locked_state(path, DEFAULT_STATE)


class FakePowerDriver(PowerDriver):
    """PowerDriver over a JSON file; behaves like the lab BMCs, including their faults."""

    def __init__(self, access: BmcAccess, directory: Path | None = None) -> None:
        super().__init__(access)
        self.path = fake_bmc_path(access, directory)

    @contextlib.contextmanager
    def _bmc(self) -> Iterator[dict[str, Any]]:
        # faults are applied outside the file lock so a hung fake BMC does not block other callers
        with _locked(self.path) as peek:
            fault, expected = peek.get("fault"), peek.get("password")
            slow = float(peek.get("slow_seconds", 0.5))
        unreachable = BmcTimeout(
            f"{self.access.label} did not answer within {self.access.timeout:.1f} s; check the BMC's "
            "network and power (the node's power state is unknown until it answers)"
        )
        if fault == "timeout" or (fault == "slow" and slow >= self.access.timeout):
            time.sleep(self.access.timeout)  # a BMC that never answers costs the caller its timeout
            raise unreachable
        if fault == "auth" or (expected is not None and expected != self.access.password):
            raise BmcAuthFailed(
                f"{self.access.label} refused the credentials of user {self.access.username!r}; "
                "check the BMC user and password"
            )
        if fault == "slow":
            time.sleep(slow)
        if fault == "command":
            raise BmcCommandFailed(f"{self.access.label} refused the command (injected fault)")
        with _locked(self.path) as state:
            yield state

    def get_power_state(self) -> PowerState:
        """Idempotent. :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:"""
        with self._bmc() as state:
            return PowerState(state["power"])

    def power_on(self) -> None:
        """Idempotent; consumes a one-time boot override when it powers on."""
        with self._bmc() as state:
            if state["power"] != "on":
                state["power"] = "on"
                state["override"] = None
                state["boots"] = int(state.get("boots", 0)) + 1

    def power_off(self, *, soft: bool = False) -> None:
        """Idempotent."""
        with self._bmc() as state:
            state["power"] = "off"

    def reset(self) -> None:
        """Reboots (consuming a one-time override); powers on a node that is off."""
        with self._bmc() as state:
            state["power"] = "on"
            state["override"] = None
            state["boots"] = int(state.get("boots", 0)) + 1

    def set_boot_device(self, setting: BootSetting) -> None:
        """Idempotent. :raises UnsupportedOperation: device or mode listed in ``unsupported_boot``."""
        with self._bmc() as state:
            refused = set(state.get("unsupported_boot", ()))
            if setting.device.value in refused or setting.mode.value in refused:
                raise UnsupportedOperation(
                    f"{self.access.label} does not support booting {setting.device.value} in "
                    f"{setting.mode.value} mode"
                )
            value = {
                "device": setting.device.value,
                "persistent": setting.persistent,
                "mode": setting.mode.value,
            }
            if setting.persistent:
                state["boot"], state["override"] = value, None
            else:
                state["override"] = value

    def get_boot_device(self) -> BootSetting:
        """Idempotent: the one-time override if set, else the persistent device."""
        with self._bmc() as state:
            value = state.get("override") or state["boot"]
            return BootSetting(
                BootDevice(value["device"]), bool(value["persistent"]), BootMode(value["mode"])
            )
