"""Every API endpoint x every role, with real Bearer tokens: the expected status of each cell.

Roles: anonymous; "outsider" (owner of another organization); "member" and "owner" of acme (whose
reservation, server, operation and keys the paths name); "operator" (staff, in no organization). Through
the customer endpoints the operator reads every organization's rows but changes none but their own
organizations' (none): they answer 404, as for the outsider; the operator endpoints change customers' rows.
Each cell runs against a fresh database, so a cell that changes something cannot affect another.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, AuditEvent, Node, Operation, Reservation, SSHKey
from provisioner.services import nodes as node_service
from provisioner.services import rollouts as rollout_service
from provisioner.services import webhooks as webhook_service
from provisioner.sshkeys import parse_public_key
from tests.conftest import reserve, ssh_keygen

ROLES = ["anonymous", "outsider", "member", "owner", "operator"]


@dataclass
class World:
    inv: Any
    tokens: dict[str, str]
    reservation: Reservation
    server: Node
    operation: Operation
    idle: Node
    quarantined: Node
    rollout_id: int
    fresh_public_key: str
    owner_spare_token: ApiToken
    audit_event_id: int
    # an acme key in no open reservation: deleting the only key of one is refused, whoever asks
    spare_key_id: int
    # an acme webhook endpoint
    webhook_id: int


@pytest.fixture
def world(inventory, tmp_path) -> World:
    inv = inventory
    tokens = {}
    for role, user in [
        ("outsider", inv.outsider),
        ("member", inv.member),
        ("owner", inv.owner),
        ("operator", inv.operator),
    ]:
        tokens[role] = ApiToken.issue(user, "matrix")[1]
    spare, _ = ApiToken.issue(inv.owner, "spare")
    reservation = reserve(inv, ends_at=timezone.now() + dt.timedelta(hours=2))
    server = Node.objects.get(reservation=reservation)
    quarantined = node_service.quarantine(
        Node.objects.get(name="node-a100-8x-01"), actor=Actor.system("t"), reason="matrix"
    )
    rollout = rollout_service.start_rollout(
        [Node.objects.get(name="node-h100-8x-04")],
        actor=Actor(user=inv.operator, label="opal"),
        max_parallel=1,
        failure_budget=0,
    )
    _, fresh = ssh_keygen(tmp_path, name="fresh")
    spare_key = parse_public_key(ssh_keygen(tmp_path, name="spare")[1])
    spare_key_id = SSHKey.objects.create(
        organization=inv.acme, name="spare", public_key=spare_key.line, fingerprint=spare_key.fingerprint
    ).pk
    webhook, _ = webhook_service.create_endpoint(
        inv.acme, "https://hooks.example.com/acme", actor=Actor(user=inv.owner, label="olivia")
    )
    return World(
        inv=inv,
        tokens=tokens,
        reservation=reservation,
        server=server,
        operation=Operation.objects.get(reservation=reservation),
        idle=Node.objects.get(name="node-a100-8x-02"),
        quarantined=quarantined,
        rollout_id=rollout.pk,
        fresh_public_key=fresh,
        owner_spare_token=spare,
        audit_event_id=AuditEvent.objects.get(organization=inv.acme, action="reserve").pk,
        spare_key_id=spare_key_id,
        webhook_id=webhook.pk,
    )


Path = Callable[[World], str]
Body = Callable[[World], dict[str, Any]] | None


@dataclass(frozen=True)
class Cell:
    method: str
    path: Path
    expect: dict[str, int]
    body: Body = None


def everyone(code: int) -> dict[str, int]:
    return {"anonymous": 401, "outsider": code, "member": code, "owner": code, "operator": code}


def acme_only(code: int) -> dict[str, int]:
    """A row of acme: the other organization does not see it (404); staff do."""
    return {"anonymous": 401, "outsider": 404, "member": code, "owner": code, "operator": code}


def acme_members(code: int) -> dict[str, int]:
    """A change to a row of acme: its members only. Staff are no master key (404, as for any outsider)."""
    return {**acme_only(code), "operator": 404}


def staff_only(code: int) -> dict[str, int]:
    return {"anonymous": 401, "outsider": 403, "member": 403, "owner": 403, "operator": code}


def public(code: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, code)


def this_month() -> str:
    return timezone.now().strftime("%Y-%m")


def in_future(hours: int) -> str:
    return (timezone.now() + dt.timedelta(hours=hours)).isoformat()


V1 = "/api/v1"
MATRIX: dict[str, Cell] = {
    "list server types": Cell("get", lambda w: f"{V1}/server-types", everyone(200)),
    "server type": Cell("get", lambda w: f"{V1}/server-types/h100-8x", everyone(200)),
    "list images": Cell("get", lambda w: f"{V1}/images", everyone(200)),
    "image": Cell("get", lambda w: f"{V1}/images/ubuntu-24.04", everyone(200)),
    "list ssh keys": Cell("get", lambda w: f"{V1}/ssh-keys", everyone(200)),
    # The operator is in no organization, so there is none to add a key to.
    "create ssh key": Cell(
        "post",
        lambda w: f"{V1}/ssh-keys",
        {**everyone(201), "operator": 400},
        lambda w: {"name": "new", "public_key": w.fresh_public_key},
    ),
    "ssh key": Cell("get", lambda w: f"{V1}/ssh-keys/{w.inv.key.pk}", acme_only(200)),
    "delete ssh key": Cell("delete", lambda w: f"{V1}/ssh-keys/{w.spare_key_id}", acme_members(204)),
    "list reservations": Cell("get", lambda w: f"{V1}/reservations", everyone(200)),
    # The outsider names acme's key, which their organization does not have: a validation error.
    "create reservation": Cell(
        "post",
        lambda w: f"{V1}/reservations",
        {**everyone(201), "outsider": 400, "operator": 400},
        lambda w: {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": ["laptop"]},
    ),
    "reservation": Cell("get", lambda w: f"{V1}/reservations/{w.reservation.pk}", acme_only(200)),
    "extend reservation": Cell(
        "post",
        lambda w: f"{V1}/reservations/{w.reservation.pk}/extend",
        acme_members(200),
        lambda w: {"ends_at": in_future(3)},
    ),
    "release reservation": Cell(
        "post", lambda w: f"{V1}/reservations/{w.reservation.pk}/release", acme_members(202)
    ),
    "list servers": Cell("get", lambda w: f"{V1}/servers", everyone(200)),
    "server": Cell("get", lambda w: f"{V1}/servers/{w.server.pk}", acme_only(200)),
    "list operations": Cell("get", lambda w: f"{V1}/operations", everyone(200)),
    "operation": Cell("get", lambda w: f"{V1}/operations/{w.operation.pk}?after=0", acme_only(200)),
    "list organizations": Cell("get", lambda w: f"{V1}/organizations", everyone(200)),
    "organization": Cell("get", lambda w: f"{V1}/organizations/{w.inv.acme.pk}", acme_only(200)),
    "create organization": Cell(
        "post", lambda w: f"{V1}/organizations", everyone(201), lambda w: {"name": "Brand New Org"}
    ),
    "add member": Cell(
        "post",
        lambda w: f"{V1}/organizations/{w.inv.acme.pk}/members",
        {**acme_members(201), "member": 403},
        lambda w: {"username": "oscar", "role": "member"},
    ),
    "remove member": Cell(
        "delete",
        lambda w: f"{V1}/organizations/{w.inv.acme.pk}/members/{w.inv.member.pk}",
        {**acme_members(204), "member": 403},
    ),
    # statements are read like their organization: its members, and staff (oversight); others get 404
    "list statements": Cell(
        "get", lambda w: f"{V1}/organizations/{w.inv.acme.pk}/statements", acme_only(200)
    ),
    "statement": Cell(
        "get", lambda w: f"{V1}/organizations/{w.inv.acme.pk}/statements/{this_month()}", acme_only(200)
    ),
    "statement csv": Cell(
        "get", lambda w: f"{V1}/organizations/{w.inv.acme.pk}/statements/{this_month()}/csv", acme_only(200)
    ),
    "admin list prices": Cell("get", lambda w: f"{V1}/admin/prices", staff_only(200)),
    "admin set price": Cell(
        "post",
        lambda w: f"{V1}/admin/prices",
        staff_only(201),
        lambda w: {"server_type": "h100-8x", "cents_per_hour": 2500},
    ),
    "admin list warm pools": Cell("get", lambda w: f"{V1}/admin/warm-pools", staff_only(200)),
    "admin set a warm pool": Cell(
        "patch",
        lambda w: f"{V1}/admin/warm-pools/h100-8x",
        staff_only(200),
        lambda w: {"size": 1, "image": w.inv.image.slug},
    ),
    "list tokens": Cell("get", lambda w: f"{V1}/tokens", everyone(200)),
    "create token": Cell("post", lambda w: f"{V1}/tokens", everyone(201), lambda w: {"name": "ci"}),
    # Tokens are personal: only olivia sees (and can revoke) hers, staff included.
    "revoke token": Cell(
        "delete",
        lambda w: f"{V1}/tokens/{w.owner_spare_token.pk}",
        {"anonymous": 401, "outsider": 404, "member": 404, "owner": 204, "operator": 404},
    ),
    "token": Cell(
        "get",
        lambda w: f"{V1}/tokens/{w.owner_spare_token.pk}",
        {"anonymous": 401, "outsider": 404, "member": 404, "owner": 200, "operator": 404},
    ),
    "list audit events": Cell("get", lambda w: f"{V1}/audit-events", everyone(200)),
    "audit event": Cell("get", lambda w: f"{V1}/audit-events/{w.audit_event_id}", acme_only(200)),
    "list events": Cell("get", lambda w: f"{V1}/events?after=0&limit=10", everyone(200)),
    "list webhooks": Cell("get", lambda w: f"{V1}/webhooks", everyone(200)),
    # The operator is in no organization, so there is none to register an endpoint for.
    "create webhook": Cell(
        "post",
        lambda w: f"{V1}/webhooks",
        {**everyone(201), "operator": 400},
        lambda w: {"url": "https://hooks.example.com/new", "event_types": ["node.transition"]},
    ),
    "webhook": Cell("get", lambda w: f"{V1}/webhooks/{w.webhook_id}", acme_only(200)),
    "update webhook": Cell(
        "patch", lambda w: f"{V1}/webhooks/{w.webhook_id}", acme_members(200), lambda w: {"active": False}
    ),
    "delete webhook": Cell("delete", lambda w: f"{V1}/webhooks/{w.webhook_id}", acme_members(204)),
    "webhook deliveries": Cell("get", lambda w: f"{V1}/webhooks/{w.webhook_id}/deliveries", acme_only(200)),
    "test webhook": Cell("post", lambda w: f"{V1}/webhooks/{w.webhook_id}/test", acme_members(202)),
    "admin list events": Cell(
        "get", lambda w: f"{V1}/admin/events?after=0&organization=acme", staff_only(200)
    ),
    "admin list nodes": Cell(
        "get", lambda w: f"{V1}/admin/nodes?state=available&server_type=a100-8x&site=lab", staff_only(200)
    ),
    "admin node": Cell("get", lambda w: f"{V1}/admin/nodes/{w.server.pk}", staff_only(200)),
    "admin maintenance": Cell(
        "post",
        lambda w: f"{V1}/admin/nodes/{w.idle.pk}/maintenance",
        staff_only(200),
        lambda w: {"on": True, "reason": "fan swap"},
    ),
    "admin reimage idle": Cell(
        "post",
        lambda w: f"{V1}/admin/nodes/{w.idle.pk}/reimage",
        staff_only(202),
        lambda w: {"reason": "matrix"},
    ),
    "admin reimage leased": Cell(
        "post", lambda w: f"{V1}/admin/nodes/{w.server.pk}/reimage", staff_only(409), lambda w: {}
    ),
    "admin power": Cell(
        "post", lambda w: f"{V1}/admin/nodes/{w.idle.pk}/power", staff_only(202), lambda w: {"action": "on"}
    ),
    "admin quarantine": Cell("get", lambda w: f"{V1}/admin/quarantine", staff_only(200)),
    "admin return to pool": Cell(
        "post",
        lambda w: f"{V1}/admin/nodes/{w.quarantined.pk}/return-to-pool",
        staff_only(202),
        lambda w: {"reason": "replaced GPU 3"},
    ),
    "admin keep in quarantine": Cell(
        "post",
        lambda w: f"{V1}/admin/nodes/{w.quarantined.pk}/keep-in-quarantine",
        staff_only(200),
        lambda w: {"reason": "DIMM on order"},
    ),
    "admin keep in quarantine not quarantined": Cell(
        "post",
        lambda w: f"{V1}/admin/nodes/{w.idle.pk}/keep-in-quarantine",
        staff_only(409),
        lambda w: {"reason": "DIMM on order"},
    ),
    "admin network check unmanaged": Cell(
        "post", lambda w: f"{V1}/admin/nodes/{w.idle.pk}/network-check", staff_only(409), lambda w: {}
    ),
    "admin rerun burn-in": Cell(
        "post", lambda w: f"{V1}/admin/nodes/{w.quarantined.pk}/rerun-burnin", staff_only(202)
    ),
    "admin list reservations": Cell(
        "get", lambda w: f"{V1}/admin/reservations?organization=acme&state=provisioning", staff_only(200)
    ),
    "admin reservation": Cell(
        "get", lambda w: f"{V1}/admin/reservations/{w.reservation.pk}", staff_only(200)
    ),
    "admin release reservation": Cell(
        "post",
        lambda w: f"{V1}/admin/reservations/{w.reservation.pk}/release",
        staff_only(202),
        lambda w: {"reason": "hardware recall"},
    ),
    "admin list rollouts": Cell("get", lambda w: f"{V1}/admin/reimage-rollouts", staff_only(200)),
    "admin create rollout": Cell(
        "post",
        lambda w: f"{V1}/admin/reimage-rollouts",
        staff_only(202),
        lambda w: {"nodes": [w.idle.name], "max_parallel": 1, "failure_budget": 0},
    ),
    "admin rollout": Cell("get", lambda w: f"{V1}/admin/reimage-rollouts/{w.rollout_id}", staff_only(200)),
    "admin cancel rollout": Cell(
        "post",
        lambda w: f"{V1}/admin/reimage-rollouts/{w.rollout_id}/cancel",
        staff_only(200),
        lambda w: {"reason": "wrong image"},
    ),
    "schema": Cell("get", lambda w: "/api/schema/", public(200)),
    "docs": Cell("get", lambda w: "/api/docs/", public(200)),
}


def client_for(world: World, role: str) -> APIClient:
    client = APIClient()
    if role != "anonymous":
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {world.tokens[role]}")
    return client


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("endpoint", list(MATRIX))
def test_matrix_cell(world: World, endpoint: str, role: str) -> None:
    cell = MATRIX[endpoint]
    path = cell.path(world)
    body = cell.body(world) if cell.body else None
    response = getattr(client_for(world, role), cell.method)(path, body, format="json")
    expected = cell.expect[role]
    assert response.status_code == expected, (
        f"{cell.method.upper()} {path} as {role}: {response.content[:500]!r}"
    )
    if expected >= 400 and not path.startswith("/api/schema"):
        error = response.json()["error"]
        assert error["code"] and error["message"]


def test_every_api_route_is_in_the_matrix(world: World) -> None:
    """A new endpoint (method and path in the OpenAPI schema) without a row in the matrix fails here."""
    from drf_spectacular.generators import SchemaGenerator

    spec = SchemaGenerator().get_schema(request=None, public=True)
    concrete = [(cell.method, cell.path(world).split("?")[0].rstrip("/") + "/") for cell in MATRIX.values()]
    missing = []
    for template, item in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)) + "$")
        for method in item:
            if method in {"get", "post", "put", "patch", "delete"} and not any(
                m == method and pattern.match(p) for m, p in concrete
            ):
                missing.append(f"{method.upper()} {template}")
    assert missing == []


@pytest.mark.django_db
def test_session_auth_reads_and_needs_csrf_to_write(inventory) -> None:
    client = Client(enforce_csrf_checks=True)
    assert client.login(username="olivia", password="pw-olivia-123")
    listed = client.get(f"{V1}/reservations")
    assert listed.status_code == 200
    body = {"name": "from the browser"}
    refused = client.post(f"{V1}/tokens", body, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]["message"]
    secret = "a" * 32
    client.cookies["csrftoken"] = secret
    created = client.post(f"{V1}/tokens", body, content_type="application/json", HTTP_X_CSRFTOKEN=secret)
    assert created.status_code == 201, created.content
    assert created.json()["token"].startswith("nck_")
