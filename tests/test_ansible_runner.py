"""Playbooks through ansible-runner: task events reach the log, and a driver error's ``retryable`` crosses
the Ansible boundary so the engine retries what a retry can fix (a silent BMC) and nothing else."""

from __future__ import annotations

import pytest

from provisioner.ansible import PlaybookFailed, run_playbook
from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import read_fake_bmc, write_fake_bmc
from provisioner.models import Node

pytestmark = pytest.mark.slow


def _access(node: Node) -> BmcAccess:
    return BmcAccess(
        protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
    )


def _run(node: Node, action: str, lines: list[str]) -> None:
    run_playbook(
        "power.yml",
        extravars={"node": node.name, "action": action},
        log=lambda message, **_: lines.append(message),
    )


def test_power_playbook_drives_the_bmc_and_streams_task_events(inventory, fake_hw_dir, transactional_db):
    node = Node.objects.get(name="node-h100-8x-01")
    lines: list[str] = []
    _run(node, "power_on", lines)
    assert read_fake_bmc(_access(node))["power"] == "on"
    assert lines[0] == "TASK [power_on]" and "power on" in lines[-1]
    assert Node.objects.get(pk=node.pk).power_state == "on"


def test_silent_bmc_fails_the_playbook_as_retryable(inventory, fake_hw_dir, transactional_db, monkeypatch):
    monkeypatch.setenv("NEOCLOUD_BMC_TIMEOUT_SECONDS", "0.2")
    node = Node.objects.get(name="node-h100-8x-02")
    write_fake_bmc(_access(node), fault="timeout")
    with pytest.raises(PlaybookFailed, match="did not answer") as err:
        _run(node, "status", [])
    assert err.value.retryable


def test_refused_credentials_fail_the_playbook_as_final(inventory, fake_hw_dir, transactional_db):
    node = Node.objects.get(name="node-h100-8x-03")
    write_fake_bmc(_access(node), fault="auth")
    with pytest.raises(PlaybookFailed) as err:
        _run(node, "status", [])
    assert not err.value.retryable
    assert "secret-bmc-pw" not in str(err.value)
