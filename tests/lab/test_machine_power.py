"""The lab server's power as its BMC reports it (lab.machine, lab.node_process).

A machine that powers itself off (an emulated computer's ramdisk when the agent is done, an OS's poweroff)
is reported off, as a real BMC reads the host's power rails; a power change still queued for the firmware
never makes the BMC report on the previous boot's machine.
"""

from __future__ import annotations

import threading

from lab.machine import SimulatedServer
from lab.node_process import BackgroundHooks
from lab.spec import LabNodeSpec
from provisioner.drivers.base import BootDevice, BootSetting, PowerState
from tests.conftest import wait_for


class Machine:
    """Firmware hooks standing in for a computer: ``halt()`` is its OS powering it off."""

    def __init__(self) -> None:
        self.running = False
        self.boots: list[BootDevice] = []
        self.gate = threading.Event()
        self.gate.set()

    def on_power_on(self, spec: LabNodeSpec, boot: BootSetting) -> None:
        self.gate.wait(10)
        self.running = True
        self.boots.append(boot.device)

    def on_power_off(self, spec: LabNodeSpec) -> None:
        self.running = False

    def halted(self, spec: LabNodeSpec) -> bool:
        return bool(self.boots) and not self.running

    def halt(self) -> None:
        self.running = False


def spec() -> LabNodeSpec:
    return LabNodeSpec(
        name="lab-node-01",
        index=1,
        server_type="h100-8x",
        mac="52:54:00:00:00:01",
        bmc_protocol="ipmi",
        bmc_address="127.0.10.1",
        bmc_port=623,
        bmc_username="admin",
        bmc_password="lab-password",
    )


def test_a_machine_that_powered_itself_off_is_reported_off_and_powers_on_again() -> None:
    machine = Machine()
    server = SimulatedServer(spec(), None, machine)
    server.set_boot(BootSetting(BootDevice.PXE))
    server.power_on()
    assert server.power_state() == PowerState.ON
    machine.halt()  # the deploy ramdisk's poweroff
    assert server.power_state() == PowerState.OFF
    server.power_on()  # not "already on": the machine boots again, from the disk this time
    assert machine.running and machine.boots == [BootDevice.PXE, BootDevice.DISK]
    machine.halt()
    server.reset()  # a reset of a halted machine is a power on
    assert machine.boots[-1] == BootDevice.DISK and server.power_state() == PowerState.ON


def test_a_queued_power_on_is_not_mistaken_for_the_previous_machine_halting() -> None:
    machine = Machine()
    server = SimulatedServer(spec(), None, BackgroundHooks(machine))
    server.power_on()
    wait_for(lambda: machine.running, timeout=10, message="the first boot")
    machine.halt()
    assert server.power_state() == PowerState.OFF
    machine.gate.clear()  # the firmware is slow to start the next boot
    server.power_on()
    assert server.power_state() == PowerState.ON  # the old machine is halted, the new one is on its way
    machine.gate.set()


def test_a_wrong_power_fault_reports_the_opposite_state_while_commands_act_on_the_real_one(tmp_path) -> None:
    from lab.machine import write_faults

    server = SimulatedServer(spec(), tmp_path, Machine())
    server.power_on()
    write_faults(tmp_path, wrong_power=True)
    assert server.reported_power_state() == PowerState.OFF
    assert server.power_state() == PowerState.ON
    write_faults(tmp_path)
    assert server.reported_power_state() == PowerState.ON
