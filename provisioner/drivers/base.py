"""What the engine needs from hardware, one abstract class per concern.

Every driver method documents whether it is idempotent and what it raises. Implementations:
``fake.py`` (file-backed simulation, used by tests of the engine), ``ipmi.py`` (pyghmi),
``redfish.py`` (sushy). All of them pass the same contract tests (tests/drivers/test_contract.py).

Drivers never log or put credentials in messages; ``BmcAccess.__repr__`` masks the password.

Every interface has ``validate(node)`` (after Ironic's ``BaseInterface.validate``): a class method that checks
a node's record (a ``NodeRecord``: plain values, no password) for what the driver will need, without any
I/O, so that bad node data is refused when work is accepted (a 400 naming the node and the field) instead
of failing a step later and leaving the node in error. Subclasses add their own rules and call the base.
"""

from __future__ import annotations

import abc
import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any

from provisioner.errors import InvalidNodeData, InvalidRequest


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
    """How to reach one BMC. ``system_id`` picks the Redfish ComputerSystem when a BMC has several;
    ``scheme`` is the Redfish service's URL scheme (http or https, from the node's record; IPMI ignores it)."""

    protocol: str  # "ipmi" | "redfish" | "fake"
    address: str
    port: int
    username: str
    password: str = dataclasses.field(repr=False)
    system_id: str = ""
    timeout: float = 5.0
    verify_tls: bool = False
    scheme: str = "https"

    def __repr__(self) -> str:  # never show the password, even in tracebacks
        return (
            f"BmcAccess(protocol={self.protocol!r}, address={self.address!r}, port={self.port}, "
            f"username={self.username!r}, password='***', system_id={self.system_id!r}, scheme={self.scheme!r})"
        )

    @property
    def label(self) -> str:
        """A printable name for messages: protocol://address:port (no credentials)."""
        return f"{self.protocol}://{self.address}:{self.port}"


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """The image a piece of work writes, as deploy drivers validate it."""

    slug: str
    url: str
    sha256: str
    format: str
    size_bytes: int


@dataclasses.dataclass(frozen=True)
class NodeRecord:
    """A node's data as ``validate`` sees it: plain values read from the database (drivers import no Django),
    and of the BMC password only whether it can be decrypted (a validation never holds a secret).

    What the work is: ``deploys`` when it deploys an OS (provisioning, the reimage of a leased server; also
    the check of a node offered to reservations), False when it only wipes. ``check_image``: the image it
    writes is checked here and must be given as ``image``; False where it is checked elsewhere (a booking's
    image, once per booking) or nothing is written. The burn-in fields are the server type's: its
    expectations (``ServerType.burnin_expectations()``) and the operator's threshold overrides.
    """

    name: str
    bmc_protocol: str
    bmc_address: str
    bmc_port: int | None
    bmc_system_id: str = ""
    bmc_scheme: str = ""  # Redfish: "http" | "https"; "" for protocols without one
    bmc_username: str | None = None  # None: no BMC credential is stored
    bmc_password_readable: bool = False
    boot_mac: str = ""
    primary_address: str = ""
    ssh_endpoint_address: str = ""
    server_type: str = ""
    burnin_expectations: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    burnin_thresholds: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    deploys: bool = False
    check_image: bool = False
    image: ImageRecord | None = None


REDFISH_SCHEMES = ("http", "https")


def default_redfish_scheme(port: int) -> str:
    """The scheme a Redfish BMC record gets when its inventory does not name one: plain HTTP on 80 and 8000
    (the emulators' ports: sushy-tools, the lab), HTTPS elsewhere. This was once the driver's guess on every
    call; now it is only a default written into the node's record once (enrollment, the migration that
    added the field), where the operator can see and change it."""
    return "http" if port in (80, 8000) else "https"


_MAC = re.compile(r"\A[0-9a-f]{2}(:[0-9a-f]{2}){5}\Z")
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")
_NOT_IN_AN_ADDRESS = re.compile(r"[\s/]")  # a scheme, a path, blanks: a URL or a typo, not a host


class PowerDriver(abc.ABC):
    """Power and boot-device control through a node's BMC."""

    def __init__(self, access: BmcAccess) -> None:
        self.access = access

    @classmethod
    def validate(cls, node: NodeRecord) -> None:
        """Check that the node's BMC record holds what reaching its BMC needs: an address, a port, a stored
        credential whose password can be decrypted. No I/O (the BMC is not contacted; its answer is the
        steps' business). Subclasses add their protocol's rules.

        :raises InvalidNodeData: naming the field that is missing or malformed.
        """
        address = node.bmc_address
        if not address.strip():
            raise InvalidNodeData(
                node.name, "bmc_address", "no BMC address is recorded; set it in the inventory"
            )
        if _NOT_IN_AN_ADDRESS.search(address):
            raise InvalidNodeData(
                node.name, "bmc_address", f"{address!r} is not a host name or IP address (no scheme or path)"
            )
        if node.bmc_port is None or not 0 < node.bmc_port < 65536:
            raise InvalidNodeData(node.name, "bmc_port", f"{node.bmc_port} is not a port (1-65535)")
        if node.bmc_username is None:
            raise InvalidNodeData(
                node.name,
                "bmc_credential",
                "no BMC credential is stored; enroll the node with its BMC username and password",
            )
        if not node.bmc_password_readable:
            raise InvalidNodeData(
                node.name,
                "bmc_credential",
                "the stored BMC password cannot be decrypted with NEOCLOUD_CREDENTIAL_KEYS (was the key "
                "changed?); enroll the password again",
            )

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
    # The tenant network the deployed OS configures at first boot (network-managed sites; None elsewhere):
    # {"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.1"}, the config drive's private_network.
    private_network: dict[str, Any] | None = None


@dataclasses.dataclass
class DeployResult:
    address: str  # where the deployed OS answers SSH
    ssh_port: int
    host_key_fingerprints: dict[str, str]  # key type -> "SHA256:..."
    known_hosts: str
    log: list[str] = dataclasses.field(default_factory=list)


class DeployDriver(abc.ABC):
    """Writes an image and configuration to a node's disk and boots it."""

    @classmethod
    def validate(cls, node: NodeRecord) -> None:
        """Check that the node's record holds what a deploy and a wipe need: the boot MAC the server
        network-boots from (the boot service knows a server by it) and, when ``check_image``, an image with
        the sha256 every deploy verifies. No I/O. Subclasses add their own rules.

        :raises InvalidNodeData: naming the field that is missing or malformed.
        """
        if not node.boot_mac:
            raise InvalidNodeData(
                node.name,
                "boot_mac",
                "no boot MAC is recorded; the boot service knows a server by the MAC it network-boots from",
            )
        if not _MAC.match(node.boot_mac):
            raise InvalidNodeData(
                node.name, "boot_mac", f"{node.boot_mac!r} is not a MAC address such as 52:54:00:12:34:56"
            )
        if node.check_image:
            if node.image is None:
                raise InvalidNodeData(
                    node.name,
                    "image",
                    "no image chosen: name one in the request (the node has no image of its own to write again)",
                )
            problem = cls.image_problem(node.image)
            if problem:
                raise InvalidNodeData(node.name, "image", f"image {node.image.slug} {problem}")

    @classmethod
    def image_problem(cls, image: ImageRecord) -> str:
        """Why this driver cannot write ``image`` ("" when it can), as words completing "image <slug> ...".
        Pure. Subclasses add their own rules."""
        if not _SHA256.match(image.sha256):
            return "has no valid sha256 (64 lower-case hex digits) to verify what is written"
        return ""

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

    def personalize(self, request: PersonalizeRequest, log: Any) -> DeployResult:
        """Make a warm server (deployed and burned in for the warm pool, reachable with the provisioning key
        only) its customer's: fresh host keys generated on the server (the warm-time ones are never handed
        to a customer), the customer's keys installed next to ours (handover removes ours). Returns where
        it answers and its new host keys. Not idempotent in its keys (each run makes new ones); safe to run
        again: the step records only the last run's keys.

        :raises UnsupportedOperation: the driver has no warm pool (the default).
        :raises DriverError: SSH failed, or the server does not show the keys it generated.
        """
        from provisioner.errors import UnsupportedOperation

        raise UnsupportedOperation(f"{type(self).__name__} cannot take servers from a warm pool")


class BurnInDriver(abc.ABC):
    """Runs the GPU burn-in on a deployed node and returns its JSON report."""

    @classmethod
    def validate(cls, node: NodeRecord) -> None:
        """Check that the node's server type says what burn-in checks the hardware against (the GPU model
        and count) and that its threshold overrides are ones the burn-in knows. No I/O.

        :raises InvalidNodeData: naming the server type's field.
        """
        # the burn-in package loads NVML bindings: imported when a burn-in is validated, not with the models
        from provisioner.burnin.thresholds import resolve_thresholds

        expect = node.burnin_expectations
        if not str(expect.get("gpu_model") or "").strip():
            raise InvalidNodeData(
                node.name,
                "server_type.gpu_model",
                f"server type {node.server_type} names no GPU model: burn-in has nothing to check against",
            )
        count = expect.get("gpu_count")
        if not isinstance(count, int) or count < 1:
            raise InvalidNodeData(
                node.name,
                "server_type.gpu_count",
                f"server type {node.server_type} expects {count} GPUs: burn-in needs at least one",
            )
        try:
            resolve_thresholds(node.burnin_thresholds)
        except InvalidRequest as exc:
            raise InvalidNodeData(
                node.name, "server_type.burnin_thresholds", f"server type {node.server_type}: {exc}"
            ) from None

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
class PersonalizeRequest:
    """Give a warm server fresh host keys and its customer's keys (DeployDriver.personalize)."""

    node_name: str
    address: str
    port: int
    username: str
    expected_fingerprints: dict[str, str]  # the warm-time host keys, checked before anything is sent
    provisioning_private_key: str = dataclasses.field(repr=False)
    customer_keys: list[str]
    # the reservation's tenant network, as DeployRequest.private_network: a warm server's OS booted before it
    # had one, so it is put on the running OS (None: unmanaged site)
    private_network: dict[str, Any] | None = None


@dataclasses.dataclass
class HandoverResult:
    host_key_fingerprints: dict[str, str]
    known_hosts: str
    ssh_command: str
