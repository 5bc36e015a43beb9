"""The OpenAPI schema (drf-spectacular's) agrees with what the API answers: every GET endpoint's real
response, over data full of the nulls the models allow (an audit event of no node, a log line of no step,
a node of no owner or image, a rollout nobody requested or cancelled ...), validates against the schema
of its 200 response. A field that answers null where the schema says it never does fails here."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from provisioner.lifecycle import Actor
from provisioner.models import AuditEvent, LogLine, Node, Operation
from provisioner.services import nodes as node_service
from provisioner.services import rollouts as rollout_service
from provisioner.services import webhooks as webhook_service
from tests.api.test_api_bad_input import api
from tests.conftest import reserve

pytestmark = pytest.mark.django_db


def json_schema(node: Any) -> Any:
    """OpenAPI 3.0's schema dialect as JSON Schema: ``nullable: true`` becomes "or null"."""
    if isinstance(node, list):
        return [json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    converted = {k: json_schema(v) for k, v in node.items() if k != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return SchemaGenerator().get_schema(request=None, public=True)


def _validate(spec: dict[str, Any], template: str, body: Any) -> None:
    schema = spec["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    root = {**json_schema(schema), "components": json_schema(spec["components"])}
    jsonschema.Draft202012Validator(root).validate(body)


@pytest.fixture
def world(inventory) -> dict[str, str]:
    """Rows with every null the models allow, and the ids the paths need."""
    inv = inventory
    reservation = reserve(inv)
    operation = Operation.objects.get(reservation=reservation)
    LogLine.objects.create(operation=operation, message="before any step")  # step: null
    note = AuditEvent.objects.create(action="note", organization=inv.acme, actor_label="system")  # node: null
    idle = Node.objects.get(name="node-a100-8x-02")
    assert idle.owner_id is None and idle.image_id is None and idle.reservation_id is None
    node_service.quarantine(Node.objects.get(name="node-a100-8x-01"), actor=Actor.system("t"), reason="x")
    rollout = rollout_service.start_rollout(
        [Node.objects.get(name="node-h100-8x-04")], actor=Actor.system("t"), max_parallel=1, failure_budget=0
    )
    webhook, _ = webhook_service.create_endpoint(
        inv.acme, "https://hooks.example.com/", actor=Actor.system("t")
    )
    webhook_service.send_test(webhook, actor=Actor.system("t"))  # a delivery never tried: nulls
    return {
        "slug": "h100-8x",
        "images/{slug}": "ubuntu-24.04",
        "ssh-keys": str(inv.key.pk),
        "reservations": str(reservation.pk),
        "servers": str(Node.objects.get(reservation=reservation).pk),
        "operations": str(operation.pk),
        "organizations": str(inv.acme.pk),
        "tokens": "",
        "audit-events": str(note.pk),
        "admin/nodes": str(idle.pk),
        "admin/reimage-rollouts": str(rollout.pk),
        "admin/reservations": str(reservation.pk),
        "webhooks": str(webhook.pk),
    }


def _concrete(template: str, world: dict[str, str], inv: Any) -> str | None:
    if "{" not in template:
        return template
    if template.startswith("/api/v1/images/"):
        return template.replace("{slug}", world["images/{slug}"])
    if "{slug}" in template:
        return template.replace("{slug}", world["slug"])
    if template.startswith("/api/v1/organizations/{id}/statements"):  # this month's statement
        month = timezone.now().strftime("%Y-%m")
        return template.replace("{id}", world["organizations"]).replace("{month}", month)
    collection = re.match(r"/api/v1/(.+?)/\{id\}(/[a-z-]+)?/?$", template)
    assert collection, f"no id known for {template}: add one to the world fixture"
    if collection.group(1) == "tokens":
        return template.replace("{id}", str(inv.owner.api_tokens.latest("id").pk))
    return template.replace("{id}", world[collection.group(1)])


def test_every_get_response_validates_against_the_schema(spec, world, inventory):
    owner, operator = api(inventory.owner), api(inventory.operator)
    checked = []
    for template, item in spec["paths"].items():
        if "get" not in item or not template.startswith("/api/v1/"):
            continue
        path = _concrete(template, world, inventory)
        callers = [operator] if "/admin/" in template else [owner, operator]
        if template.startswith("/api/v1/tokens/{"):
            callers = [owner]  # tokens are personal: the one named is olivia's
        for client in callers:
            response = client.get(path)
            assert response.status_code == 200, (path, response.content[:300])
            if response["Content-Type"].startswith("text/csv"):  # no JSON: the statement's CSV
                checked.append(template)
                continue
            try:
                _validate(spec, template, response.json())
            except jsonschema.ValidationError as exc:
                where = "/".join(str(p) for p in exc.absolute_path)
                pytest.fail(f"GET {path}: {where}: {exc.message}")
            checked.append(template)
    every_get = {t for t, item in spec["paths"].items() if "get" in item and t.startswith("/api/v1/")}
    assert set(checked) == every_get and len(every_get) >= 20


# Fields the models leave empty (a null in JSON) in normal operation, each read in a real response above;
# named here as well, so that the schema keeps saying so even when no row happens to carry the null.
NULLABLE = {
    "AuditEvent": ["node", "reservation", "operation"],
    "LogLine": ["step"],
    "OperationSummary": ["reservation", "rollout", "started_at", "finished_at"],
    "Reservation": ["ends_at", "released_at"],
    "Server": ["reservation", "image", "ssh_command", "burnin"],
    "AdminNode": ["site", "rack", "owner", "reservation", "image", "primary_address", "power_checked_at"],
    "Rollout": ["image", "requested_by", "cancelled_by", "halted_reason", "finished_at"],
    "Organization": ["my_role", "monthly_spend_limit_cents"],
    "ApiToken": ["last_used_at", "revoked_at", "expires_at"],
    "WebhookDelivery": ["event", "finished_at", "lag_seconds", "last_status_code", "last_latency_ms"],
    "WebhookAttempt": ["status_code"],
}


@pytest.mark.parametrize("component", sorted(NULLABLE))
def test_fields_that_can_be_null_are_declared_nullable(spec, component):
    properties = spec["components"]["schemas"][component]["properties"]
    not_nullable = [
        name
        for name in NULLABLE[component]
        if not (properties[name].get("nullable") or {"type": "null"} in properties[name].get("oneOf", []))
    ]
    assert not_nullable == [], f"{component}: {not_nullable} answer null but are declared non-nullable"
