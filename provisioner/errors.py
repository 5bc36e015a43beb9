"""Typed errors of the provisioner.

Every error a person can see carries a sentence they can act on (``str(err)``) and a stable
machine-readable ``code``. ``retryable`` tells the engine whether running the same step again may help.
No error message ever contains a credential: drivers build messages from addresses and usernames only.
"""

from __future__ import annotations


class NeocloudError(Exception):
    """Base class: a failure with a stable code and a sentence for people."""

    code = "error"
    retryable = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable

    @property
    def message(self) -> str:
        return str(self)


class IllegalTransition(NeocloudError):
    code = "illegal_transition"


class NodeLocked(NeocloudError):
    """Another operation holds the node's lease."""

    code = "node_locked"
    retryable = True


class CapacityError(NeocloudError):
    """Not enough free servers of the requested type in the requested window."""

    code = "not_enough_capacity"


class QuotaExceeded(NeocloudError):
    code = "quota_exceeded"


class InvalidRequest(NeocloudError):
    code = "invalid_request"


class InvalidNodeData(NeocloudError):
    """A node's record lacks what a driver needs for the work asked of it (an image, an address, a usable BMC
    record...): found by the drivers' ``validate`` when the work is accepted, before anything moves.
    ``node`` and ``field`` name what to fix; the message says why. Fixing the data is an operator's job."""

    code = "invalid_node_data"

    def __init__(self, node: str, field: str, reason: str) -> None:
        super().__init__(f"{node}: {field}: {reason}")
        self.node = node
        self.field = field
        self.reason = reason

    def details(self) -> list[dict[str, str]]:
        """The problem for machines: ``[{"node", "field", "reason"}]``."""
        return [{"node": self.node, "field": self.field, "reason": self.reason}]


class InvalidNodesData(NeocloudError):
    """Several nodes named in one request fail validation (a rollout over named nodes): all of them at once,
    so that an operator fixes them or leaves them out in one go."""

    code = "invalid_node_data"
    SHOWN = 10

    def __init__(self, problems: list[InvalidNodeData], *, doing: str) -> None:
        listed = " / ".join(str(p) for p in problems[: self.SHOWN])
        more = f" / and {len(problems) - self.SHOWN} more" if len(problems) > self.SHOWN else ""
        super().__init__(
            f"{len(problems)} node(s) cannot be {doing} as recorded ({listed}{more}); fix their data or "
            "leave them out"
        )
        self.problems = problems

    def details(self) -> list[dict[str, str]]:
        return [d for p in self.problems for d in p.details()]


class StepTimeout(NeocloudError):
    code = "step_timeout"
    retryable = True


class WaitTimedOut(StepTimeout):
    """What a waiting step waited for (the deploy agent, the OS's SSH server) did not happen in time."""

    code = "wait_timed_out"


# --- hardware (driver) errors -------------------------------------------------------------------


class DriverError(NeocloudError):
    """A hardware interface failed."""

    code = "driver_error"


class BmcUnreachable(DriverError):
    """The BMC did not answer in time (network, BMC hung or rebooting)."""

    code = "bmc_unreachable"
    retryable = True


class BmcTimeout(BmcUnreachable):
    """The BMC did not answer within the call's timeout (as opposed to refusing the connection). The same
    code as BmcUnreachable, so what people and clients see does not change; the metrics count it apart."""


class BmcTlsError(BmcUnreachable):
    """The BMC answered, but no TLS session could be set up with it: a plain-HTTP service spoken to with
    https, a certificate that does not verify, a protocol error. Named as such so that the cause is not
    hidden behind "could not be reached". It is the record's or the BMC's configuration, not a passing
    fault: the same call fails the same way again, so it is not retried."""

    code = "bmc_tls_failed"
    retryable = False


class BmcAuthFailed(DriverError):
    """The BMC refused our credentials. Retrying with the same password will not help."""

    code = "bmc_auth_failed"
    retryable = False


class BmcCommandFailed(DriverError):
    """The BMC answered but refused or failed the command."""

    code = "bmc_command_failed"
    retryable = True


class UnsupportedOperation(DriverError):
    """The BMC or driver does not support what was asked (a boot device, a reset type)."""

    code = "unsupported_operation"
    retryable = False


class DeployFailed(DriverError):
    code = "deploy_failed"


class ImageChecksumMismatch(DeployFailed):
    code = "image_checksum_mismatch"
    retryable = False


class CablingMismatch(DeployFailed):
    """LLDP on the server's boot NIC names another switch or port than its recorded cabling, or heard nothing
    while cabling is recorded: deploying it would put it on whatever VLAN that other port carries."""

    code = "cabling_mismatch"
    retryable = False


class BurnInFailed(DriverError):
    """Burn-in ran and found faults (not retryable: the server goes to quarantine)."""

    code = "burnin_failed"
    retryable = False


class NvmlUnavailable(DriverError):
    """NVML could not be loaded: no NVIDIA driver or no GPU on this host."""

    code = "nvml_unavailable"
    retryable = False


# --- switch (network) errors ----------------------------------------------------------------------


class SwitchError(DriverError):
    """A switch driver failed."""

    code = "switch_error"


class UnknownSwitch(SwitchError):
    """A node's cabling names a switch that is not registered (no address, no login)."""

    code = "unknown_switch"
    retryable = False


class UnknownSwitchPort(SwitchError):
    """The switch has no such port (checked on the switch itself before anything is changed)."""

    code = "unknown_switch_port"
    retryable = False


class SwitchUnreachable(SwitchError):
    """The switch's management address did not answer SSH in time."""

    code = "switch_unreachable"
    retryable = True


class SwitchAuthFailed(SwitchError):
    """The switch refused our login. Retrying with the same credentials will not help."""

    code = "switch_auth_failed"
    retryable = False


class SwitchCommandFailed(SwitchError):
    """The switch answered but refused a command, or a port does not read back as it was set."""

    code = "switch_command_failed"
    retryable = True


# What kind of failure a BMC call had, for the BMC error counts (neocloud_bmc_call_errors_total): the
# label values, most specific class first.
BMC_ERROR_KINDS: tuple[tuple[str, type[BaseException]], ...] = (
    ("timeout", BmcTimeout),
    ("tls", BmcTlsError),
    ("unreachable", BmcUnreachable),
    ("auth", BmcAuthFailed),
    ("command", BmcCommandFailed),
    ("unsupported", UnsupportedOperation),
)
BMC_ERROR_KIND_OTHER = "other"


def bmc_error_kind(error: BaseException) -> str:
    """The kind of a failed BMC call: ``timeout`` (no answer in time), ``tls`` (no TLS session),
    ``unreachable`` (refused or dropped connection), ``auth`` (credentials refused), ``command`` (the BMC
    answered but refused or failed the command), ``unsupported`` (not offered by the BMC or driver), else
    ``other`` (a driver error of no such kind, a bug)."""
    for kind, cls in BMC_ERROR_KINDS:
        if isinstance(error, cls):
            return kind
    return BMC_ERROR_KIND_OTHER
