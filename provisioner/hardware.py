"""Builds the driver objects for a node from settings: the one place that picks implementations."""

from __future__ import annotations

from django.conf import settings

from provisioner.drivers.base import BurnInDriver, DeployDriver, PowerDriver
from provisioner.models import Node


def power_driver(node: Node) -> PowerDriver:
    from provisioner.drivers.registry import power_driver_for

    return power_driver_for(node.bmc_access())


def deploy_driver(node: Node) -> DeployDriver:
    if settings.NEOCLOUD_DEPLOY_DRIVER == "ansible":
        from provisioner.drivers.ansible.drivers import AnsibleDeployDriver

        return AnsibleDeployDriver(node)
    from provisioner.drivers.fake_deploy import FakeDeployDriver

    return FakeDeployDriver(
        power_driver(node), settings.NEOCLOUD_FAKE_HW_DIR, settings.NEOCLOUD_FAKE_AGENT_SECONDS
    )


def burnin_driver(node: Node) -> BurnInDriver:
    if settings.NEOCLOUD_BURNIN_DRIVER == "ansible":
        from provisioner.drivers.ansible.drivers import AnsibleBurnInDriver

        return AnsibleBurnInDriver(node)
    from provisioner.drivers.fake_deploy import FakeBurnInDriver

    return FakeBurnInDriver(settings.NEOCLOUD_FAKE_HW_DIR)
