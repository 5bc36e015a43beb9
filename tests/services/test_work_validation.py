"""Reimages and rollouts validate the node's record with the drivers the work uses when the work is accepted:
bad data is refused then, naming the node and the field, and nothing changes (no operation, no state move),
instead of a step failing later and leaving the node in error."""

from __future__ import annotations

import pytest

from provisioner.errors import InvalidNodeData, InvalidNodesData
from provisioner.lifecycle import Actor
from provisioner.models import AuditEvent, Node, Operation, Rollout
from provisioner.services.nodes import reimage
from provisioner.services.rollouts import progress, start_rollout
from provisioner.states import NodeState, OperationKind

OPERATOR = Actor.system("operator-test")


def _active_without_image(name: str) -> Node:
    """A customer's server handed over, whose image record is gone (the image was deleted since)."""
    Node.objects.filter(name=name).update(state=NodeState.ACTIVE, image=None)
    return Node.objects.get(name=name)


@pytest.mark.django_db
def test_reimaging_an_active_node_with_no_image_to_write_is_refused_naming_the_field(inventory):
    node = _active_without_image("node-h100-8x-01")
    with pytest.raises(InvalidNodeData) as caught:
        reimage(node, actor=OPERATOR, force=True)
    assert (caught.value.node, caught.value.field) == ("node-h100-8x-01", "image")
    assert str(caught.value).startswith("node-h100-8x-01: image: no image chosen")
    assert not Operation.objects.filter(node=node).exists()
    assert not AuditEvent.objects.filter(node=node, action="reimage").exists()
    assert Node.objects.get(pk=node.pk).state == NodeState.ACTIVE

    op = reimage(node, actor=OPERATOR, force=True, image=inventory.image)  # an image named: accepted
    assert op.kind == OperationKind.REIMAGE


@pytest.mark.django_db
def test_reimaging_an_idle_node_whose_bmc_record_is_incomplete_is_refused_before_it_is_wiped(inventory):
    Node.objects.filter(name="node-a100-8x-01").update(bmc_address="")
    node = Node.objects.get(name="node-a100-8x-01")
    with pytest.raises(InvalidNodeData) as caught:
        reimage(node, actor=OPERATOR)
    assert (caught.value.node, caught.value.field) == ("node-a100-8x-01", "bmc_address")
    assert Node.objects.get(pk=node.pk).state == NodeState.AVAILABLE  # not moved to cleaning
    assert not Operation.objects.filter(node=node).exists()

    # a wipe writes no image and runs no burn-in: a type without expectations does not stop it
    Node.objects.filter(name="node-a100-8x-02").update(state=NodeState.AVAILABLE)
    inventory.a100.gpu_model = ""
    inventory.a100.save()
    assert reimage(Node.objects.get(name="node-a100-8x-02"), actor=OPERATOR).kind == OperationKind.CLEAN


@pytest.mark.django_db
def test_a_rollout_refuses_invalid_nodes_one_by_one_with_the_reason_like_other_refusals(inventory):
    Node.objects.filter(name="node-h100-8x-02").update(boot_mac="")
    nodes = list(Node.objects.filter(name__in=["node-h100-8x-01", "node-h100-8x-02"]).order_by("name"))
    rollout = start_rollout(nodes, actor=OPERATOR, max_parallel=2, failure_budget=1)
    status = progress(rollout)
    broken = Node.objects.get(name="node-h100-8x-02")
    assert set(status.operations) == {nodes[0].pk}
    assert status.refused == {broken.pk: status.refused[broken.pk]}
    assert "node-h100-8x-02: boot_mac: no boot MAC is recorded" in status.refused[broken.pk]
    event = AuditEvent.objects.get(action="rollout_refused", node=broken)
    assert event.data["code"] == "invalid_node_data"
    assert status.failed == 1  # spends the failure budget, as a busy or leased node would
    assert Node.objects.get(pk=broken.pk).state == NodeState.AVAILABLE


@pytest.mark.django_db
def test_a_rollout_over_named_nodes_is_refused_whole_naming_every_invalid_node_and_field(inventory):
    Node.objects.filter(name="node-h100-8x-02").update(boot_mac="")
    Node.objects.filter(name="node-h100-8x-03").update(bmc_port=0)
    _active_without_image("node-a100-8x-01")
    nodes = list(Node.objects.order_by("name"))
    with pytest.raises(InvalidNodesData) as caught:
        start_rollout(nodes, actor=OPERATOR, max_parallel=2, failure_budget=5, force=True, named=True)
    assert [(d["node"], d["field"]) for d in caught.value.details()] == [
        ("node-a100-8x-01", "image"),
        ("node-h100-8x-02", "boot_mac"),
        ("node-h100-8x-03", "bmc_port"),
    ]
    assert str(caught.value).startswith("3 node(s) cannot be reimaged as recorded (node-a100-8x-01: image: ")
    assert caught.value.code == "invalid_node_data"
    assert not Rollout.objects.exists()
    assert not Operation.objects.exists()

    # the rollout's image is what an active node would be given: with one, that node passes
    Node.objects.filter(name="node-h100-8x-02").update(boot_mac="52:54:00:00:00:22")
    Node.objects.filter(name="node-h100-8x-03").update(bmc_port=623)
    rollout = start_rollout(
        nodes, actor=OPERATOR, image=inventory.image, max_parallel=2, failure_budget=5, force=True, named=True
    )
    assert progress(rollout).refused == {}
