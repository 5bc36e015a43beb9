"""A deploy or wipe that fails leaves nothing running on the server: the engine powers it off through its
BMC. A failed wipe would otherwise leave the released customer's OS up (the firmware falls back to the disk
when the network boot fails), with their keys on it, on a server they no longer pay for."""

from __future__ import annotations

from provisioner.drivers.fake import read_fake_bmc
from provisioner.drivers.fake_deploy import FakeDeployDriver
from provisioner.engine.runner import execute
from provisioner.errors import BmcUnreachable, DeployFailed
from provisioner.lifecycle import Actor
from provisioner.models import Node, Operation
from provisioner.services.reservations import release_reservation
from provisioner.states import NodeState, OperationKind, OperationState, PowerStateChoice
from tests.conftest import reserve


def _power(node: Node) -> str:
    return read_fake_bmc(node.bmc_access())["power"]


def _active(inventory, monkeypatch):
    r = reserve(inventory, label="o")
    node = Node.objects.get(reservation=r)
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(provision.pk, owner="w1") == OperationState.SUCCEEDED
    node.refresh_from_db()
    assert node.state == NodeState.ACTIVE and _power(node) == "on"
    return r, node


def test_a_failed_wipe_powers_the_released_server_off(inventory, fake_hw_dir, monkeypatch, transactional_db):
    r, node = _active(inventory, monkeypatch)

    def wipe_falls_back_to_disk(self, node_name, log):
        # the one-time network boot was ignored: the firmware booted the customer's OS from the disk
        self.power.power_on()
        raise DeployFailed(f"{node_name} never fetched its iPXE script")

    monkeypatch.setattr(FakeDeployDriver, "wipe", wipe_falls_back_to_disk)
    release_reservation(r, actor=Actor(user=inventory.owner, label="o"))
    release = Operation.objects.get(node=node, kind=OperationKind.RELEASE)
    assert execute(release.pk, owner="w1") == OperationState.FAILED
    node.refresh_from_db()
    assert _power(node) == "off"
    assert node.power_state == PowerStateChoice.OFF
    assert release.log_lines.filter(
        message__contains="the wipe failed: " + node.name + " powered off"
    ).exists()


def test_a_failed_deploy_powers_the_server_off(inventory, fake_hw_dir, monkeypatch, transactional_db):
    (fake_hw_dir / "node-h100-8x-01.faults.json").write_text('{"deploy": "crash"}')
    r = reserve(inventory, label="o")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    node = Node.objects.get(pk=provision.node_id)
    assert node.name == "node-h100-8x-01"
    assert execute(provision.pk, owner="w1") == OperationState.FAILED
    assert _power(node) == "off"  # the fake deploy had powered it on into the "ramdisk"
    assert provision.log_lines.filter(
        message__contains="the deploy failed: node-h100-8x-01 powered off"
    ).exists()


def test_a_bmc_that_cannot_power_off_is_logged_and_the_steps_own_error_stands(
    inventory, fake_hw_dir, monkeypatch, transactional_db
):
    from provisioner.drivers.fake import FakePowerDriver

    r = reserve(inventory, label="o")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)

    def agent_gives_up(self, request, log):
        raise DeployFailed(f"the deploy agent on {request.node_name} stopped without reporting back")

    def unreachable(self, *, soft=False):
        raise BmcUnreachable("the BMC does not answer")

    monkeypatch.setattr(FakeDeployDriver, "deploy", agent_gives_up)
    monkeypatch.setattr(FakePowerDriver, "power_off", unreachable)
    assert execute(provision.pk, owner="w1") == OperationState.FAILED
    provision.refresh_from_db()
    assert "stopped without reporting back" in provision.error
    assert provision.log_lines.filter(message__contains="powering node-h100-8x-01 off failed too").exists()
