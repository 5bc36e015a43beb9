"""Our remote Ansible module for the handover, run by real ansible-playbook against real files."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from provisioner.drivers.ansible import runner as ansible
from provisioner.sshkeys import generate_keypair

pytestmark = pytest.mark.slow


def _keys(n: int) -> list[str]:
    return [generate_keypair("ed25519", comment=f"key-{i}")[1].strip() for i in range(n)]


def _run_module(
    tmp_path: Path, args: dict[str, Any], module: str = "neocloud_authorized_keys"
) -> dict[str, Any]:
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (tmp_path / "private").mkdir(exist_ok=True)
    play = [
        {
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [{"name": "module", module: args, "register": "out", "ignore_errors": True}],
        }
    ]
    (project / "play.yml").write_text(json.dumps(play))
    results: list[dict[str, Any]] = []

    def handle(event: dict[str, Any]) -> bool:
        if event.get("event") in ("runner_on_ok", "runner_on_failed"):
            results.append({"failed": event["event"] == "runner_on_failed", **event["event_data"]["res"]})
        return True

    ansible_runner.run(
        private_data_dir=str(tmp_path / "private"),
        project_dir=str(project),
        playbook="play.yml",
        inventory={"all": {"hosts": {"localhost": {"ansible_connection": "local"}}}},
        envvars=ansible.environment(),
        event_handler=handle,
        quiet=True,
    )
    assert len(results) == 1
    return results[0]


def test_removes_the_provisioning_key_atomically_and_keeps_the_rest(tmp_path: Path) -> None:
    customer, other, provisioning = _keys(3)
    path = tmp_path / "authorized_keys"
    path.write_text(f'# managed by neocloud\n{customer}\nfrom="10.0.0.0/8" {provisioning}\n{other}\n')
    path.chmod(0o600)
    inode = path.stat().st_ino
    out = _run_module(tmp_path, {"path": str(path), "present": [customer], "absent": provisioning})
    assert not out["failed"] and out["changed"] and out["removed"] == 1 and out["remaining"] == 2
    assert path.read_text() == f"# managed by neocloud\n{customer}\n{other}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_ino != inode  # replaced, not edited
    again = _run_module(tmp_path, {"path": str(path), "present": [customer], "absent": provisioning})
    assert not again["failed"] and not again["changed"]  # idempotent
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".authorized_keys.")]


def test_a_commented_out_customer_key_is_no_key(tmp_path: Path) -> None:
    # An image that ships "# <customer key>": sshd ignores the line, so the customer would be locked out
    # once our key is gone; the handover must fail instead of removing it.
    customer, provisioning = _keys(2)
    path = tmp_path / "authorized_keys"
    path.write_text(f"# {customer}\n{provisioning}\n")
    out = _run_module(tmp_path, {"path": str(path), "present": [customer], "absent": provisioning})
    assert out["failed"] and "are not in" in out["msg"]
    assert path.read_text() == f"# {customer}\n{provisioning}\n"


def test_a_missing_customer_key_fails_and_changes_nothing(tmp_path: Path) -> None:
    customer, missing, provisioning = _keys(3)
    path = tmp_path / "authorized_keys"
    path.write_text(f"{customer}\n{provisioning}\n")
    out = _run_module(tmp_path, {"path": str(path), "present": [customer, missing], "absent": provisioning})
    assert out["failed"] and "are not in" in out["msg"] and "ssh-ed25519" in out["msg"]
    assert path.read_text() == f"{customer}\n{provisioning}\n"


def test_refuses_to_lock_the_customer_out(tmp_path: Path) -> None:
    (provisioning,) = _keys(1)
    path = tmp_path / "authorized_keys"
    path.write_text(f"{provisioning}\n")
    out = _run_module(tmp_path, {"path": str(path), "present": [], "absent": provisioning})
    assert out["failed"] and "lock the customer out" in out["msg"]
    assert path.read_text() == f"{provisioning}\n"


def test_an_unreadable_file_is_a_clear_failure(tmp_path: Path) -> None:
    (provisioning,) = _keys(1)
    out = _run_module(tmp_path, {"path": str(tmp_path / "nope"), "absent": provisioning})
    assert out["failed"] and "cannot read" in out["msg"] and "nope" in out["msg"]
