"""Customer and operator flows through the HTTP API, with real Bearer tokens and (where work must run) real
worker processes driving the fake hardware."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.models import ApiToken, AuditEvent, Node, Operation, Reservation
from provisioner.states import NodeState, OperationState
from tests.conftest import wait_for

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def reserve_body(**extra):
    return {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": ["laptop"], **extra}


@pytest.mark.slow
def test_reserve_progress_servers_extend_release_with_a_real_worker(inventory, fake_hw_dir, workers):
    workers.worker()
    client = api(inventory.owner)
    ends = timezone.now() + dt.timedelta(hours=2)
    created = client.post(
        f"{V1}/reservations", reserve_body(ends_at=ends.isoformat(), name="train"), format="json"
    )
    assert created.status_code == 201, created.content
    r = created.json()
    assert r["state"] == "provisioning" and r["count"] == 1 and len(r["servers"]) == 1
    op_id = r["operations"][0]["id"]

    # Poll the operation's progress and log the way a client would, with ?after=<last log id>.
    seen: list[int] = []
    last = 0

    def finished():
        nonlocal last
        body = client.get(f"{V1}/operations/{op_id}?after={last}").json()
        seen.extend(line["id"] for line in body["log"])
        if body["log"]:
            last = body["log"][-1]["id"]
        return body if body["state"] in ("succeeded", "failed") else None

    op = wait_for(finished, 60, interval=0.3, message="provision finished", details=workers.logs)
    assert op["state"] == "succeeded", op
    assert op["percent"] == 100 and all(s["state"] == "succeeded" for s in op["steps"])
    assert len(seen) >= 2 and seen == sorted(set(seen))  # polling with ?after= never repeats a line
    ids_again = client.get(f"{V1}/operations/{op_id}?after={last}").json()["log"]
    assert ids_again == []
    wait_for(
        lambda: client.get(f"{V1}/reservations/{r['id']}").json()["state"] == "active", 10, message="active"
    )

    servers = client.get(f"{V1}/servers").json()["results"]
    assert len(servers) == 1
    server = servers[0]
    assert server["state"] == "active" and server["reservation"] == r["id"]
    assert server["ssh_command"] == f"ssh root@{server['address']}"
    fingerprints = server["host_key_fingerprints"]
    assert fingerprints and all(v.startswith("SHA256:") for v in fingerprints.values())
    assert server["known_hosts"].startswith(server["address"] + " ")
    assert server["burnin"]["passed"] is True
    assert "password" not in str(server).lower()

    later = ends + dt.timedelta(hours=1)
    extended = client.post(
        f"{V1}/reservations/{r['id']}/extend", {"ends_at": later.isoformat()}, format="json"
    )
    assert extended.status_code == 200, extended.content
    assert dt.datetime.fromisoformat(extended.json()["ends_at"].replace("Z", "+00:00")) == later

    released = client.post(f"{V1}/reservations/{r['id']}/release")
    assert released.status_code == 202
    node = Node.objects.get(name=server["name"])
    wait_for(
        lambda: Node.objects.get(pk=node.pk).state == NodeState.AVAILABLE,
        60,
        message="node back in the pool",
        details=workers.logs,
    )
    wait_for(
        lambda: client.get(f"{V1}/reservations/{r['id']}").json()["state"] == "released",
        10,
        message="released",
    )
    assert client.get(f"{V1}/servers").json()["results"] == []
    actions = set(AuditEvent.objects.filter(reservation_id=r["id"]).values_list("action", flat=True))
    assert {"reserve", "extend", "release"} <= actions


def test_idempotency_key_replay_books_once(inventory):
    client = api(inventory.member)
    headers = {"HTTP_IDEMPOTENCY_KEY": "run-42"}
    first = client.post(f"{V1}/reservations", reserve_body(), format="json", **headers)
    again = client.post(f"{V1}/reservations", reserve_body(), format="json", **headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert Reservation.objects.filter(organization=inventory.acme).count() == 1
    other = client.post(f"{V1}/reservations", reserve_body(count=2), format="json", **headers)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_capacity_error_shape(inventory):
    response = api(inventory.owner).post(f"{V1}/reservations", reserve_body(count=5), format="json")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "not_enough_capacity"
    assert "4" in error["message"] and "5 requested" in error["message"]
    assert Reservation.objects.count() == 0


def test_validation_errors_shape(inventory):
    client = api(inventory.owner)
    response = client.post(
        f"{V1}/reservations", {"server_type": "h100-8x", "count": 0, "ssh_keys": []}, format="json"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert set(error["details"]) >= {"count", "image", "ssh_keys"}
    unknown = client.post(f"{V1}/reservations", reserve_body(ssh_keys=["nope"]), format="json").json()[
        "error"
    ]
    assert unknown["details"]["ssh_keys"] == ["no SSH key 'nope' in Acme AI"]
    past = client.post(f"{V1}/reservations", reserve_body(starts_at="2020-01-01T00:00:00Z"), format="json")
    assert past.status_code == 400 and "past" in past.json()["error"]["message"]
    bad_key = client.post(f"{V1}/ssh-keys", {"name": "x", "public_key": "ssh-rsa AAAA"}, format="json")
    assert bad_key.status_code == 400
    assert bad_key.json()["error"]["code"] == "invalid_request" and bad_key.json()["error"]["message"]
    private = client.post(
        f"{V1}/ssh-keys", {"public_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n"}, format="json"
    ).json()["error"]
    assert "private" in private["message"].lower()
    window = client.get(f"{V1}/server-types?starts_at=2030-01-02T00:00:00Z&ends_at=2030-01-01T00:00:00Z")
    assert window.status_code == 400 and "ends_at" in window.json()["error"]["details"]


def test_server_types_availability_now_and_for_a_window(inventory):
    client = api(inventory.owner)
    assert client.post(f"{V1}/reservations", reserve_body(count=3), format="json").status_code == 201
    now = {t["slug"]: t["available"] for t in client.get(f"{V1}/server-types").json()["results"]}
    assert now == {"h100-8x": 1, "a100-8x": 2}
    start = timezone.now() + dt.timedelta(days=30)
    later = client.get(
        f"{V1}/server-types",
        {"starts_at": start.isoformat(), "ends_at": (start + dt.timedelta(hours=1)).isoformat()},
    ).json()["results"]
    # the reservation is open-ended, so its three servers stay booked in any later window
    assert {t["slug"]: t["available"] for t in later} == {"h100-8x": 1, "a100-8x": 2}


def test_token_shown_once_stored_hashed_and_revocable(inventory):
    client = api(inventory.member)
    created = client.post(f"{V1}/tokens", {"name": "ci"}, format="json")
    assert created.status_code == 201
    token = created.json()["token"]
    row = ApiToken.objects.get(pk=created.json()["id"])
    assert row.token_hash == ApiToken.hash(token) and token not in row.token_hash
    assert all(token not in str(v) for v in ApiToken.objects.filter(pk=row.pk).values().first().values())
    listed = client.get(f"{V1}/tokens").json()["results"]
    assert all("token" not in t for t in listed)
    assert client.get(f"{V1}/tokens/{row.pk}").json().get("token") is None

    fresh = APIClient()
    fresh.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert fresh.get(f"{V1}/reservations").status_code == 200
    assert client.delete(f"{V1}/tokens/{row.pk}").status_code == 204
    refused = fresh.get(f"{V1}/reservations")
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "invalid, revoked or expired API token"
    assert client.delete(f"{V1}/tokens/{row.pk}").status_code == 204  # idempotent


def test_reimage_of_a_leased_node_is_refused_without_force(inventory):
    r = api(inventory.owner).post(f"{V1}/reservations", reserve_body(), format="json").json()
    node_id = r["servers"][0]["id"]
    # No worker runs here: retire the queued provision so the node is leased but idle (not "busy").
    Operation.objects.filter(node_id=node_id).update(state=OperationState.CANCELLED)
    operator = api(inventory.operator)
    refused = operator.post(f"{V1}/admin/nodes/{node_id}/reimage", {"reason": "new driver"}, format="json")
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "illegal_transition" and "leased to a customer" in error["message"]
    assert "force" in error["message"]
    assert not AuditEvent.objects.filter(action="reimage", node_id=node_id).exists()

    idle = Node.objects.get(name="node-a100-8x-01")
    accepted = operator.post(f"{V1}/admin/nodes/{idle.pk}/reimage", {"reason": "new driver"}, format="json")
    assert accepted.status_code == 202
    body = accepted.json()
    assert body["kind"] == "clean" and body["state"] == "pending" and body["node"] == idle.name
    assert [s["name"] for s in body["steps"]] == ["begin_clean", "network_cleaning", "wipe", "finish_clean"]
    assert AuditEvent.objects.filter(action="reimage", node=idle, actor=inventory.operator).exists()


def test_admin_node_detail_never_shows_bmc_secrets(inventory):
    node = Node.objects.get(name="node-h100-8x-01")
    body = api(inventory.operator).get(f"{V1}/admin/nodes/{node.pk}")
    assert body.status_code == 200
    text = body.content.decode()
    assert "secret-bmc-pw" not in text and "password" not in text
    data = body.json()
    assert data["history"][0]["action"] == "transition" and data["power_state"] == "unknown"
    assert {"recent_operations", "latest_burnin", "bmc_last_contact_at"} <= set(data)
    filtered = api(inventory.operator).get(
        f"{V1}/admin/nodes", {"server_type": "a100-8x", "state": "available"}
    )
    assert [n["name"] for n in filtered.json()["results"]] == ["node-a100-8x-01", "node-a100-8x-02"]


def test_owner_manages_members_but_cannot_remove_the_last_owner(inventory):
    owner = api(inventory.owner)
    acme = inventory.acme.pk
    added = owner.post(f"{V1}/organizations/{acme}/members", {"username": "oscar"}, format="json")
    assert added.status_code == 201 and added.json()["role"] == "member"
    org = owner.get(f"{V1}/organizations/{acme}").json()
    assert {m["username"] for m in org["members"]} == {"olivia", "mike", "oscar"} and org[
        "my_role"
    ] == "owner"
    last = owner.delete(f"{V1}/organizations/{acme}/members/{inventory.owner.pk}")
    assert last.status_code == 400 and "last owner" in last.json()["error"]["message"]
    nobody = owner.post(f"{V1}/organizations/{acme}/members", {"username": "ghost"}, format="json")
    assert nobody.status_code == 400 and "ghost" in nobody.json()["error"]["message"]
    assert (
        api(inventory.member).delete(f"{V1}/organizations/{acme}/members/{inventory.outsider.pk}").status_code
        == 403
    )


def test_schema_validates_without_warnings_and_docs_render(client):
    from django.core.management import call_command

    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "/api/v1/admin/reimage-rollouts/" in html and "ReservationCreateRequest" in html
    assert "<script" not in html  # works offline: no external assets
