"""IPMI 2.0 sec. 28.12: a BMC clears a one-time boot flag when no chassis power command follows within 60 s
unless boot option parameter 3 says to keep it. The lab BMC runs that timer (shortened here through its
faults file); our driver keeps the flag, as Ironic does, so a power step that comes late (a slow step, a
retry) still boots what was set."""

from __future__ import annotations

import time
from pathlib import Path

from lab.machine import write_faults
from lab.node_process import node_dir
from lab.spec import LabNodeSpec
from provisioner.drivers import ipmi
from provisioner.drivers.base import BmcAccess, BootDevice, BootSetting
from provisioner.drivers.registry import power_driver_for

PXE_ONCE = BootSetting(BootDevice.PXE, persistent=False)


def test_a_pxe_once_flag_set_by_our_driver_outlives_the_bmcs_timer(
    lab: tuple[Path, list[LabNodeSpec]],
) -> None:
    lab_dir, specs = lab
    spec = next(s for s in specs if s.bmc_protocol == "ipmi")
    access = BmcAccess(
        "ipmi", spec.bmc_address, spec.bmc_port, spec.bmc_username, spec.bmc_password, timeout=5.0
    )
    driver = power_driver_for(access)
    assert isinstance(driver, ipmi.IpmiPowerDriver)
    write_faults(node_dir(lab_dir, spec.name), boot_flag_timeout=0.3)
    try:
        # a client that lets the timer run (parameter 3 cleared, then the flag alone): the BMC drops the flag
        driver._run(
            ipmi.IpmiCommand(ipmi.NETFN_CHASSIS, ipmi.CMD_SET_BOOT_OPTIONS, (3, 0x00)),
            ipmi.IpmiCommand(
                ipmi.NETFN_CHASSIS, ipmi.CMD_SET_BOOT_OPTIONS, (5, 0x80 | 0x20, 1 << 2, 0, 0, 0)
            ),
        )
        assert driver.get_boot_device() == PXE_ONCE
        time.sleep(0.6)
        assert driver.get_boot_device().device == BootDevice.DISK  # expired: the next boot would miss PXE

        driver.set_boot_device(PXE_ONCE)
        time.sleep(0.6)
        assert driver.get_boot_device() == PXE_ONCE  # kept past the timer
    finally:
        write_faults(node_dir(lab_dir, spec.name))
        driver.set_boot_device(BootSetting(BootDevice.DISK, persistent=True))
        driver.close()
