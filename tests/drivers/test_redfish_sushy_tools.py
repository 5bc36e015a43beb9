"""Our Redfish driver against the field's standard Redfish peer: the sushy-tools emulator (PyPI) with its
fake driver, on 127.0.0.1, plain HTTP on a free port (neither 80 nor 8000, where the driver once guessed
https), and with scheme https the same emulator's TLS failure is named.

The emulator's fake driver applies a power change 1 to 11 s after it is asked (so power is polled), and
always reports BootSourceOverrideEnabled "Continuous" (so a once-boot is checked by its target only).
The emulator comes with the dev dependencies (``sushy-emulator`` beside this Python), or from
NEOCLOUD_SUSHY_EMULATOR: without either the test fails saying so.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from provisioner.drivers.base import BmcAccess, BootDevice, BootSetting, PowerState
from provisioner.drivers.redfish import RedfishPowerDriver
from provisioner.errors import BmcTlsError

pytestmark = pytest.mark.slow
ADDRESS = "127.0.0.1"


def _emulator() -> str:
    path = os.environ.get("NEOCLOUD_SUSHY_EMULATOR") or str(Path(sys.executable).parent / "sushy-emulator")
    assert Path(path).exists(), (
        f"no sushy-emulator at {path}: install the dev dependencies (pip install -e '.[dev]') "
        "or set NEOCLOUD_SUSHY_EMULATOR"
    )
    return path


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind((ADDRESS, 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("sushy") / "emulator.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [_emulator(), "--fake", "-i", ADDRESS, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if requests.get(f"http://{ADDRESS}:{port}/redfish/v1/", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _driver(port: int, scheme: str) -> RedfishPowerDriver:
    return RedfishPowerDriver(
        BmcAccess("redfish", ADDRESS, port, "admin", "unused", timeout=5.0, scheme=scheme)
    )


def _eventually(read: Callable[[], PowerState], want: PowerState, within: float = 20.0) -> PowerState:
    deadline = time.monotonic() + within
    state = read()
    while state != want and time.monotonic() < deadline:
        time.sleep(0.5)
        state = read()
    return state


def test_power_and_boot_device_against_sushy_tools(emulator: int) -> None:
    driver = _driver(emulator, "http")
    try:
        driver.power_on()
        assert _eventually(driver.get_power_state, PowerState.ON) == PowerState.ON
        driver.power_off()
        assert _eventually(driver.get_power_state, PowerState.OFF) == PowerState.OFF

        driver.set_boot_device(BootSetting(BootDevice.PXE))
        assert driver.get_boot_device().device == BootDevice.PXE
        driver.set_boot_device(BootSetting(BootDevice.DISK, persistent=True))
        assert driver.get_boot_device() == BootSetting(BootDevice.DISK, persistent=True)
    finally:
        driver.close()


def test_https_to_the_plain_http_emulator_is_a_named_tls_failure(emulator: int) -> None:
    driver = _driver(emulator, "https")
    try:
        with pytest.raises(
            BmcTlsError, match=rf"TLS handshake with {ADDRESS}:{emulator} failed: .*scheme http"
        ):
            driver.get_power_state()
    finally:
        driver.close()
