"""Build the PowerDriver for a BMC from its BmcAccess, by protocol."""

from __future__ import annotations

from provisioner.drivers.base import BmcAccess, PowerDriver
from provisioner.errors import UnsupportedOperation

PROTOCOLS = ("ipmi", "redfish", "fake")


def power_driver_for(access: BmcAccess) -> PowerDriver:
    """A new driver for ``access.protocol`` ("ipmi", "redfish" or "fake"). Pure, no I/O.

    Wrap calls in ``provisioner.drivers.limits.with_retries`` for steps that may retry.

    :raises UnsupportedOperation: unknown protocol.
    """
    if access.protocol == "ipmi":
        from provisioner.drivers.ipmi import IpmiPowerDriver

        return IpmiPowerDriver(access)
    if access.protocol == "redfish":
        from provisioner.drivers.redfish import RedfishPowerDriver

        return RedfishPowerDriver(access)
    if access.protocol == "fake":
        from provisioner.drivers.fake import FakePowerDriver

        return FakePowerDriver(access)
    raise UnsupportedOperation(
        f"{access.label}: unknown BMC protocol {access.protocol!r} (expected one of {', '.join(PROTOCOLS)})"
    )
