"""Which driver implements what, by name: power drivers by BMC protocol, and the names of the deploy and
burn-in drivers a server type (or the installation's default) may choose, and switch drivers by switch OS."""

from __future__ import annotations

from typing import TYPE_CHECKING

from provisioner.drivers.base import BmcAccess, PowerDriver
from provisioner.errors import UnsupportedOperation

if TYPE_CHECKING:  # the switch drivers load netmiko: imported when a switch driver is asked for
    from provisioner.drivers.switch import SwitchAccess, SwitchDriver

PROTOCOLS = ("ipmi", "redfish", "fake")
# "fake" simulates the disk and the GPUs in files (tests, the embedded demo); "ansible" is the real path
# (network boot, the deploy agent, burn-in over SSH). Built by provisioner.hardware.
DEPLOY_DRIVERS = ("fake", "ansible")
BURNIN_DRIVERS = ("fake", "ansible")


def power_driver_class(protocol: str) -> type[PowerDriver]:
    """The PowerDriver class for a BMC protocol ("ipmi", "redfish" or "fake"). Pure, no I/O.

    :raises UnsupportedOperation: unknown protocol (the message names it).
    """
    if protocol == "ipmi":
        from provisioner.drivers.ipmi import IpmiPowerDriver

        return IpmiPowerDriver
    if protocol == "redfish":
        from provisioner.drivers.redfish import RedfishPowerDriver

        return RedfishPowerDriver
    if protocol == "fake":
        from provisioner.drivers.fake import FakePowerDriver

        return FakePowerDriver
    raise UnsupportedOperation(f"unknown BMC protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")


def power_driver_for(access: BmcAccess) -> PowerDriver:
    """A new driver for ``access.protocol`` ("ipmi", "redfish" or "fake"). Pure, no I/O.

    Wrap calls in ``provisioner.drivers.limits.with_retries`` for steps that may retry.

    :raises UnsupportedOperation: unknown protocol.
    """
    try:
        cls = power_driver_class(access.protocol)
    except UnsupportedOperation as exc:
        raise UnsupportedOperation(f"{access.label}: {exc}") from None
    return cls(access)


# Switch drivers by the switch OS they speak to (``Switch.driver``); "fake" keeps its ports in a file.
SWITCH_DRIVERS = ("linux", "fake")


def switch_driver_class(name: str) -> type[SwitchDriver]:
    """The SwitchDriver class for a switch OS ("linux" or "fake"). Pure, no I/O.

    :raises UnsupportedOperation: unknown driver name (the message names it).
    """
    if name == "linux":
        from provisioner.drivers.switch import LinuxSwitchDriver

        return LinuxSwitchDriver
    if name == "fake":
        from provisioner.drivers.fake_switch import FakeSwitchDriver

        return FakeSwitchDriver
    raise UnsupportedOperation(
        f"unknown switch driver {name!r} (expected one of {', '.join(SWITCH_DRIVERS)})"
    )


def switch_driver_for(access: SwitchAccess) -> SwitchDriver:
    """A new driver for ``access.driver``; checks the record (no I/O) first.

    :raises UnsupportedOperation: unknown driver name.
    :raises InvalidRequest: the record lacks an address, port, username or secret.
    """
    cls = switch_driver_class(access.driver)
    cls.validate_access(access)
    return cls(access)
