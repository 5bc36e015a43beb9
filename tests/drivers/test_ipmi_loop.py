"""The IPMI driver's event loop never waits inside pyghmi: a silent BMC costs its own timeout, a job's
commands follow one another on one session, and pyghmi's I/O thread never blocks on one socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyghmi.ipmi.private.session as ipmisession
import pytest

from lab.machine import write_faults
from lab.node_process import node_dir
from lab.spec import LabNodeSpec
from provisioner.drivers import ipmi
from provisioner.drivers.base import BmcAccess, PowerState
from provisioner.drivers.pyghmi_io import recv_without_waiting
from provisioner.drivers.sweep import sweep_power


class _SenderSwitchesBackToBlocking:
    """A socket on which pyghmi's _io_sendto, on another thread, calls setblocking(True) right after the
    I/O thread's setblocking(False): the interleaving traced in issue 4, made deterministic."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_pyghmi_reads_without_waiting_when_a_sender_left_the_socket_blocking() -> None:
    assert ipmisession._io_recvfrom is recv_without_waiting  # importing the driver installs it
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        results: list[object] = []
        reader = threading.Thread(
            target=lambda: results.append(
                ipmisession._io_recvfrom(_SenderSwitchesBackToBlocking(sock), 3000)
            ),
            daemon=True,
        )
        reader.start()
        reader.join(timeout=2.0)
        blocked = reader.is_alive()
        if blocked:  # release pyghmi's reader before failing
            sock.sendto(b"wake", sock.getsockname())
            reader.join(timeout=2.0)
        assert not blocked, "pyghmi's I/O thread blocked on a socket with nothing to read"
        assert results == [None]
        sock.sendto(b"\x06\x00\xff\x07", sock.getsockname())
        received = ipmisession._io_recvfrom(_SenderSwitchesBackToBlocking(sock), 3000)
        assert received is not None and received[0] == b"\x06\x00\xff\x07"


@pytest.fixture
def bmc(lab: tuple[Path, list[LabNodeSpec]]) -> Iterator[tuple[BmcAccess, Path]]:
    lab_dir, specs = lab
    spec = next(s for s in specs if s.bmc_protocol == "ipmi")
    access = BmcAccess(
        "ipmi", spec.bmc_address, spec.bmc_port, spec.bmc_username, spec.bmc_password, timeout=1.0
    )
    directory = node_dir(lab_dir, spec.name)
    write_faults(directory)
    try:
        yield access, directory
    finally:
        write_faults(directory)
        ipmi.IpmiPowerDriver(access).close()


def test_a_job_runs_its_commands_in_order_on_one_session(bmc: tuple[BmcAccess, Path]) -> None:
    access, _ = bmc
    status = ipmi.IpmiCommand(ipmi.NETFN_CHASSIS, ipmi.CMD_CHASSIS_STATUS)
    boot = ipmi.IpmiCommand(ipmi.NETFN_CHASSIS, ipmi.CMD_GET_BOOT_OPTIONS, (ipmi.BOOT_PARAM_FLAGS, 0, 0))
    expected = [ipmi.CMD_CHASSIS_STATUS, ipmi.CMD_GET_BOOT_OPTIONS, ipmi.CMD_CHASSIS_STATUS]
    for _ in range(2):  # a fresh login, then the kept session
        job = ipmi.IpmiJob(access, (status, boot, status))
        ipmi.run_jobs([job])
        assert job.error is None
        assert [r["command"] for r in job.responses] == expected
        assert all(r["code"] == 0 for r in job.responses)


def test_a_bmc_silent_mid_session_costs_the_sweep_its_own_timeout(bmc: tuple[BmcAccess, Path]) -> None:
    access, directory = bmc
    assert ipmi.IpmiPowerDriver(access).get_power_state() in (PowerState.ON, PowerState.OFF)  # kept session
    write_faults(directory, drop=True)
    started = time.monotonic()
    results = sweep_power([access], timeout=1.0, max_workers=4)
    elapsed = time.monotonic() - started
    assert (results[access].state, results[access].error_code) == (PowerState.UNKNOWN, "bmc_unreachable")
    # the kept session's timeout, then one fresh login's: pyghmi's own wait for the dropped command
    # before it lets the session go took 15-20 s
    assert elapsed < 3.5


def test_closing_a_session_with_an_unanswered_keepalive_does_not_wait(bmc: tuple[BmcAccess, Path]) -> None:
    access, directory = bmc
    driver = ipmi.IpmiPowerDriver(access)
    assert driver.get_power_state() in (PowerState.ON, PowerState.OFF)
    write_faults(directory, drop=True)
    with ipmi._LOOP_LOCK:
        session = ipmi._SESSIONS[ipmi._session_key(access)].session
        session._keepalive()  # what pyghmi's loop sends after ~25 s idle; the BMC drops it
        assert session._isincommand()
    started = time.monotonic()
    driver.close()
    assert time.monotonic() - started < 0.5
    write_faults(directory)
    assert driver.get_power_state() in (PowerState.ON, PowerState.OFF)  # a fresh login works at once
