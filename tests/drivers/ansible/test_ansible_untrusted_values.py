"""Text a customer chose reaches Ansible as data, never as a template: an SSH key's comment holding
``{{ lookup('pipe', ...) }}`` must not run a command on the control plane when the node is handed over."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from provisioner.drivers.ansible import runner as ansible
from provisioner.drivers.ansible.drivers import AnsibleDeployDriver
from provisioner.drivers.base import HandoverRequest
from provisioner.models import Node
from provisioner.sshkeys import generate_keypair, parse_public_key

pytestmark = pytest.mark.slow

# The real handover.yml needs a deployed node's sshd; this one runs its task on the control plane, on a
# file of ours, and shows what the module was given (play vars outrank the inventory's connection).
PROBE_PLAYBOOK = """
- name: Hand over
  hosts: nodes
  gather_facts: false
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
  tasks:
    - name: Show what the module gets
      debug:
        msg: "{{{{ customer_keys }}}}"
    - name: Check the customer's keys are installed and remove the provisioning key
      neocloud_authorized_keys:
        path: {authorized_keys}
        present: "{{{{ customer_keys }}}}"
        absent: "{{{{ provisioning_public_key }}}}"
"""


def test_handover_never_renders_templates_in_customer_key_comments(
    inventory, fake_hw_dir, transactional_db, tmp_path: Path, monkeypatch
) -> None:
    playbooks = tmp_path / "playbooks"
    shutil.copytree(ansible.PLAYBOOK_DIR, playbooks)
    authorized_keys = tmp_path / "authorized_keys"
    (playbooks / "handover.yml").write_text(
        PROBE_PLAYBOOK.format(python=sys.executable, authorized_keys=authorized_keys)
    )
    monkeypatch.setattr(ansible, "PLAYBOOK_DIR", playbooks)
    monkeypatch.setattr(AnsibleDeployDriver, "_check_provisioning_key_refused", staticmethod(lambda _r: None))
    canary = tmp_path / "ran-on-the-control-plane"
    _private, public = generate_keypair(comment=f"laptop {{{{ lookup('pipe', 'touch {canary}') }}}}")
    customer_line = parse_public_key(public).line  # the portal accepts it: a comment is free text
    provisioning_private, provisioning_public = generate_keypair()
    authorized_keys.write_text(f"{customer_line}\n{provisioning_public}\n")
    node = Node.objects.get(name="node-h100-8x-01")
    lines: list[str] = []

    AnsibleDeployDriver(node).handover(
        HandoverRequest(
            node_name=node.name,
            address="127.0.0.1",
            port=22,
            username="root",
            expected_fingerprints={},
            provisioning_private_key=provisioning_private,
            provisioning_public_key=provisioning_public,
            customer_keys=[customer_line],
        ),
        lambda message, **_: lines.append(message),
    )

    assert not canary.exists()
    assert any(f"lookup('pipe', 'touch {canary}')" in line for line in lines), lines
    assert authorized_keys.read_text() == f"{customer_line}\n"
