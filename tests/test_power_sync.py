"""Fleet power sync: concurrent polling, unknown (never a guess) for silent BMCs, drift events."""

from __future__ import annotations

import pytest

from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import write_fake_bmc
from provisioner.models import AuditEvent, Node
from provisioner.services.power import sync_power
from provisioner.states import NodeState


def _access(node: Node) -> BmcAccess:
    return BmcAccess(
        protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
    )


@pytest.mark.django_db
def test_power_sync_records_state_unknown_and_drift(inventory, fake_hw_dir, settings):
    settings.NEOCLOUD_BMC_TIMEOUT_SECONDS = 0.3
    nodes = {n.name: n for n in Node.objects.all()}
    write_fake_bmc(_access(nodes["node-h100-8x-01"]), power="on")  # available but on: drift
    write_fake_bmc(_access(nodes["node-h100-8x-02"]), fault="timeout")  # silent BMC
    write_fake_bmc(_access(nodes["node-h100-8x-03"]), power="off")
    counts = sync_power()
    assert counts == {"polled": 6, "unknown": 1, "drift": 1}
    states = dict(Node.objects.values_list("name", "power_state"))
    assert states["node-h100-8x-01"] == "on"
    assert states["node-h100-8x-02"] == "unknown"
    assert states["node-h100-8x-03"] == "off"
    assert Node.objects.get(name="node-h100-8x-02").bmc_last_error  # the reason is kept for operators
    drift = AuditEvent.objects.get(action="power_drift")
    assert drift.node.name == "node-h100-8x-01" and "expected off" in drift.reason
    # a second pass with nothing changed records no second drift event
    assert sync_power()["drift"] == 0
    assert AuditEvent.objects.filter(action="power_drift").count() == 1
    assert Node.objects.get(name="node-h100-8x-01").state == NodeState.AVAILABLE
