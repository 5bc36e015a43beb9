"""What the engine needs from hardware, one abstract class per concern.

Every driver method documents whether it is idempotent and what it raises. Implementations:
``fake.py`` (file-backed simulation, used by tests of the engine), ``ipmi.py`` (pyghmi),
``redfish.py`` (sushy). All of them pass the same contract tests (tests/drivers/test_contract.py).

Drivers never log or put credentials in messages; ``BmcAccess.__repr__`` masks the password.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
from collections.abc import Mapping
from typing import Any


class PowerState(enum.StrEnum):
    ON = "on"
    OFF = "off"
    UNKNOWN = "unknown"  # the BMC did not answer: never guessed as "off"


class BootDevice(enum.StrEnum):
    PXE = "pxe"
    DISK = "disk"


class BootMode(enum.StrEnum):
    UEFI = "uefi"
    LEGACY = "legacy"


@dataclasses.dataclass(frozen=True)
class BootSetting:
    device: BootDevice
    persistent: bool = False
    mode: BootMode = BootMode.UEFI


@dataclasses.dataclass(frozen=True)
class BmcAccess:
    """How to reach one BMC. ``system_id`` picks the Redfish ComputerSystem when a BMC has several."""

    protocol: str  # "ipmi" | "redfish" | "fake"
    address: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    system_id: str = ""
    timeout: float = 5.0
    verify_tls: bool = False

    def __repr__(self) -> str:  # never show the password, even in tracebacks
        return (
            f"BmcAccess(protocol={self.protocol!r}, address={self.address!r}, port={self.port}, "
            f"username={self.username!r}, password='***', system_id={self.system_id!r})"
        )

    @property
    def label(self) -> str:
        """A printable name for messages: protocol://address:port (no credentials)."""
        return f"{self.protocol}://{self.address}:{self.port}"


class PowerDriver(abc.ABC):
    """Power and boot-device control through a node's BMC."""

    def __init__(self, access: BmcAccess) -> None:
        self.access = access

    @abc.abstractmethod
    def get_power_state(self) -> PowerState:
        """Read the power state. Idempotent.

        :raises BmcUnreachable: no answer within ``access.timeout`` (callers record UNKNOWN).
        :raises BmcAuthFailed: credentials refused.
        """

    @abc.abstractmethod
    def power_on(self) -> None:
        """Power on. Idempotent: a node already on stays on.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """

    @abc.abstractmethod
    def power_off(self, *, soft: bool = False) -> None:
        """Power off: hard by default, ACPI soft-off when ``soft``. Idempotent.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        :raises UnsupportedOperation: soft off is not advertised by the BMC.
        """

    @abc.abstractmethod
    def reset(self) -> None:
        """Hard reset a running node; a node that is off is powered on. Not idempotent
        (each call reboots), so the engine only calls it from steps that expect a reboot.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """

    @abc.abstractmethod
    def set_boot_device(self, setting: BootSetting) -> None:
        """Set the next boot device (once) or the persistent one. Idempotent.

        :raises UnsupportedOperation: the device or mode is not offered by the BMC.
        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """

    @abc.abstractmethod
    def get_boot_device(self) -> BootSetting:
        """Read the boot device back. Idempotent.

        :raises BmcUnreachable, BmcAuthFailed:
        """

    def get_sensors(self) -> Mapping[str, float]:
        """Read sensors (temperatures in °C, power in W) keyed by name. Idempotent.
        Default: no sensors."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions held with the BMC."""


@dataclasses.dataclass
class DeployRequest:
    """What a deploy writes to a node: the image and the node's configuration."""

    node_name: str
    boot_mac: str
    image_url: str
    image_sha256: str
    image_format: str
    hostname: str
    authorized_keys: list[str]
    provisioning_public_key: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DeployResult:
    address: str  # where the deployed OS answers SSH
    ssh_port: int
    host_key_fingerprints: dict[str, str]  # key type -> "SHA256:..."
    known_hosts: str
    log: list[str] = dataclasses.field(default_factory=list)


class DeployDriver(abc.ABC):
    """Writes an image and configuration to a node's disk and boots it."""

    @abc.abstractmethod
    def deploy(self, request: DeployRequest, log: Any) -> DeployResult:
        """Deploy. Idempotent: running it again rewrites the disk from scratch.

        :raises ImageChecksumMismatch: the written image does not match its sha256.
        :raises DeployFailed: the agent failed or never called back.
        """

    @abc.abstractmethod
    def handover(self, request: HandoverRequest, log: Any) -> HandoverResult:
        """Give the deployed node to its customer: verify its host keys, remove the provisioning key,
        prove the customer's keys still work. Idempotent (a second run finds our key already gone).

        :raises DriverError: host key mismatch, SSH unreachable, or our key still accepted afterwards.
        """

    @abc.abstractmethod
    def wipe(self, node_name: str, log: Any) -> None:
        """Power off, overwrite the disk (config drive included), reset boot settings. Idempotent.

        :raises DeployFailed:
        """


class BurnInDriver(abc.ABC):
    """Runs the GPU burn-in on a deployed node and returns its JSON report."""

    @abc.abstractmethod
    def run(self, node_name: str, expectations: Mapping[str, Any], log: Any) -> dict[str, Any]:
        """Run all checks and return the report (``{"passed": bool, "checks": [...]}``). Idempotent.

        :raises NvmlUnavailable: NVML could not be loaded on the node.
        :raises DriverError: the agent could not be run.
        """


@dataclasses.dataclass
class HandoverRequest:
    """Hand a deployed node to its customer: keep their keys, verify host keys, remove ours."""

    node_name: str
    address: str
    port: int
    username: str
    expected_fingerprints: dict[str, str]
    provisioning_private_key: str = dataclasses.field(repr=False)
    provisioning_public_key: str
    customer_keys: list[str]


@dataclasses.dataclass
class HandoverResult:
    host_key_fingerprints: dict[str, str]
    known_hosts: str
    ssh_command: str
