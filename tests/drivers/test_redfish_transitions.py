"""Redfish power while the BMC reports a transition (PoweringOn / PoweringOff), as real BMCs do.

The lab's Redfish BMC applies power changes before it answers, so it never shows a transitional state.
Real BMCs (iDRAC, iLO, OpenBMC) report ``PoweringOn``/``PoweringOff`` for seconds after a reset action.
Here a lab Redfish service runs in this process with a handler that reports the transition while the
simulated server is in the given state, so the driver is tested against what a real BMC shows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from lab.bmc_redfish import RedfishHandler, RedfishHttpServer, RedfishService
from lab.machine import SimulatedServer
from lab.spec import LabNodeSpec
from provisioner.drivers.base import BmcAccess, PowerState
from provisioner.drivers.redfish import RedfishPowerDriver

ADDRESS, PORT = "127.0.77.1", 8000  # the lab's Redfish service speaks plain HTTP


class TransitionServer(RedfishHttpServer):
    # (reported PowerState, simulated state it is reported for): e.g. ("PoweringOn", ON) shows a node
    # that is on its way up until something changes its power
    transition: tuple[str, PowerState] | None = None


class TransitionHandler(RedfishHandler):
    server: TransitionServer

    def _route(self, method: str, path: str) -> tuple[Any, dict[str, Any] | None, dict[str, str]]:
        status, body, headers = super()._route(method, path)
        transition = self.server.transition
        if body is not None and body.get("@odata.type", "").startswith("#ComputerSystem.") and transition:
            reported, real = transition
            server = self.server.service.systems[body["Id"]]
            if server.power_state() == real:
                body = {**body, "PowerState": reported}
        return status, body, headers


@pytest.fixture
def bmc() -> Iterator[tuple[TransitionServer, SimulatedServer, BmcAccess]]:
    spec = LabNodeSpec(
        "probe-01", 1, "h100-8x", "02:00:00:00:77:01", "redfish", ADDRESS, PORT, "admin", "pw-s3cret", "1"
    )
    server = SimulatedServer(spec, None)
    httpd = TransitionServer(ADDRESS, PORT, RedfishService({"1": server}, "admin", "pw-s3cret"))
    httpd.RequestHandlerClass = TransitionHandler
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    access = BmcAccess(
        "redfish", ADDRESS, PORT, "admin", "pw-s3cret", system_id="1", timeout=5.0, scheme="http"
    )
    try:
        yield httpd, server, access
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_hard_off_while_powering_on_forces_the_node_off(
    bmc: tuple[TransitionServer, SimulatedServer, BmcAccess],
) -> None:
    httpd, server, access = bmc
    server.power_on()
    httpd.transition = ("PoweringOn", PowerState.ON)
    driver = RedfishPowerDriver(access)
    try:
        driver.power_off()
        assert server.power_state() == PowerState.OFF
        assert driver.get_power_state() == PowerState.OFF
    finally:
        driver.close()


def test_a_node_powering_on_or_off_never_reads_as_off(
    bmc: tuple[TransitionServer, SimulatedServer, BmcAccess],
) -> None:
    httpd, _server, access = bmc
    driver = RedfishPowerDriver(access)
    try:
        httpd.transition = ("PoweringOn", PowerState.OFF)
        assert driver.get_power_state() == PowerState.ON
        httpd.transition = ("PoweringOff", PowerState.OFF)
        assert driver.get_power_state() == PowerState.ON
        httpd.transition = None
        assert driver.get_power_state() == PowerState.OFF
    finally:
        driver.close()


def test_power_on_while_powering_off_turns_the_node_back_on(
    bmc: tuple[TransitionServer, SimulatedServer, BmcAccess],
) -> None:
    httpd, server, access = bmc
    httpd.transition = ("PoweringOff", PowerState.OFF)
    driver = RedfishPowerDriver(access)
    try:
        driver.power_on()
        assert server.power_state() == PowerState.ON
    finally:
        driver.close()


def test_power_on_while_powering_on_sends_nothing(
    bmc: tuple[TransitionServer, SimulatedServer, BmcAccess],
) -> None:
    httpd, server, access = bmc
    # the simulated server stays off: an "On" reaching it would power it on
    httpd.transition = ("PoweringOn", PowerState.OFF)
    driver = RedfishPowerDriver(access)
    try:
        driver.power_on()
        assert server.power_state() == PowerState.OFF
    finally:
        driver.close()


def test_soft_off_while_powering_off_sends_nothing_and_hard_off_forces_it(
    bmc: tuple[TransitionServer, SimulatedServer, BmcAccess],
) -> None:
    httpd, server, access = bmc
    server.power_on()
    httpd.transition = ("PoweringOff", PowerState.ON)  # a graceful shutdown under way
    driver = RedfishPowerDriver(access)
    try:
        driver.power_off(soft=True)
        assert server.power_state() == PowerState.ON  # the OS is still shutting down
        driver.power_off()
        assert server.power_state() == PowerState.OFF
    finally:
        driver.close()


def test_reset_while_powering_off_reboots_the_node(
    bmc: tuple[TransitionServer, SimulatedServer, BmcAccess],
) -> None:
    httpd, server, access = bmc
    server.power_on()
    boots = server.boots
    httpd.transition = ("PoweringOff", PowerState.ON)
    driver = RedfishPowerDriver(access)
    try:
        driver.reset()
        assert server.power_state() == PowerState.ON
        assert server.boots == boots + 1
    finally:
        driver.close()
