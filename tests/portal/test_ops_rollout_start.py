"""Starting a rollout from the operator portal: the flash tells what happened, not only that a rollout was
created. A selected server that cannot be reimaged (on hold, quarantined, in error) is refused by the
rollout and spends its failure budget: a rollout whose budget it exhausts halts at once."""

from __future__ import annotations

import pytest
from django.contrib import messages
from django.urls import reverse

from provisioner.models import Node, Rollout
from provisioner.services import nodes as node_service
from provisioner.states import NodeState
from tests.services.test_node_operator_actions import OPS

pytestmark = pytest.mark.django_db


def _flash(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in messages.get_messages(response.wsgi_request)]


def _start(client, nodes: list[Node], failure_budget: int, max_parallel: int = 1):
    return client.post(
        reverse("portal:ops_rollout_start"),
        {"nodes": [n.pk for n in nodes], "max_parallel": max_parallel, "failure_budget": failure_budget},
    )


def _on_hold(name: str) -> Node:
    return node_service.set_maintenance(Node.objects.get(name=name), True, actor=OPS, reason="PSU")


def test_a_rollout_that_halts_at_once_is_an_error_saying_it_halted(client, inventory):
    held = _on_hold("node-a100-8x-01")
    client.force_login(inventory.operator)
    response = _start(client, [held], failure_budget=0)
    rollout = Rollout.objects.get()
    assert rollout.state == Rollout.State.HALTED
    [(level, text)] = _flash(response)
    assert level == "error", text
    assert f"Rollout {rollout.pk} halted" in text, text
    assert "1 of 1 selected server was refused" in text and held.name in text, text
    assert "started on" not in text


def test_a_rollout_whose_every_server_is_refused_within_budget_says_none_started(client, inventory):
    held = _on_hold("node-a100-8x-01")
    client.force_login(inventory.operator)
    [(level, text)] = _flash(_start(client, [held], failure_budget=1))
    assert level == "error", text
    assert "no server was reimaged" in text and "1 of 1 selected server was refused" in text, text


def test_a_rollout_with_one_refused_server_says_how_many_started_and_which_was_refused(client, inventory):
    held = _on_hold("node-a100-8x-01")
    idle = Node.objects.get(name="node-a100-8x-02")
    client.force_login(inventory.operator)
    [(level, text)] = _flash(_start(client, [held, idle], failure_budget=1, max_parallel=2))
    assert level == "warning", text
    assert "started on 1 of 2 selected servers" in text and "1 of 2 selected servers was refused" in text, (
        text
    )
    assert held.name in text and "maintenance" in text, text


def test_a_server_that_cannot_be_reimaged_waiting_for_its_turn_is_named_up_front(
    client, inventory, monkeypatch
):
    monkeypatch.setattr(node_service, "enqueue", lambda op, **kw: None)  # the first reimage keeps its slot
    idle = Node.objects.get(name="node-a100-8x-01")  # first by name: the rollout's order
    held = _on_hold("node-a100-8x-02")
    client.force_login(inventory.operator)
    [(level, text)] = _flash(_start(client, [idle, held], failure_budget=1, max_parallel=1))
    assert Rollout.objects.get().state == Rollout.State.RUNNING
    assert level == "warning", text
    assert "started on 1 of 2 selected servers" in text and "was refused" not in text, text
    assert f"{held.name} (maintenance)" in text and "will be refused when its turn comes" in text, text


def test_a_rollout_of_idle_servers_is_a_success(client, inventory):
    idle = list(Node.objects.filter(server_type=inventory.a100, state=NodeState.AVAILABLE))
    client.force_login(inventory.operator)
    [(level, text)] = _flash(_start(client, idle, failure_budget=0))
    rollout = Rollout.objects.get()
    assert level == "success", text
    assert text == f"Rollout {rollout.pk} started on {len(idle)} servers, 1 at a time."
