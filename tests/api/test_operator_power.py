"""Operator node actions through the API on a customer's live server: power off, reset and pxe are refused
(409, in words) unless force=true; power on needs no force; a burn-in re-run on a quarantined server a
reservation still holds is refused."""

from __future__ import annotations

import pytest

from provisioner.models import Node, Operation
from provisioner.services import nodes as node_service
from provisioner.states import NodeState, OperationKind
from tests.api.test_api_bad_input import api
from tests.services.test_node_operator_actions import OPS, _active_leased_node

V1 = "/api/v1"


@pytest.mark.parametrize("action", ["off", "reset", "pxe"])
def test_power_action_on_a_leased_server_is_a_409_without_force(inventory, action):
    node = _active_leased_node(inventory)
    client = api(inventory.operator)
    refused = client.post(f"{V1}/admin/nodes/{node.pk}/power", {"action": action}, format="json")
    assert refused.status_code == 409, refused.content
    assert "leased to a customer" in refused.content.decode() and "force" in refused.content.decode()
    assert not Operation.objects.filter(node=node, kind=OperationKind.POWER).exists()
    forced = client.post(
        f"{V1}/admin/nodes/{node.pk}/power", {"action": action, "force": True}, format="json"
    )
    assert forced.status_code == 202, forced.content
    assert Operation.objects.get(node=node, kind=OperationKind.POWER).params["action"] == action


def test_power_on_of_a_leased_server_needs_no_force(inventory):
    node = _active_leased_node(inventory)
    response = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/power", {"action": "on"}, format="json"
    )
    assert response.status_code == 202, response.content


def test_power_off_of_an_idle_server_needs_no_force(inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    response = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/power", {"action": "off"}, format="json"
    )
    assert response.status_code == 202, response.content


def test_burnin_rerun_on_a_quarantined_server_still_held_by_a_reservation_is_a_409(inventory):
    node = node_service.quarantine(_active_leased_node(inventory), actor=OPS, reason="ECC", force=True)
    response = api(inventory.operator).post(f"{V1}/admin/nodes/{node.pk}/rerun-burnin", format="json")
    assert response.status_code == 409, response.content
    assert "still held by reservation" in response.content.decode()
    assert not Operation.objects.filter(node=node, kind=OperationKind.BURNIN).exists()
    assert Node.objects.get(pk=node.pk).state == NodeState.QUARANTINED


def test_the_power_force_field_is_documented():
    from drf_spectacular.generators import SchemaGenerator

    spec = SchemaGenerator().get_schema(request=None, public=True)
    force = spec["components"]["schemas"]["PowerRequest"]["properties"]["force"]
    assert "leased" in force["description"]
