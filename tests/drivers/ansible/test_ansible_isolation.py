"""What a playbook run may reach and leave behind: Ansible sees none of the worker's environment but its own,
host variables are data (never templates, whoever chose them), a cancelled run leaves no process running,
and an ansible-playbook that cannot start says why."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from provisioner.drivers.ansible import runner as ansible
from provisioner.drivers.ansible.runner import (
    PlaybookFailed,
    PlaybookResult,
    local_host,
    run_playbook,
    ssh_host,
    untemplated,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def playbooks(tmp_path: Path, monkeypatch, settings, transactional_db) -> Path:
    """A copy of playbooks/ to add probe playbooks to, and a spool of this test's own."""
    path = tmp_path / "playbooks"
    shutil.copytree(ansible.PLAYBOOK_DIR, path)
    monkeypatch.setattr(ansible, "PLAYBOOK_DIR", path)
    settings.VAR_DIR = tmp_path / "var"
    return path


def _processes_with(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, NotADirectoryError):
            continue
        if marker in cmdline:
            found.append(f"{entry}: {cmdline}")
    return found


def test_ansible_gets_none_of_the_workers_environment_but_its_own(playbooks: Path, monkeypatch, settings):
    monkeypatch.setenv("DATABASE_URL", "postgres://neocloud:db-canary-pw@db/neocloud")
    monkeypatch.setenv("NEOCLOUD_CREDENTIAL_KEYS", "credential-keys-canary")
    monkeypatch.setenv("ANSIBLE_LOG_PATH", str(settings.VAR_DIR / "ansible.log"))
    monkeypatch.setenv("NEOCLOUD_BMC_SESSIONS_TOTAL", "7")  # the drivers' limits still reach our modules
    (playbooks / "probe.yml").write_text(
        """
- hosts: nodes
  gather_facts: false
  tasks:
    - name: Show the environment
      debug:
        msg: "{{ lookup('env', 'DATABASE_URL') }}|{{ lookup('env', 'NEOCLOUD_CREDENTIAL_KEYS') }}|\\
          {{ lookup('env', 'NEOCLOUD_BMC_SESSIONS_TOTAL') }}|{{ lookup('env', 'NEOCLOUD_FAKE_HW_DIR') }}"
"""
    )
    artifacts: list[str] = []

    def log(message: str, **_: Any) -> None:  # called while the run is under way
        artifacts.extend(p.read_text() for p in (settings.VAR_DIR / "ansible").rglob("artifacts/*/command"))

    result = run_playbook("probe.yml", host="node-1", hostvars=local_host(), log=log)

    assert result.last("Show the environment")["msg"] == f"||7|{settings.NEOCLOUD_FAKE_HW_DIR}"
    assert artifacts and not any("canary" in text for text in artifacts)
    assert not (settings.VAR_DIR / "ansible.log").exists()


def test_host_variables_are_data_never_templates(playbooks: Path, tmp_path: Path) -> None:
    """An address, a login or any other host variable from the inventory (operators' text, NetBox) is
    passed on as written: ``{{ lookup('pipe', ...) }}`` in it must not run on the control plane."""
    canary = tmp_path / "ran-on-the-control-plane"
    evil = f"{{{{ lookup('pipe', 'touch {canary}') }}}}"
    (playbooks / "probe.yml").write_text(
        """
- hosts: nodes
  gather_facts: false
  vars:
    ansible_connection: local
  tasks:
    - name: Show the host variables
      debug:
        msg: "{{ ansible_host | default('') }}|{{ ansible_user | default('') }}|{{ note }}|{{ label }}"
"""
    )
    lines: list[str] = []
    ssh_vars = ssh_host(evil, 22, evil, "/usr/bin/python3", note=[evil], label=untemplated(evil))
    ssh_vars.pop("ansible_python_interpreter")  # the probe runs locally, with this virtualenv's Python
    for hostvars in (local_host(note={"text": evil}, label=evil), ssh_vars):
        result = run_playbook(
            "probe.yml",
            host="node-1",
            hostvars=hostvars,
            files={"provisioning_key": "not used", "known_hosts": ""},
            log=lambda message, **_: lines.append(message),
        )
        assert evil in result.last("Show the host variables")["msg"]
    assert not canary.exists(), lines
    assert untemplated(untemplated(evil)) == untemplated(evil)


def test_a_cancelled_run_stops_ansible_playbook_and_every_process_it_started(playbooks: Path) -> None:
    marker = f"{3000 + secrets.randbelow(999)}.{secrets.randbelow(10**6)}"  # this test's sleeps only
    (playbooks / "probe.yml").write_text(
        f"""
- hosts: nodes
  gather_facts: false
  tasks:
    - name: Sleep
      shell: "sleep {marker} & sleep {marker}"
"""
    )
    cancel = threading.Event()

    def log(message: str, **_: Any) -> None:
        if message == "TASK [Sleep]":
            threading.Timer(1.0, cancel.set).start()  # once the shell runs

    started = time.monotonic()
    with pytest.raises(PlaybookFailed, match="was cancelled") as err:
        run_playbook("probe.yml", host="node-1", hostvars=local_host(), log=log, cancel=cancel)
    assert err.value.retryable
    assert time.monotonic() - started < ansible.CANCEL_GRACE_SECONDS
    deadline = time.monotonic() + 5
    while _processes_with(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_with(f"sleep {marker}")


def test_a_cancelled_host_leaves_the_others_in_its_batch_alone(playbooks: Path) -> None:
    (playbooks / "probe.yml").write_text(
        """
- hosts: nodes
  gather_facts: false
  strategy: free
  tasks:
    - name: Work
      command: sleep 2
"""
    )
    outcomes: dict[str, Any] = {}
    cancel = threading.Event()
    cancel.set()

    def one(host: str, cancel: threading.Event | None) -> None:
        try:
            outcomes[host] = run_playbook(
                "probe.yml", host=host, hostvars=local_host(), log=lambda *_, **__: None, cancel=cancel
            )
        except PlaybookFailed as exc:
            outcomes[host] = exc

    threads = [
        threading.Thread(target=one, args=("node-cancelled", cancel)),
        threading.Thread(target=one, args=("node-working", None)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    working = outcomes["node-working"]
    assert isinstance(working, PlaybookResult), working
    assert working.batch_size == 2 and working.last("Work")["rc"] == 0


def test_a_playbook_with_a_syntax_error_fails_at_once_in_ansibles_words(playbooks: Path) -> None:
    (playbooks / "probe.yml").write_text("- hosts: nodes\n  tasks: [ {name: x, debug: {msg: 1}\n")
    started = time.monotonic()
    with pytest.raises(PlaybookFailed, match="YAML parsing failed") as err:
        run_playbook("probe.yml", host="node-1", hostvars=local_host(), log=lambda *_, **__: None)
    assert "probe.yml" in str(err.value) and time.monotonic() - started < 30


def test_a_missing_ansible_playbook_fails_at_once_and_says_so(playbooks: Path, monkeypatch) -> None:
    env = ansible.environment()
    monkeypatch.setattr(ansible, "environment", lambda: {**env, "PATH": "/nonexistent"})
    with pytest.raises(PlaybookFailed, match="not found or was not executable: ansible-playbook"):
        run_playbook("power.yml", host="node-1", hostvars=local_host(), log=lambda *_, **__: None)
