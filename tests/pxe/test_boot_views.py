"""The boot service's Django views: the iPXE script per MAC with its one-time token, and its refusals."""

from __future__ import annotations

import pytest

from provisioner.boot import tickets
from provisioner.engine.queue import create_operation
from provisioner.models import DeployTicket, Node
from provisioner.pxe.ipxe import parse_ipxe_script

MAC = "52:54:00:00:00:01"  # node-h100-8x-01 in the inventory fixture


@pytest.fixture
def node(inventory):
    return Node.objects.get(boot_mac=MAC)


def _open(node: Node) -> DeployTicket:
    return tickets.open_ticket(
        node, create_operation("provision", node), {"action": "erase", "node": node.name}
    )


@pytest.mark.parametrize("mac", [MAC, MAC.upper(), MAC.replace(":", "-"), MAC.upper().replace(":", "-")])
def test_boot_script_carries_a_token_for_the_mac_in_colon_or_hyphen_form_any_case(client, node, mac):
    _open(node)
    response = client.get(f"/boot/{mac}.ipxe")
    assert response.status_code == 200
    params = parse_ipxe_script(response.content.decode()).kernel_params()
    assert params["neocloud.node"] == node.name and params["neocloud.token"]


@pytest.mark.parametrize("mac", ["5254.0000.0001", "525400000001", "52:54-00:00:00:01", "52:54:00:00:00:0g"])
def test_other_mac_notations_are_refused_with_an_ipxe_script_that_says_so(client, node, mac):
    _open(node)
    response = client.get(f"/boot/{mac}.ipxe")
    assert response.status_code == 400
    assert response.content == b"#!ipxe\necho invalid MAC address\nexit 1\n"
    assert DeployTicket.objects.get(node=node).script_served_at is None  # the deploy still waits for it


def test_a_node_name_the_script_cannot_carry_fails_the_deploy_at_once_with_the_reason(client, node):
    """A name such as NetBox allows ("gpu node 01") cannot go on a kernel command line: the boot service
    answered with a 500 traceback, and the engine waited out its timeout for a node that never booted."""
    Node.objects.filter(pk=node.pk).update(name="gpu node 01")
    ticket = _open(node)

    response = client.get(f"/boot/{MAC}.ipxe")

    assert response.status_code == 500
    assert parse_ipxe_script(response.content.decode()).exits
    ticket.refresh_from_db()
    assert ticket.result_at is not None
    assert ticket.result["status"] == "failed" and ticket.result["error_code"] == "boot_script_invalid"
    assert "'gpu node 01'" in ticket.result["message"]
    status = client.get(
        f"/boot/api/tickets/{ticket.pk}", HTTP_AUTHORIZATION=f"Bearer {tickets.watch_key(ticket.pk)}"
    ).json()
    assert status["finished"] and status["result"]["status"] == "failed"


def test_a_boot_mac_edited_in_another_notation_is_stored_as_the_boot_service_looks_it_up(client, node):
    """An operator editing the node (Django admin) may type AA-BB-...: stored as aa:bb:..., so the node
    still network-boots; a value that is no MAC is refused by the form's validation."""
    from django.core.exceptions import ValidationError

    node.boot_mac = "52-54-00-AB-CD-EF"
    node.save()
    assert Node.objects.get(pk=node.pk).boot_mac == "52:54:00:ab:cd:ef"
    _open(node)
    response = client.get("/boot/52:54:00:ab:cd:ef.ipxe")
    assert response.status_code == 200 and node.name in response.content.decode()

    node.boot_mac = "52:54:00:ab:cd"
    with pytest.raises(ValidationError, match="Enter a MAC address"):
        node.full_clean()


def test_the_boot_service_answers_only_the_provisioning_networks(client, node, settings):
    """A node's MAC is no secret: whoever fetched its script first would get the deploy's one-time token."""
    import ipaddress

    ticket = _open(node)
    outside = client.get(f"/boot/{MAC}.ipxe", REMOTE_ADDR="203.0.113.5")
    assert outside.status_code == 403
    assert b"only the provisioning networks" in outside.content
    assert DeployTicket.objects.get(pk=ticket.pk).script_served_at is None
    api = client.post(
        "/boot/api/result", data="{}", content_type="application/json", REMOTE_ADDR="203.0.113.5"
    )
    assert api.status_code == 403 and api.json()["error"]["code"] == "not_provisioning_network"

    settings.NEOCLOUD_BOOT_NETWORKS = (ipaddress.ip_network("203.0.113.0/24"),)
    inside = client.get(f"/boot/{MAC}.ipxe", REMOTE_ADDR="203.0.113.5")
    assert inside.status_code == 200 and b"neocloud.token=" in inside.content
    assert client.get(f"/boot/{MAC}.ipxe").status_code == 403  # loopback is no longer listed


@pytest.mark.parametrize("value", ["10.0.0.0/33", "not-a-net", " , "])
def test_boot_networks_setting_is_checked(monkeypatch, value):
    from django.core.exceptions import ImproperlyConfigured

    from webapp.env import env_networks

    monkeypatch.setenv("NEOCLOUD_BOOT_NETWORKS", value)
    with pytest.raises(ImproperlyConfigured, match="NEOCLOUD_BOOT_NETWORKS"):
        env_networks("NEOCLOUD_BOOT_NETWORKS", "127.0.0.0/8")


def test_a_database_outage_gets_a_script_that_asks_again_and_the_next_try_gets_the_token(
    client, node, monkeypatch
):
    from django.db import OperationalError

    from provisioner.pxe.ipxe import is_chained_script

    _open(node)
    real = tickets.claim_for_boot

    def restarting(node):
        raise OperationalError("the database system is shutting down")

    monkeypatch.setattr(tickets, "claim_for_boot", restarting)
    response = client.get(f"/boot/{MAC}.ipxe")
    assert response.status_code == 200  # iPXE runs only a script it got with 200
    script = parse_ipxe_script(response.content.decode())
    assert script.boots and is_chained_script(script.kernel_url)
    assert script.kernel_url.endswith(f"/boot/{MAC}.ipxe")
    monkeypatch.setattr(tickets, "claim_for_boot", real)
    params = parse_ipxe_script(client.get(f"/boot/{MAC}.ipxe").content.decode()).kernel_params()
    assert params["neocloud.token"]
