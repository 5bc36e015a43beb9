"""The portal shows a customer their reservation's private network and each server's private and public
address, with the SSH command at the public address (never a VLAN); operators see the node's switch port,
expected and observed VLAN and drift, and repair it."""

from __future__ import annotations

import pytest
from django.contrib import messages
from django.urls import reverse

from provisioner.drivers.fake_switch import read_fake_switch, write_fake_switch
from provisioner.engine.runner import execute
from provisioner.models import Node, Operation
from provisioner.states import OperationKind, OperationState
from tests.conftest import reserve

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_customer_sees_the_private_network_and_the_public_ssh_command(client, network_site):
    r = reserve(network_site, 1)
    op = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(op.pk, owner="w1") == OperationState.SUCCEEDED
    client.force_login(network_site.owner)
    body = client.get(reverse("portal:reservation", args=[r.pk])).content.decode()
    assert "198.19.0.0/29" in body and "198.19.0.1" in body  # the network and its gateway
    assert 'class="private-address">198.19.0.2<' in body and 'class="public-address">203.0.113.1<' in body
    assert "ssh root@203.0.113.1" in body
    assert "203.0.113.1 ssh-ed25519 " in body  # known_hosts for the address they connect to
    assert "VLAN" not in body and "vlan" not in body


def test_an_operator_sees_the_port_and_repairs_drift(client, network_site):
    node = Node.objects.get(name="node-h100-8x-01")
    write_fake_switch("leaf1", ports={**read_fake_switch("leaf1")["ports"], node.switch_port: 100})
    client.force_login(network_site.operator)
    url = reverse("portal:ops_node_action", args=[node.pk])
    response = client.post(url, {"action": "network_check"})
    [message] = [m.message for m in messages.get_messages(response.wsgi_request)]
    assert "is on VLAN 100; available requires VLAN 10" in message
    page = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert "leaf1" in page and 'id="node-drift"' in page and "requires VLAN 10" in page
    response = client.post(url, {"action": "network_repair"})
    [message] = [m.message for m in messages.get_messages(response.wsgi_request)]
    assert "moved back to the VLAN its state requires" in message
    assert read_fake_switch("leaf1")["ports"][node.switch_port] == 10
    page = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    assert 'id="node-drift"' not in page and "observed <code>10</code>" in page
