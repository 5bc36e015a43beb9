"""The Ansible burn-in driver takes what differs per node from the node's driver_info, recorded at
enrollment: a real server (none recorded) gets NVML, /usr/bin/python3 and the production timings; a lab
server its simulated GPUs, its Python and the faults its faults file holds when the burn-in starts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from provisioner.drivers.ansible import drivers
from provisioner.drivers.ansible.driver_info import AnsibleNodeInfo
from provisioner.drivers.ansible.runner import PlaybookResult
from provisioner.errors import DriverError
from provisioner.models import Node

REPORT = {"passed": True, "checks": []}


def _plain(value: Any) -> Any:
    """Host variables as Ansible reads them: the text inside the ``!unsafe`` wrapping (runner.untemplated)."""
    if isinstance(value, dict) and set(value) == {"__ansible_unsafe"}:
        return value["__ansible_unsafe"]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


@pytest.fixture
def playbook_hostvars(monkeypatch) -> list[dict[str, Any]]:
    """The host variables each burn-in playbook run is given (the run itself answers with a report)."""
    runs: list[dict[str, Any]] = []

    def run_playbook(playbook: str, *, host: str, hostvars: dict[str, Any], **_kw: Any) -> PlaybookResult:
        assert playbook == "burnin.yml"
        runs.append(_plain(hostvars))
        return PlaybookResult({"Run the burn-in checks under load": [{"stdout": json.dumps(REPORT)}]})

    monkeypatch.setattr(drivers, "run_playbook", run_playbook)
    return runs


def _burn_in(node: Node) -> dict[str, Any]:
    expectations = {"expect": {"gpu_count": 8}, "provisioning_private_key": "not-a-key"}
    return drivers.AnsibleBurnInDriver(node).run(node.name, expectations, lambda _line: None)


def test_a_server_without_driver_info_burns_in_its_gpus_through_nvml(
    inventory, playbook_hostvars, settings
) -> None:
    settings.NEOCLOUD_BURNIN_LOAD_SECONDS = 45.0
    settings.NEOCLOUD_BURNIN_DETACH_AFTER_SECONDS = 120.0  # one playbook run (the detached path: e2e test)
    node = Node.objects.get(name="node-h100-8x-01")
    assert node.driver_info == {}

    assert _burn_in(node) == REPORT
    [host] = playbook_hostvars
    assert (host["ansible_python_interpreter"], host["python"], host["backend"]) == (
        "/usr/bin/python3",
        "/usr/bin/python3",
        "nvml",
    )
    assert (host["faults"], host["load_seconds"], host["xid_wait_seconds"], host["sample_interval"]) == (
        {},
        45.0,
        5.0,
        1.0,
    )


def test_a_lab_server_burns_in_simulated_gpus_with_the_faults_its_file_holds_when_the_burn_in_starts(
    inventory, playbook_hostvars, tmp_path: Path
) -> None:
    faults_file = tmp_path / "gpu_faults.json"
    Node.objects.filter(name="node-h100-8x-01").update(
        driver_info={
            "python": "/opt/lab/bin/python",
            "burnin_backend": "simulated",
            "burnin_faults_file": str(faults_file),
            "burnin_load_seconds": 1.0,
            "burnin_xid_wait_seconds": 0.2,
            "burnin_sample_interval": 0.2,
        }
    )
    node = Node.objects.get(name="node-h100-8x-01")
    driver = drivers.AnsibleBurnInDriver(node)

    driver.run(node.name, {"expect": {}, "provisioning_private_key": "k"}, lambda _line: None)
    faults_file.write_text(json.dumps({"3": ["pcie_width:8"]}))  # a test injects a fault into the lab
    driver.run(node.name, {"expect": {}, "provisioning_private_key": "k"}, lambda _line: None)

    first, second = playbook_hostvars
    assert (first["python"], first["backend"], first["faults"]) == ("/opt/lab/bin/python", "simulated", {})
    assert second["faults"] == {"3": ["pcie_width:8"]}
    assert (second["load_seconds"], second["xid_wait_seconds"], second["sample_interval"]) == (1.0, 0.2, 0.2)


def test_a_faults_file_that_is_not_json_stops_the_burn_in_with_its_path(inventory, tmp_path: Path) -> None:
    faults_file = tmp_path / "gpu_faults.json"
    faults_file.write_text("{3: pcie")
    node = Node(name="n", driver_info={"burnin_backend": "simulated", "burnin_faults_file": str(faults_file)})
    with pytest.raises(DriverError, match=f"burn-in faults file {faults_file} could not be read"):
        AnsibleNodeInfo.of(node).faults()
