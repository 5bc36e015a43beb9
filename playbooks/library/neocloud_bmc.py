#!/usr/bin/python
"""Ansible module: power and boot-device control of a Neocloud node through Neocloud's own drivers.

There is one implementation of BMC control (provisioner/drivers); this module only calls it. The node's
BMC credentials are read from Neocloud's database by node name, so no secret passes through Ansible.
Several actions may be given in order (one module run, one BMC session): starting a Python process with
Django for each action was most of a deploy's control-plane CPU time.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: neocloud_bmc
short_description: Power and boot device of a Neocloud node via its BMC (IPMI or Redfish)
options:
  node: {description: Node name in Neocloud's inventory, required: true, type: str}
  action:
    description: One action, or a list run in order
    required: true
    type: list
    elements: str
    choices: [status, power_on, power_off, soft_off, reset, boot_pxe, boot_disk, boot_disk_persistent,
              boot_pxe_persistent]
  expect_power: {description: After the actions, wait until this power state is reported, type: str,
                 choices: ['on', 'off']}
  timeout: {description: Seconds to wait for expect_power, type: float, default: 60}
"""

import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.neocloud_django import setup_django

ACTIONS = [
    "status",
    "power_on",
    "power_off",
    "soft_off",
    "reset",
    "boot_pxe",
    "boot_disk",
    "boot_disk_persistent",
    "boot_pxe_persistent",
]


def main():
    module = AnsibleModule(
        argument_spec={
            "node": {"type": "str", "required": True},
            "action": {"type": "list", "elements": "str", "required": True, "choices": ACTIONS},
            "expect_power": {"type": "str", "choices": ["on", "off"]},
            "timeout": {"type": "float", "default": 60.0},
        },
        supports_check_mode=False,
    )
    setup_django()
    from django.utils import timezone

    from provisioner import hardware
    from provisioner.drivers.base import BootDevice, BootSetting
    from provisioner.drivers.limits import with_retries
    from provisioner.errors import NeocloudError
    from provisioner.models import Node

    name, actions = module.params["node"], module.params["action"]
    try:
        node = Node.objects.select_related("bmc_credential").get(name=name)
    except Node.DoesNotExist:
        module.fail_json(msg=f"no node named {name!r} in Neocloud")
    driver = hardware.power_driver(node)
    changed = False
    done = []

    def retry(call, what):
        return with_retries(call, what=f"{name} {what}")

    def wait_for_power(expect, power):
        deadline = time.monotonic() + module.params["timeout"]
        while power.value != expect:
            if time.monotonic() > deadline:
                module.fail_json(msg=f"{name}: power stayed {power.value}, expected {expect}", done=done)
            time.sleep(0.5)
            power = retry(driver.get_power_state, "status")
        return power

    try:
        power = retry(driver.get_power_state, "status")
        for action in actions:
            if action == "power_on":
                changed |= power.value != "on"
                retry(driver.power_on, action)
            elif action in ("power_off", "soft_off"):
                changed |= power.value != "off"
                retry(lambda a=action: driver.power_off(soft=a == "soft_off"), action)
            elif action == "reset":
                changed = True
                driver.reset()  # never retried: each call reboots the node
            elif action.startswith("boot_"):
                changed = True
                device = BootDevice.PXE if "pxe" in action else BootDevice.DISK
                setting = BootSetting(device, persistent=action.endswith("persistent"))
                retry(lambda s=setting: driver.set_boot_device(s), action)
            if action != "status":
                power = retry(driver.get_power_state, "status")
            if action in ("power_off", "soft_off"):
                # the next action (a PXE boot, say) must find the node really off, not still going down
                power = wait_for_power("off", power)
            done.append(action)
        if module.params["expect_power"]:
            power = wait_for_power(module.params["expect_power"], power)
        Node.objects.filter(pk=node.pk).update(
            power_state=power.value, power_checked_at=timezone.now(), bmc_last_contact_at=timezone.now()
        )
    except NeocloudError as exc:
        module.fail_json(msg=f"{name}: {exc}", error_code=exc.code, retryable=exc.retryable, done=done)
    finally:
        driver.close()
    module.exit_json(
        changed=changed, power=power.value, done=done, msg=f"{name}: {', '.join(done)}; power {power.value}"
    )


if __name__ == "__main__":
    main()
