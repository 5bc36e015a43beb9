#!/usr/bin/python
"""Ansible module: wait for the deploy agent of one deploy ticket to report its result.

The agent (running in the node's deploy ramdisk) posts progress and a result to Neocloud's boot service;
this module polls the ticket in Neocloud's database and fails with the agent's own message on failure.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: neocloud_deploy_wait
short_description: Wait for a Neocloud deploy agent's result
options:
  ticket: {description: Deploy ticket id, required: true, type: int}
  timeout: {description: Seconds to wait, type: float, default: 600}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.neocloud_django import setup_django


def main():
    module = AnsibleModule(
        argument_spec={
            "ticket": {"type": "int", "required": True},
            "timeout": {"type": "float", "default": 600.0},
        }
    )
    setup_django()
    from provisioner.models import DeployTicket

    deadline = time.monotonic() + module.params["timeout"]
    booted = False
    while True:
        ticket = DeployTicket.objects.get(pk=module.params["ticket"])
        if ticket.result_at is not None:
            break
        booted = booted or ticket.script_served_at is not None
        if time.monotonic() > deadline:
            stage = ticket.progress or {}
            if not booted:
                module.fail_json(msg="the node never fetched its iPXE script (did it PXE boot?)")
            module.fail_json(msg=f"the deploy agent did not finish in time (last progress: {stage})")
        time.sleep(0.3)
    result = ticket.result or {}
    if result.get("status") != "ok":
        module.fail_json(
            msg=f"deploy agent failed: {result.get('message', 'no message')}",
            error_code=result.get("error_code") or "deploy_failed",
        )
    module.exit_json(
        changed=True,
        msg=f"image written and verified ({result.get('bytes_written', 0)} bytes, sha256 {str(result.get('sha256', ''))[:12]}…)",
        host_key_fingerprints=result.get("host_key_fingerprints", {}),
    )


if __name__ == "__main__":
    main()
