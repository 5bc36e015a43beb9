"""One contract for every PowerDriver: IPMI and Redfish against real lab BMC processes, fake on files."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.machine import write_faults
from lab.node_process import node_dir
from provisioner.drivers.base import BmcAccess, BootDevice, BootMode, BootSetting, PowerDriver, PowerState
from provisioner.drivers.fake import write_fake_bmc
from provisioner.drivers.limits import with_retries
from provisioner.drivers.registry import power_driver_for
from provisioner.drivers.sweep import sweep_power
from provisioner.errors import BmcAuthFailed, BmcUnreachable, UnsupportedOperation

PROTOCOLS = ["ipmi", "redfish", "fake"]


@dataclasses.dataclass
class Target:
    access: BmcAccess
    inject: object  # callable(**faults)

    def driver(self, **changes: object) -> PowerDriver:
        return power_driver_for(dataclasses.replace(self.access, **changes))


@pytest.fixture(params=PROTOCOLS)
def target(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Target]:
    protocol = request.param
    if protocol == "fake":
        monkeypatch.setenv("NEOCLOUD_FAKE_HW_DIR", str(tmp_path / "fake-hw"))
        access = BmcAccess("fake", "127.0.0.9", 623, "admin", "fake-secret-pw", timeout=1.0)
        write_fake_bmc(access, password=access.password)

        def inject(**faults: object) -> None:
            fields: dict[str, object] = {"fault": None, "unsupported_boot": []}
            if faults.get("drop"):
                fields["fault"] = "timeout"
            if faults.get("delay"):
                fields.update(fault="slow", slow_seconds=faults["delay"])
            if faults.get("unsupported_boot"):
                fields["unsupported_boot"] = faults["unsupported_boot"]
            write_fake_bmc(access, **fields)

        yield Target(access, inject)
        return
    lab_dir, specs = request.getfixturevalue("lab")
    spec = next(s for s in specs if s.bmc_protocol == protocol)
    access = BmcAccess(
        protocol,
        spec.bmc_address,
        spec.bmc_port,
        spec.bmc_username,
        spec.bmc_password,
        system_id=spec.system_id,
        scheme=spec.bmc_scheme or "https",
        timeout=5.0,  # generous: CI machines are loaded; timeout behaviour is tested explicitly below
    )
    directory = node_dir(lab_dir, spec.name)

    def inject_lab(**faults: object) -> None:
        write_faults(directory, **faults)

    inject_lab()
    try:
        yield Target(access, inject_lab)
    finally:
        inject_lab()
        power_driver_for(access).close()


def test_power_on_off_reset_change_the_state_and_are_idempotent(target: Target) -> None:
    driver = target.driver()
    driver.power_off()
    driver.power_off()
    assert driver.get_power_state() == PowerState.OFF
    driver.power_on()
    driver.power_on()
    assert driver.get_power_state() == PowerState.ON
    driver.reset()
    assert driver.get_power_state() == PowerState.ON
    driver.power_off(soft=True)
    assert driver.get_power_state() == PowerState.OFF
    driver.reset()  # a node that is off is powered on
    assert driver.get_power_state() == PowerState.ON
    driver.power_off()


@pytest.mark.parametrize("device", list(BootDevice))
@pytest.mark.parametrize("mode", list(BootMode))
@pytest.mark.parametrize("persistent", [False, True])
def test_boot_device_reads_back_as_set(
    target: Target, device: BootDevice, mode: BootMode, persistent: bool
) -> None:
    driver = target.driver()
    setting = BootSetting(device, persistent=persistent, mode=mode)
    driver.set_boot_device(setting)
    driver.set_boot_device(setting)
    assert driver.get_boot_device() == setting


def test_one_time_boot_override_reverts_to_persistent_after_a_boot(target: Target) -> None:
    driver = target.driver()
    driver.power_off()
    persistent = BootSetting(BootDevice.DISK, persistent=True, mode=BootMode.UEFI)
    driver.set_boot_device(persistent)
    driver.set_boot_device(BootSetting(BootDevice.PXE, persistent=False, mode=BootMode.UEFI))
    assert driver.get_boot_device().device == BootDevice.PXE
    driver.power_on()
    assert driver.get_boot_device() == persistent
    driver.power_off()


def test_wrong_password_is_auth_failed_without_the_password_in_the_message(target: Target) -> None:
    wrong = "Wr0ng-pass-xyz"
    with pytest.raises(BmcAuthFailed) as err:
        target.driver(password=wrong).get_power_state()
    assert wrong not in str(err.value) and target.access.password not in str(err.value)
    assert "password" in str(err.value)  # tells the operator what to check
    assert not err.value.retryable


def test_bmc_that_drops_packets_is_unreachable_within_its_timeout(target: Target) -> None:
    target.inject(drop=True)
    driver = target.driver(timeout=1.0)
    driver.close()  # no kept session: the drop must hit the login too
    started = time.monotonic()
    with pytest.raises(BmcUnreachable) as err:
        driver.get_power_state()
    assert time.monotonic() - started < 3.0
    assert err.value.retryable and target.access.password not in str(err.value)
    assert "did not answer within 1.0 s" in str(err.value)  # a timeout says so, with the limit


def test_slow_bmc_answers_within_timeout_and_times_out_beyond_it(target: Target) -> None:
    target.inject(delay=0.2)
    assert target.driver(timeout=3.0).get_power_state() in (PowerState.ON, PowerState.OFF)
    target.inject(delay=1.5)
    driver = target.driver(timeout=0.8)
    driver.close()
    with pytest.raises(BmcUnreachable):
        driver.get_power_state()


def test_unsupported_boot_device_is_refused_with_a_typed_error(target: Target) -> None:
    target.inject(unsupported_boot=["legacy"])
    with pytest.raises(UnsupportedOperation) as err:
        target.driver().set_boot_device(BootSetting(BootDevice.PXE, mode=BootMode.LEGACY))
    assert "legacy" in str(err.value)
    assert not err.value.retryable


def test_nothing_listening_is_unreachable_and_sweeps_as_unknown(target: Target) -> None:
    dead = dataclasses.replace(target.access, address="127.0.10.250", timeout=1.0)
    if dead.protocol == "fake":
        write_fake_bmc(dead, fault="timeout")
    with pytest.raises(BmcUnreachable) as err:
        power_driver_for(dead).get_power_state()
    if dead.protocol == "redfish":  # TCP tells a refused connection from silence; IPMI's UDP cannot
        assert "refused the connection" in str(err.value)
    results = sweep_power([dead, target.access], timeout=1.0, max_workers=4)
    assert results[dead].state == PowerState.UNKNOWN and results[dead].error_code == "bmc_unreachable"
    assert results[target.access].state in (PowerState.ON, PowerState.OFF)
    assert target.access.password not in repr(results)


def test_retries_with_backoff_heal_a_transient_outage(target: Target) -> None:
    target.inject(drop=True)
    driver = target.driver(timeout=0.5)
    driver.close()
    calls = []

    def call() -> PowerState:
        calls.append(1)
        if len(calls) == 2:
            target.inject()  # the BMC comes back before the second retry
        return driver.get_power_state()

    assert with_retries(call, what="power state", attempts=4, backoff=0.1) in (PowerState.ON, PowerState.OFF)
    assert len(calls) >= 2


def test_auth_failure_is_not_retried(target: Target) -> None:
    calls = []

    def call() -> PowerState:
        calls.append(1)
        return target.driver(password="nope-nope").get_power_state()

    with pytest.raises(BmcAuthFailed):
        with_retries(call, what="power state", attempts=3, backoff=0.01)
    assert len(calls) == 1


def test_credentials_never_in_repr(target: Target) -> None:
    driver = target.driver()
    assert target.access.password not in repr(driver.access)
    assert target.access.password not in repr(driver) + str(vars(driver))
