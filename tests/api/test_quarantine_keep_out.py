"""Quarantine review through the API: an operator keeps a quarantined node out of the pool (the portal's
"keep out"), audited by the same service; a node that is not quarantined is a 409 saying so."""

from __future__ import annotations

from provisioner.lifecycle import Actor
from provisioner.models import AuditEvent, Node, Operation
from provisioner.services import nodes as node_service
from provisioner.states import NodeState
from tests.api.test_api_bad_input import api

V1 = "/api/v1"


def quarantined(name: str = "node-h100-8x-01") -> Node:
    return node_service.quarantine(Node.objects.get(name=name), actor=Actor.system("t"), reason="ECC errors")


def test_keep_in_quarantine_leaves_the_node_out_and_audits_the_operators_note(inventory):
    node = quarantined()
    response = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/keep-in-quarantine", {"reason": "DIMM on order"}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["id"] == node.pk and response.json()["state"] == "quarantined"
    assert Node.objects.get(pk=node.pk).state == NodeState.QUARANTINED
    assert not Operation.objects.filter(node=node).exists()
    event = AuditEvent.objects.get(node=node, action="quarantine_review")
    assert event.reason == "DIMM on order" and event.actor == inventory.operator


def test_keep_in_quarantine_without_a_reason_records_the_review_anyway(inventory):
    node = quarantined()
    response = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/keep-in-quarantine", {}, format="json"
    )
    assert response.status_code == 200, response.content
    assert AuditEvent.objects.get(node=node, action="quarantine_review").reason == (
        "kept out of the pool after review"
    )


def test_keeping_out_a_node_that_is_not_quarantined_is_a_409_saying_so(inventory):
    node = quarantined()
    node_service.return_from_quarantine(node, actor=Actor.system("t"), reason="DIMM replaced")
    response = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/keep-in-quarantine", {"reason": "still bad"}, format="json"
    )
    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "illegal_transition"
    assert error["message"] == f"{node.name} is cleaning, not quarantined: there is nothing to keep out"
    assert not AuditEvent.objects.filter(node=node, action="quarantine_review").exists()


def test_a_reason_too_long_is_a_clear_400(inventory):
    node = quarantined()
    response = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/keep-in-quarantine", {"reason": "x" * 1001}, format="json"
    )
    assert response.status_code == 400, response.content
    assert "reason" in response.json()["error"]["details"]


def test_the_schema_types_the_keep_in_quarantine_action(db):
    from drf_spectacular.generators import SchemaGenerator

    spec = SchemaGenerator().get_schema(request=None, public=True)
    operation = spec["paths"][f"{V1}/admin/nodes/{{id}}/keep-in-quarantine/"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(spec["components"]["schemas"][body]["properties"]) == {"reason"}
    assert "required" not in spec["components"]["schemas"][body]
    responses = operation["responses"]
    assert responses["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/AdminNodeDetail")
    for code in ("400", "401", "403", "404", "409"):
        assert responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/Error"), code
