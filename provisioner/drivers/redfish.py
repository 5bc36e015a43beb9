"""Redfish power driver on sushy, through the ComputerSystem resource.

Power goes through ``Actions/#ComputerSystem.Reset`` using only the ResetType values the BMC advertises
(``ResetType@Redfish.AllowableValues``); the boot device through a PATCH of ``Boot``
(``BootSourceOverrideTarget``/``Enabled``/``Mode``), checked against the advertised allowable values
first. When the BMC lists several Systems members the driver uses ``BmcAccess.system_id``.

The service's URL is ``BmcAccess.scheme``://address:port: the scheme comes from the node's BMC record
(``Node.bmc_scheme``), never guessed from the port here.

The sushy connection (and its Redfish session) is kept per driver instance and rebuilt after an error.
Errors: no TLS session (https to a plain-HTTP service, a certificate that does not verify, a protocol
error) -> BmcTlsError, naming the TLS reason; other connection failures or a timeout -> BmcUnreachable; 401/403 -> BmcAuthFailed; other HTTP errors
-> BmcCommandFailed; a value the BMC does not advertise -> UnsupportedOperation. sushy's messages carry
URLs and Redfish error bodies only, never the password.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import sushy
from sushy import exceptions as sushy_exc

from provisioner.drivers.base import (
    REDFISH_SCHEMES,
    BmcAccess,
    BootDevice,
    BootMode,
    BootSetting,
    NodeRecord,
    PowerDriver,
    PowerState,
)
from provisioner.drivers.limits import DEFAULT_LIMITS, BmcLimits
from provisioner.errors import (
    BmcAuthFailed,
    BmcCommandFailed,
    BmcTimeout,
    BmcTlsError,
    BmcUnreachable,
    DriverError,
    InvalidNodeData,
    UnsupportedOperation,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

TARGET_BY_DEVICE = {BootDevice.PXE: sushy.BootSource.PXE, BootDevice.DISK: sushy.BootSource.HDD}
DEVICE_BY_TARGET = {v: k for k, v in TARGET_BY_DEVICE.items()}
MODE_BY_BOOTMODE = {
    BootMode.UEFI: sushy.BootSourceOverrideMode.UEFI,
    BootMode.LEGACY: sushy.BootSourceOverrideMode.LEGACY,
}
BOOTMODE_BY_MODE = {v: k for k, v in MODE_BY_BOOTMODE.items()}


def _tls_failure(err: BaseException) -> BaseException | None:
    """The error behind a sushy ConnectionError if TLS is what failed: the ssl module's where it can be
    found, else requests' SSLError. sushy wraps requests' SSLError, which wraps urllib3's MaxRetryError and
    SSLError, which wrap the ssl module's error: the chain is followed through causes, contexts,
    ``reason`` and ``args``."""
    seen: set[int] = set()
    todo: list[object] = [err]
    found: BaseException | None = None
    while todo:
        current = todo.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        if found is None and isinstance(current, requests.exceptions.SSLError):
            found = current
        todo.extend([current.__cause__, current.__context__, getattr(current, "reason", None), *current.args])
    return found


class RedfishPowerDriver(PowerDriver):
    """PowerDriver over Redfish (sushy). One instance per node; calls are capped by ``limits``."""

    def __init__(self, access: BmcAccess, limits: BmcLimits = DEFAULT_LIMITS) -> None:
        super().__init__(access)
        self.limits = limits
        self._root: sushy.Sushy | None = None

    @classmethod
    def validate(cls, node: NodeRecord) -> None:
        """The BMC record (the base rules), a user name to log in with (Redfish has no anonymous login
        here), an address that fits in the BMC's URL (an IPv6 address in brackets) and the URL's scheme
        (http or https). No I/O.

        :raises InvalidNodeData: naming the field.
        """
        super().validate(node)
        if not node.bmc_username:
            raise InvalidNodeData(
                node.name, "bmc_credential", "the BMC credential has no user name; Redfish logs in with one"
            )
        address = node.bmc_address
        if ":" in address and not (address.startswith("[") and address.endswith("]")):
            raise InvalidNodeData(
                node.name,
                "bmc_address",
                f"{address!r} does not fit in a URL: write an IPv6 address in brackets ([{address}])",
            )
        if node.bmc_scheme not in REDFISH_SCHEMES:
            raise InvalidNodeData(
                node.name,
                "bmc_scheme",
                f"{node.bmc_scheme or 'no scheme'!r} is not a Redfish URL scheme: set http or https",
            )

    # --- plumbing ---------------------------------------------------------------------------------

    @property
    def _base_url(self) -> str:
        return f"{self.access.scheme}://{self.access.address}:{self.access.port}"

    def _connect(self) -> sushy.Sushy:
        if self._root is None:
            self._root = sushy.Sushy(
                self._base_url,
                username=self.access.username,
                password=self.access.password,
                verify=self.access.verify_tls,
                read_timeout=self.access.timeout,
                connect_timeout=self.access.timeout,
                server_side_retries=1,
                server_side_retries_delay=0.2,
            )
        return self._root

    def _system(self) -> Any:
        root = self._connect()
        if self.access.system_id:
            return root.get_system(f"{root.get_system_collection().path.rstrip('/')}/{self.access.system_id}")
        members = root.get_system_collection().get_members()
        if len(members) != 1:
            raise UnsupportedOperation(
                f"{self.access.label} has {len(members)} systems; set the node's system id to pick one"
            )
        return members[0]

    def _call(self, what: str, fn: Callable[[Any], T]) -> T:
        with self.limits.slot(self.access.label, self.access.timeout):
            try:
                return fn(self._system())
            except DriverError:
                raise
            except sushy_exc.AccessError as err:
                self._reset_connection()
                raise BmcAuthFailed(
                    f"{self.access.label} refused the credentials of user {self.access.username!r} "
                    f"(HTTP {err.status_code}); check the BMC user and password"
                ) from None
            except sushy_exc.ConnectionError as err:
                self._reset_connection()
                tls = _tls_failure(err)
                if tls is not None:
                    raise BmcTlsError(self._tls_message(tls)) from None
                cause = err.__cause__ or err.__context__
                # a timeout counts apart from a refused connection (BMC error metrics); same code
                error = BmcTimeout if isinstance(cause, requests.exceptions.Timeout) else BmcUnreachable
                raise error(
                    f"{self.access.label} {self._unreachable_reason(err)}; check the BMC's "
                    "network and power (the node's power state is unknown until it answers)"
                ) from None
            except sushy_exc.ResourceNotFoundError:
                self._reset_connection()
                raise BmcCommandFailed(
                    f"{self.access.label} has no system {self.access.system_id!r}; "
                    "check the node's system id",
                    retryable=False,
                ) from None
            except sushy_exc.HTTPError as err:
                self._reset_connection()
                raise BmcCommandFailed(
                    f"{self.access.label} refused {what} "
                    f"(HTTP {err.status_code}: {err.detail or err.message})"
                ) from None
            except sushy_exc.SushyError as err:
                self._reset_connection()
                raise BmcCommandFailed(f"{self.access.label}: {what} failed ({type(err).__name__})") from None

    def _unreachable_reason(self, err: BaseException) -> str:
        """What went wrong on the wire, in words: sushy wraps every transport error in ConnectionError."""
        cause = err.__cause__ or err.__context__
        if isinstance(cause, requests.exceptions.Timeout):
            return f"did not answer within {self.access.timeout:.1f} s"
        text = str(cause or err)
        if "Connection refused" in text:
            return "refused the connection (nothing listening on its port)"
        if "closed connection without response" in text or "Connection reset" in text:
            if self.access.scheme == "http":
                return (
                    "closed the connection without answering (if its Redfish service speaks HTTPS, "
                    "set the node's BMC scheme to https)"
                )
            return "closed the connection without answering"
        return f"could not be reached within {self.access.timeout:.1f} s"

    def _tls_message(self, failure: BaseException) -> str:
        """The TLS failure in words: its reason (OpenSSL's, or the certificate check's) and what to check."""
        if isinstance(failure, ssl.SSLCertVerificationError):
            reason = f"certificate verify failed: {failure.verify_message or failure.reason}"
            hint = "is the BMC's certificate signed by a trusted CA for this address?"
        elif isinstance(failure, ssl.SSLError) and failure.reason:
            reason = failure.reason.replace("_", " ").lower()
            hint = "is the BMC's scheme http?"
        else:
            reason = str(failure)
            hint = "is the BMC's scheme http?"
        return (
            f"{self.access.label}: TLS handshake with {self.access.address}:{self.access.port} failed: "
            f"{reason} ({hint})"
        )

    def _reset_connection(self) -> None:
        root, self._root = self._root, None
        if root is not None:
            try:
                root._auth.close()
            except Exception:  # the BMC may be gone; the session times out on its side
                log.debug("could not close the Redfish session with %s", self.access.label, exc_info=True)
            root._auth = None

    def _reset_type(self, system: Any, wanted: list[sushy.ResetType], what: str) -> sushy.ResetType:
        allowed = system.get_allowed_reset_system_values()
        for reset_type in wanted:
            if reset_type in allowed:
                return reset_type
        raise UnsupportedOperation(
            f"{self.access.label} does not offer {what} (advertised reset types: "
            f"{', '.join(sorted(r.value for r in allowed)) or 'none'})"
        )

    # --- PowerDriver ------------------------------------------------------------------------------

    def get_power_state(self) -> PowerState:
        """Read ComputerSystem.PowerState. Idempotent. :raises BmcUnreachable, BmcAuthFailed:"""

        def read(system: Any) -> PowerState:
            state = system.power_state
            if state in (sushy.PowerState.ON, sushy.PowerState.POWERING_ON, sushy.PowerState.POWERING_OFF):
                return PowerState.ON  # on its way up or down, the node has power: never read as off
            if state == sushy.PowerState.OFF:
                return PowerState.OFF
            raise BmcCommandFailed(f"{self.access.label} reports no power state")

        return self._call("read power state", read)

    def _reset(self, wanted: list[sushy.ResetType], what: str, skip_if: frozenset[sushy.PowerState]) -> None:
        def act(system: Any) -> None:
            if system.power_state in skip_if:
                return  # idempotent: some BMCs answer 409 to "On" when already on
            system.reset_system(self._reset_type(system, wanted, what))

        self._call(what, act)

    def power_on(self) -> None:
        """ResetType On (or ForceOn), unless On or PoweringOn. Idempotent.

        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """
        self._reset(
            [sushy.ResetType.ON, sushy.ResetType.FORCE_ON],
            "power on",
            skip_if=frozenset({sushy.PowerState.ON, sushy.PowerState.POWERING_ON}),
        )

    def power_off(self, *, soft: bool = False) -> None:
        """ResetType ForceOff, or GracefulShutdown when ``soft``. Idempotent.

        :raises UnsupportedOperation: the BMC does not advertise the reset type.
        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """
        if soft:
            # a shutdown already under way (PoweringOff) is not asked for twice
            off_or_going = frozenset({sushy.PowerState.OFF, sushy.PowerState.POWERING_OFF})
            self._reset([sushy.ResetType.GRACEFUL_SHUTDOWN], "soft power off", skip_if=off_or_going)
        else:
            # only Off is off: PoweringOn is coming up, PoweringOff may be a graceful shutdown that hangs
            self._reset([sushy.ResetType.FORCE_OFF], "power off", skip_if=frozenset({sushy.PowerState.OFF}))

    def reset(self) -> None:
        """On when Off, else ForceRestart (PoweringOn/PoweringOff included). Not idempotent.

        :raises BmcUnreachable, BmcCommandFailed:
        """

        def act(system: Any) -> None:
            if system.power_state == sushy.PowerState.OFF:
                system.reset_system(
                    self._reset_type(system, [sushy.ResetType.ON, sushy.ResetType.FORCE_ON], "power on")
                )
            else:
                system.reset_system(self._reset_type(system, [sushy.ResetType.FORCE_RESTART], "reset"))

        self._call("reset", act)

    def set_boot_device(self, setting: BootSetting) -> None:
        """PATCH Boot (target, Once/Continuous, UEFI/Legacy). Idempotent.

        :raises UnsupportedOperation: the target or mode is not among the advertised allowable values.
        :raises BmcUnreachable, BmcAuthFailed, BmcCommandFailed:
        """
        target = TARGET_BY_DEVICE[setting.device]
        mode = MODE_BY_BOOTMODE[setting.mode]

        def act(system: Any) -> None:
            allowed_targets = system.get_allowed_system_boot_source_values()
            allowed_modes = system.json.get("Boot", {}).get("BootSourceOverrideMode@Redfish.AllowableValues")
            if target not in allowed_targets or (
                allowed_modes is not None and mode.value not in allowed_modes
            ):
                raise UnsupportedOperation(
                    f"{self.access.label} does not support booting {setting.device.value} in "
                    f"{setting.mode.value} mode"
                )
            enabled = (
                sushy.BootSourceOverrideEnabled.CONTINUOUS
                if setting.persistent
                else sushy.BootSourceOverrideEnabled.ONCE
            )
            try:
                system.set_system_boot_options(target=target, enabled=enabled, mode=mode)
            except sushy_exc.BadRequestError as err:
                raise UnsupportedOperation(
                    f"{self.access.label} refused boot "
                    f"{setting.device.value}/{setting.mode.value} ({err.detail})"
                ) from None

        self._call("set boot device", act)

    def get_boot_device(self) -> BootSetting:
        """Read Boot back. Idempotent. :raises BmcUnreachable, BmcAuthFailed, UnsupportedOperation:"""

        def read(system: Any) -> BootSetting:
            boot = system.boot
            device = DEVICE_BY_TARGET.get(boot.target)
            if device is None:
                raise UnsupportedOperation(
                    f"{self.access.label} reports boot target "
                    f"{getattr(boot.target, 'value', boot.target)!r}, "
                    "neither PXE nor disk"
                )
            return BootSetting(
                device,
                persistent=boot.enabled == sushy.BootSourceOverrideEnabled.CONTINUOUS,
                mode=BOOTMODE_BY_MODE.get(boot.mode, BootMode.UEFI),
            )

        return self._call("read boot device", read)

    def close(self) -> None:
        """Delete the Redfish session. Idempotent."""
        self._reset_connection()
