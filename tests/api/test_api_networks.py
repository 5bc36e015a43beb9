"""Customers see their reservation's private network (CIDR, gateway, addresses; never the VLAN) and reach
their servers over SSH at their public address once handed over; operators see the port, expected and
observed VLAN and drift in the node view and repair a drifting port."""

from __future__ import annotations

import pytest

from provisioner.drivers.fake_switch import read_fake_switch, write_fake_switch
from provisioner.engine.runner import execute
from provisioner.models import Node, Operation
from provisioner.states import OperationKind, OperationState
from tests.api.test_api_flows import V1, api, reserve_body

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_customer_sees_the_private_network_and_ssh_at_the_public_address(network_site):
    client = api(network_site.owner)
    created = client.post(f"{V1}/reservations", reserve_body(count=2))
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["private_networks"] == [
        {
            "cidr": "198.19.0.0/29",
            "gateway": "198.19.0.1",
            "servers": [
                {"name": "node-h100-8x-01", "private_address": "198.19.0.2", "public_address": "203.0.113.1"},
                {"name": "node-h100-8x-02", "private_address": "198.19.0.3", "public_address": "203.0.113.2"},
            ],
        }
    ]
    assert "vlan" not in str(body).lower()
    assert body == client.get(f"{V1}/reservations/{body['id']}").json()
    for op in Operation.objects.filter(reservation_id=body["id"], kind=OperationKind.PROVISION):
        assert execute(op.pk, owner="w1") == OperationState.SUCCEEDED
    servers = client.get(f"{V1}/servers?reservation={body['id']}").json()["results"]
    first = next(s for s in servers if s["name"] == "node-h100-8x-01")
    assert first["private_address"] == "198.19.0.2" and first["public_address"] == "203.0.113.1"
    assert first["address"] == "203.0.113.1" and first["ssh_port"] == 22
    assert first["ssh_command"] == "ssh root@203.0.113.1"
    assert first["known_hosts"].startswith("203.0.113.1 ssh-ed25519 ")
    assert "vlan" not in str(servers).lower()
    org = client.get(f"{V1}/organizations").json()["results"][0]
    assert org["shared_private_network"] is False


def test_an_operator_sees_and_repairs_a_drifting_port(network_site):
    node = Node.objects.get(name="node-h100-8x-01")
    write_fake_switch("leaf1", ports={**read_fake_switch("leaf1")["ports"], node.switch_port: 100})
    client = api(network_site.operator)
    detail = client.get(f"{V1}/admin/nodes/{node.pk}").json()
    assert detail["network"]["switch"] == "leaf1" and detail["network"]["port"] == node.switch_port
    assert detail["network"]["expected_vlans"] == [10] and detail["network"]["observed_vlan"] is None
    checked = client.post(f"{V1}/admin/nodes/{node.pk}/network-check", {}, format="json")
    assert checked.status_code == 200, checked.content
    network = checked.json()["network"]
    assert network["observed_vlan"] == 100 and "requires VLAN 10" in network["drift"]
    repaired = client.post(
        f"{V1}/admin/nodes/{node.pk}/network-check", {"repair": True}, format="json"
    ).json()
    assert repaired["network"]["observed_vlan"] == 10 and repaired["network"]["drift"] == ""
    assert read_fake_switch("leaf1")["ports"][node.switch_port] == 10
