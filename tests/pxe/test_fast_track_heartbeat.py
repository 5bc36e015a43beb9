"""The boot service's side of fast-track: a wipe's agent that reports success with fast-track asked for
stays recorded on its node; its heartbeats move the deadline on, hand over a ticket a deploy opened (as a
PXE boot would claim it), and end (410) once the node is held or the fast-track is over."""

from __future__ import annotations

import pytest
from django.utils import timezone

from provisioner.boot import fast_track, tickets
from provisioner.engine.queue import create_operation
from provisioner.models import DeployTicket, Node

MAC = "52:54:00:00:00:01"  # node-h100-8x-01 in the inventory fixture


@pytest.fixture
def node(inventory, settings):
    settings.NEOCLOUD_FAST_TRACK = True
    settings.NEOCLOUD_FAST_TRACK_HEARTBEAT_SECONDS = 2.0
    settings.NEOCLOUD_FAST_TRACK_MISSED_HEARTBEATS = 3
    return Node.objects.get(boot_mac=MAC)


def _wiped_with_agent_up(client, node) -> str:
    """A wipe's ticket served, its instructions fetched and its ok result posted: returns the agent's token."""
    ticket = tickets.open_ticket(
        node, create_operation("clean", node), fast_track.erase_instructions(node.name)
    )
    assert ticket.instructions["fast_track"] == {"heartbeat_seconds": 2.0}
    _, token = tickets.claim_for_boot(node)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/boot/api/instructions", **auth).status_code == 200
    result = {"status": "ok", "bytes_written": 4096, "message": "disk overwritten"}
    assert client.post("/boot/api/result", result, content_type="application/json", **auth).status_code == 200
    return token


def _beat(client, token):
    return client.post(
        "/boot/api/heartbeat", {}, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {token}"
    )


def test_a_fast_tracked_agent_waits_then_takes_the_next_deploys_ticket_without_a_boot(client, node):
    token = _wiped_with_agent_up(client, node)
    node.refresh_from_db()
    assert node.fast_track_ticket_id and fast_track.is_fast_tracked(node)
    first_deadline = node.fast_track_until

    answer = _beat(client, token)
    assert answer.status_code == 200 and answer.json() == {"action": "wait", "interval": 2.0}
    node.refresh_from_db()
    assert node.fast_track_until >= first_deadline

    deploy = tickets.open_ticket(
        node, create_operation("provision", node), {"action": "erase", "node": node.name}
    )
    answer = _beat(client, token).json()
    assert answer["action"] == "run" and answer["token"]
    deploy.refresh_from_db()
    assert deploy.script_served_at is not None  # claimed: a PXE boot would get no second token
    assert tickets.ticket_for_token(answer["token"]).pk == deploy.pk
    node.refresh_from_db()
    assert node.fast_track_ticket_id is None and not fast_track.is_fast_tracked(node)
    assert _beat(client, token).status_code == 410  # the old ticket is done


def test_heartbeats_end_for_a_held_node_and_after_the_deadline(client, node):
    token = _wiped_with_agent_up(client, node)
    Node.objects.filter(pk=node.pk).update(state="maintenance")  # an operator's hold (its wipe's op aside)
    assert _beat(client, token).status_code == 410
    Node.objects.filter(pk=node.pk).update(state="available", fast_track_until=timezone.now())
    assert _beat(client, token).status_code == 410


def test_without_fast_track_a_wipe_records_nothing(client, node, settings):
    settings.NEOCLOUD_FAST_TRACK = False
    ticket = tickets.open_ticket(
        node, create_operation("clean", node), fast_track.erase_instructions(node.name)
    )
    assert "fast_track" not in ticket.instructions
    assert not DeployTicket.objects.filter(pk=ticket.pk, node__fast_track_ticket__isnull=False).exists()
