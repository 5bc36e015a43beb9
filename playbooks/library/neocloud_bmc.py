#!/usr/bin/python
"""Ansible module: power and boot-device control of a Neocloud node through Neocloud's own drivers.

There is one implementation of BMC control (provisioner/drivers); this module only calls it. How to reach
the BMC, credentials included, comes in a private file (mode 0600 in the run's 0700 directory, removed
after the run) that the engine writes: no secret is an Ansible variable, an argument or a log line. The
module starts no Django and opens no database connection (that was most of its CPU time); the engine
records the power state it reports. Several actions may be given in order (one module run, one session).
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: neocloud_bmc
short_description: Power and boot device of a Neocloud node via its BMC (IPMI or Redfish)
options:
  node: {description: Node name (for messages), required: true, type: str}
  access_path: {description: JSON file with the BMC's protocol, address, port, username, password, system_id,
                timeout, required: true, type: path}
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

import json
import time

from ansible.module_utils.basic import AnsibleModule

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
            "access_path": {"type": "path", "required": True},
            "action": {"type": "list", "elements": "str", "required": True, "choices": ACTIONS},
            "expect_power": {"type": "str", "choices": ["on", "off"]},
            "timeout": {"type": "float", "default": 60.0},
        },
        supports_check_mode=False,
    )
    # the project is on PYTHONPATH (the engine's environment)
    from provisioner.drivers.base import BmcAccess, BootDevice, BootSetting
    from provisioner.drivers.limits import with_retries
    from provisioner.drivers.registry import power_driver_for
    from provisioner.errors import NeocloudError, bmc_error_kind

    name, actions = module.params["node"], module.params["action"]
    try:
        with open(module.params["access_path"]) as fh:
            access = BmcAccess(**json.load(fh))
    except (OSError, ValueError, TypeError) as exc:
        module.fail_json(msg=f"{name}: cannot read the BMC access file: {exc.__class__.__name__}")
    try:
        driver = power_driver_for(access)
    except NeocloudError as exc:
        module.fail_json(msg=f"{name}: {exc}", error_code=exc.code, retryable=exc.retryable)
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
    except NeocloudError as exc:
        # bmc_error_kind: the engine counts the failed call (neocloud_bmc_call_errors_total)
        module.fail_json(
            msg=f"{name}: {exc}",
            error_code=exc.code,
            bmc_error_kind=bmc_error_kind(exc),
            retryable=exc.retryable,
            done=done,
        )
    finally:
        driver.close()
    module.exit_json(
        changed=changed, power=power.value, done=done, msg=f"{name}: {', '.join(done)}; power {power.value}"
    )


if __name__ == "__main__":
    main()
