"""Operator portal node actions: quarantining a customer's live server needs force and says so; messages
tell the truth (why a form was refused, what withdrawing a hold does in the node's state)."""

from __future__ import annotations

import pytest
from django.contrib import messages
from django.urls import reverse

from provisioner.models import Node, Operation
from provisioner.services import nodes as node_service
from provisioner.states import NodeState, OperationKind
from tests.services.test_node_operator_actions import OPS, _active_leased_node

pytestmark = pytest.mark.django_db


def _form(body: str, action: str) -> str:
    """The HTML of the form posting ``action`` (from its <form to its </form>)."""
    at = body.index(f'name="action" value="{action}"')
    return body[body.rindex("<form", 0, at) : body.index("</form>", at)]


def _flash(response) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in messages.get_messages(response.wsgi_request)]


def test_quarantine_of_a_leased_server_without_force_is_refused_in_words(client, inventory):
    node = _active_leased_node(inventory)
    client.force_login(inventory.operator)
    response = client.post(
        reverse("portal:ops_node_action", args=[node.pk]), {"action": "quarantine", "reason": "fans"}
    )
    [(level, text)] = _flash(response)
    assert level == "error" and "leased to a customer" in text, text
    assert Node.objects.get(pk=node.pk).state == NodeState.ACTIVE


def test_quarantine_of_a_leased_server_with_force_quarantines_it(client, inventory):
    node = _active_leased_node(inventory)
    client.force_login(inventory.operator)
    response = client.post(
        reverse("portal:ops_node_action", args=[node.pk]),
        {"action": "quarantine", "reason": "fans", "force": "on"},
    )
    [(level, text)] = _flash(response)
    assert level == "success", text
    assert Node.objects.get(pk=node.pk).state == NodeState.QUARANTINED


def test_the_quarantine_form_of_a_leased_server_warns_and_offers_force(client, inventory):
    node = _active_leased_node(inventory)
    client.force_login(inventory.operator)
    body = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    form = _form(body, "quarantine")
    assert "leased to a customer" in form
    assert 'name="force"' in form


def test_the_quarantine_form_of_an_idle_server_has_no_force(client, inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    client.force_login(inventory.operator)
    body = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    form = _form(body, "quarantine")
    assert "leased" not in form and 'name="force"' not in form


def test_burnin_rerun_on_a_quarantined_server_still_held_is_refused_in_words(client, inventory):
    node = node_service.quarantine(_active_leased_node(inventory), actor=OPS, reason="ECC", force=True)
    client.force_login(inventory.operator)
    response = client.post(reverse("portal:ops_node_action", args=[node.pk]), {"action": "rerun_burnin"})
    [(level, text)] = _flash(response)
    assert level == "error" and "still held by reservation" in text, text
    assert not Operation.objects.filter(node=node, kind=OperationKind.BURNIN).exists()


def test_an_invalid_reimage_form_says_which_field_and_why(client, inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    client.force_login(inventory.operator)
    response = client.post(
        reverse("portal:ops_node_action", args=[node.pk]), {"action": "reimage", "image": "999999"}
    )
    [(level, text)] = _flash(response)
    assert level == "error", text
    assert "image" in text.lower() and "valid choice" in text, text
    assert not Operation.objects.filter(node=node).exists()


@pytest.mark.parametrize(
    ("state", "says"),
    [
        (NodeState.ERROR, "stays in error"),
        (NodeState.QUARANTINED, "stays quarantined"),
        (NodeState.CLEANING, "returns to the pool once it is wiped"),
        (NodeState.ACTIVE, "returns to the pool after its lease"),
    ],
)
def test_withdrawing_a_hold_request_says_what_happens_to_the_server_in_its_state(
    client, inventory, state, says
):
    node = Node.objects.get(name="node-a100-8x-02")
    Node.objects.filter(pk=node.pk).update(state=state, hold_requested="swap PSU")
    client.force_login(inventory.operator)
    response = client.post(reverse("portal:ops_node_action", args=[node.pk]), {"action": "maintenance_off"})
    [(level, text)] = _flash(response)
    assert level == "success" and says in text, text
    if state != NodeState.ACTIVE:
        assert "after its lease" not in text
    assert Node.objects.get(pk=node.pk).hold_requested == ""
