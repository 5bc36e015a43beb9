"""The boot service's ticket status: what the engine's wait task polls (no database access of its own).
Read with the ticket's watch key only; the answer carries progress and the agent's result."""

from __future__ import annotations

import pytest

from provisioner.boot import tickets
from provisioner.engine.queue import create_operation
from provisioner.models import Node


@pytest.fixture
def ticket(inventory):
    node = Node.objects.get(name="node-h100-8x-01")
    operation = create_operation("provision", node)
    return tickets.open_ticket(node, operation, {"action": "deploy", "node": node.name})


def _get(client, ticket_id: int, key: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {key}"} if key is not None else {}
    return client.get(f"/boot/api/tickets/{ticket_id}", **headers)


def test_status_follows_the_ticket_from_open_to_the_agents_result(client, ticket):
    key = tickets.watch_key(ticket.pk)
    body = _get(client, ticket.pk, key).json()
    assert body == {"script_served": False, "finished": False, "progress": {}, "result": {}}
    tickets.record_progress(ticket, {"stage": "write", "percent": 40, "message": "writing"})
    assert _get(client, ticket.pk, key).json()["progress"]["percent"] == 40
    tickets.record_result(ticket, {"status": "ok", "bytes_written": 1024})
    body = _get(client, ticket.pk, key).json()
    assert body["finished"] and body["result"] == {"status": "ok", "bytes_written": 1024}


def test_status_needs_this_tickets_watch_key(client, ticket):
    other = tickets.open_ticket(ticket.node, ticket.operation, {"action": "erase", "node": ticket.node.name})
    assert _get(client, ticket.pk, None).status_code == 403
    assert _get(client, ticket.pk, "nope").status_code == 403
    response = _get(client, ticket.pk, tickets.watch_key(other.pk))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_key"
    assert _get(client, 999999, tickets.watch_key(999999)).status_code == 404
