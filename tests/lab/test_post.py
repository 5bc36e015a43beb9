"""The lab servers' power-on self-test: the firmware spends it before its first boot device (a power-off
ends it), the lab's Redfish BMC reports it as BootProgress, and the time per server type scales."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from lab import post
from lab.bmc_redfish import system_resource
from lab.firmware import Firmware
from lab.machine import SimulatedServer
from provisioner.drivers.base import BootDevice, BootSetting
from tests.lab.test_firmware import bootservice, console, make_spec

PXE = BootSetting(BootDevice.PXE)


def test_the_defaults_scale_per_server_type(monkeypatch) -> None:
    assert post.seconds_for("h100-8x", 1) == 240 and post.seconds_for("a100-8x", 0.1) == 18
    assert post.seconds_for("mi300x-8x", 1) == post.OTHER_TYPES_SECONDS
    monkeypatch.setenv("NEOCLOUD_LAB_POST_SCALE", "0.1")
    assert post.scale_from_env() == 0.1
    monkeypatch.setenv("NEOCLOUD_LAB_POST_SCALE", "-1")
    with pytest.raises(ValueError, match="must be a number >= 0"):
        post.scale_from_env()


def test_the_firmware_spends_its_post_before_pxe_and_redfish_reports_it(tmp_path: Path) -> None:
    spec = dataclasses.replace(make_spec(tmp_path), post_seconds=1.5, netns="")
    lab_dir = tmp_path / "lab"
    with bootservice.BootService() as boot:
        firmware = Firmware(spec, lab_dir, boot.url)
        server = SimulatedServer(spec, lab_dir / "nodes" / spec.name, firmware)
        server.set_boot(PXE)
        started = time.monotonic()
        server.power_on()
        time.sleep(0.5)
        assert (
            system_resource("s1", server)["BootProgress"]["LastState"]
            == "SystemHardwareInitializationStarted"
        )
        assert boot.paths() == []  # still in POST: nothing asked of the boot service yet
        assert firmware.wait_idle(30)
        assert time.monotonic() - started >= 1.5
        assert boot.paths()[:1] == [f"/boot/{spec.mac}.ipxe"]
        assert (
            system_resource("s1", server)["BootProgress"]["LastState"]
            == "SystemHardwareInitializationComplete"
        )
        text = console(lab_dir, spec)
        assert (
            text.index("POST: power-on self-test, 1.5 s") < text.index("POST: done") < text.index("PXE: GET")
        )
        server.power_off()
        assert system_resource("s1", server)["BootProgress"]["LastState"] == "None"


def test_a_power_off_during_post_ends_it_and_boots_nothing(tmp_path: Path) -> None:
    spec = dataclasses.replace(make_spec(tmp_path), post_seconds=30.0, netns="")
    lab_dir = tmp_path / "lab"
    with bootservice.BootService() as boot:
        firmware = Firmware(spec, lab_dir, boot.url)
        server = SimulatedServer(spec, lab_dir / "nodes" / spec.name, firmware)
        server.set_boot(PXE)
        server.power_on()
        time.sleep(0.3)
        server.power_off()
        assert firmware.wait_idle(5), "a power-off must end the POST at once"
        assert boot.paths() == []
        assert "POST: done" not in console(lab_dir, spec)


def test_an_emulated_computer_starts_qemu_after_its_post_and_not_at_all_if_powered_off(
    tmp_path: Path, monkeypatch
) -> None:
    """The QEMU firmware's POST runs on a thread of its own: the node's hooks thread stays free for a
    power-off, which ends the POST before any QEMU starts (QEMU itself is replaced by a recorder here; the
    QEMU lab tests run the real one)."""
    from lab import qemu_firmware

    started: list[str] = []

    class Recorder:
        def __init__(self, **kw: object) -> None:
            self.process = None
            self.boot_from = kw["boot_from"]

        def start(self) -> None:
            started.append(str(self.boot_from))

        def running(self) -> bool:
            return bool(started)

        def power_off(self) -> None:
            started.clear()

    monkeypatch.setattr(qemu_firmware, "QemuComputer", Recorder)
    spec = dataclasses.replace(make_spec(tmp_path), post_seconds=1.0, kind="qemu", netns="")
    firmware = qemu_firmware.QemuFirmware(spec, tmp_path / "lab", "http://127.0.0.1:8000/boot")

    began = time.monotonic()
    firmware.on_power_on(spec, PXE)
    assert time.monotonic() - began < 0.2, "the hook must not block the BMC for the POST"
    assert not firmware.halted(spec)  # in POST: on, not halted
    time.sleep(0.3)
    firmware.on_power_off(spec)
    time.sleep(1.2)
    assert started == []  # powered off during its POST: QEMU never started

    firmware.on_power_on(spec, PXE)
    deadline = time.monotonic() + 5
    while not started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started == ["network"] and time.monotonic() - began >= 1.0
