"""The lab BMC endpoints are real: stock ipmitool and plain HTTP drive them, and no password leaks
onto a process command line while the lab runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from lab import supervisor
from lab.spec import LabNodeSpec
from provisioner.drivers.base import BmcAccess
from provisioner.drivers.sweep import sweep_power

pytestmark = pytest.mark.skipif(shutil.which("ipmitool") is None, reason="ipmitool is not installed")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[LabNodeSpec]]]:
    lab_dir = tmp_path_factory.mktemp("lab")
    try:
        yield lab_dir, supervisor.up(2, lab_dir, "http://127.0.0.1:1/boot", protocols="mixed")
    finally:
        supervisor.down(lab_dir)


def ipmitool(spec: LabNodeSpec, *args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ipmitool", "-I", "lanplus", "-H", spec.bmc_address, "-U", spec.bmc_username, "-E", *args],
        env={**os.environ, "IPMI_PASSWORD": password or spec.bmc_password},
        capture_output=True,
        text=True,
        timeout=20,
    )


def test_stock_ipmitool_lanplus_drives_the_lab_ipmi_bmc(lab: tuple[Path, list[LabNodeSpec]]) -> None:
    lab_dir, specs = lab
    spec = next(s for s in specs if s.bmc_protocol == "ipmi")
    assert ipmitool(spec, "power", "off").returncode == 0
    assert "Chassis Power is off" in ipmitool(spec, "power", "status").stdout
    assert ipmitool(spec, "power", "on").returncode == 0
    assert "Chassis Power is on" in ipmitool(spec, "power", "status").stdout
    assert ipmitool(spec, "chassis", "bootdev", "pxe").returncode == 0
    assert "Force PXE" in ipmitool(spec, "chassis", "bootparam", "get", "5").stdout
    row = next(r for r in supervisor.status(lab_dir) if r["name"] == spec.name)
    assert (row["power"], row["boot_device"], row["alive"]) == ("on", "pxe", True)
    assert ipmitool(spec, "power", "status", password="not-the-password").returncode != 0


def test_plain_http_drives_the_lab_redfish_bmc(lab: tuple[Path, list[LabNodeSpec]]) -> None:
    _, specs = lab
    spec = next(s for s in specs if s.bmc_protocol == "redfish")
    base = f"http://{spec.bmc_address}:{spec.bmc_port}"
    assert requests.get(f"{base}/redfish/v1/Systems", timeout=5).status_code == 401
    assert requests.get(f"{base}/redfish/v1/Systems", auth=("ncadmin", "wrong"), timeout=5).status_code == 401
    login = requests.post(
        f"{base}/redfish/v1/SessionService/Sessions",
        json={"UserName": spec.bmc_username, "Password": spec.bmc_password},
        timeout=5,
    )
    assert login.status_code == 201
    headers = {"X-Auth-Token": login.headers["X-Auth-Token"]}
    members = requests.get(f"{base}/redfish/v1/Systems", headers=headers, timeout=5).json()["Members"]
    system_url = base + members[0]["@odata.id"]
    system = requests.get(system_url, headers=headers, timeout=5).json()
    reset = system["Actions"]["#ComputerSystem.Reset"]
    assert "ForceOff" in reset["ResetType@Redfish.AllowableValues"]
    assert requests.post(
        base + reset["target"], json={"ResetType": "ForceOff"}, headers=headers, timeout=5
    ).ok
    assert requests.get(system_url, headers=headers, timeout=5).json()["PowerState"] == "Off"
    assert requests.post(base + reset["target"], json={"ResetType": "On"}, headers=headers, timeout=5).ok
    assert requests.get(system_url, headers=headers, timeout=5).json()["PowerState"] == "On"
    patch = {"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Continuous"}}
    assert requests.patch(system_url, json=patch, auth=(spec.bmc_username, spec.bmc_password), timeout=5).ok
    boot = requests.get(system_url, headers=headers, timeout=5).json()["Boot"]
    assert (boot["BootSourceOverrideTarget"], boot["BootSourceOverrideEnabled"]) == ("Pxe", "Continuous")
    bad = {"Boot": {"BootSourceOverrideTarget": "Floppy"}}
    assert requests.patch(system_url, json=bad, headers=headers, timeout=5).status_code == 400
    logout = requests.delete(base + login.headers["Location"], headers=headers, timeout=5)
    assert logout.status_code == 204
    assert requests.get(system_url, headers=headers, timeout=5).status_code == 401


def test_lab_redfish_says_connection_close_when_it_closes(lab: tuple[Path, list[LabNodeSpec]]) -> None:
    """sushy sends ``Connection: close`` on every request. A server that closes without saying so in its
    answer leaves the socket in the client's pool, and the next request races the close ("Remote end closed
    connection without response"): the CI flake of the Redfish contract tests."""
    _, specs = lab
    spec = next(s for s in specs if s.bmc_protocol == "redfish")
    base = f"http://{spec.bmc_address}:{spec.bmc_port}"
    with requests.Session() as session:
        session.headers["Connection"] = "close"
        session.auth = (spec.bmc_username, spec.bmc_password)
        for _ in range(100):  # one pooled session, as sushy's: every request must find a fresh connection
            answer = session.get(f"{base}/redfish/v1/Systems", timeout=5)
            assert answer.status_code == 200
            assert answer.headers.get("Connection") == "close"
    with requests.Session() as session:  # keep-alive clients keep their connection
        answer = session.get(f"{base}/redfish/v1/", timeout=5)
        assert answer.status_code == 200 and "Connection" not in answer.headers


def test_no_bmc_password_on_any_command_line_during_a_lab_run(lab: tuple[Path, list[LabNodeSpec]]) -> None:
    _, specs = lab
    passwords = [s.bmc_password.encode() for s in specs]
    ipmi = next(s for s in specs if s.bmc_protocol == "ipmi")
    # ipmitool running in parallel with a sweep: its command line must not hold the password either
    slow = subprocess.Popen(
        [
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            ipmi.bmc_address,
            "-U",
            ipmi.bmc_username,
            "-E",
            "-R",
            "1",
            "sdr",
            "list",
        ],
        env={**os.environ, "IPMI_PASSWORD": ipmi.bmc_password},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        accesses = [
            BmcAccess(
                s.bmc_protocol,
                s.bmc_address,
                s.bmc_port,
                s.bmc_username,
                s.bmc_password,
                s.system_id,
                scheme=s.bmc_scheme or "https",
            )
            for s in specs
        ]
        sweep_power(accesses, timeout=2.0, max_workers=4)
        seen = 0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            seen += 1
            for password in passwords:
                assert password not in cmdline, f"a BMC password is on the command line of pid {entry.name}"
        assert seen > len(specs)  # we really looked at the node processes and more
    finally:
        slow.kill()
        slow.wait()
