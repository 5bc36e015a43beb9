"""/api/v1/webhooks: an organization registers endpoints (the secret in the creating answer only), reads and
changes only its own (another organization's is a 404), is refused clearly for a URL or type it may not
use, and reads the delivery log, test events included."""

from __future__ import annotations

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, WebhookDelivery, WebhookEndpoint
from provisioner.services import webhooks
from tests.webhook_receiver import Receiver

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def test_the_secret_is_shown_once_and_works(inventory):
    owner = api(inventory.owner)
    created = owner.post(
        f"{V1}/webhooks",
        {"url": "https://hooks.example.com/n", "event_types": ["node.transition", "reservation.created"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["organization"] == "acme"
    assert body["event_types"] == ["node.transition", "reservation.created"] and body["active"] is True
    assert created["Cache-Control"] == "no-store"
    row = WebhookEndpoint.objects.get(pk=body["id"])
    assert row.secret == body["secret"] and body["secret"] not in row.secret_encrypted
    # never again: not in a read, a list or a change
    for response in (
        owner.get(f"{V1}/webhooks/{row.pk}"),
        owner.get(f"{V1}/webhooks"),
        owner.patch(f"{V1}/webhooks/{row.pk}", {"description": "prod"}, format="json"),
    ):
        assert response.status_code == 200
        assert body["secret"] not in response.content.decode()
        assert "secret" not in response.content.decode()


def test_another_organization_s_endpoint_is_a_404(inventory):
    endpoint, _ = webhooks.create_endpoint(
        inventory.acme, "https://hooks.example.com/a", actor=Actor.system("t")
    )
    outsider = api(inventory.outsider)
    assert outsider.get(f"{V1}/webhooks").json()["results"] == []
    for method, path in [
        ("get", f"{V1}/webhooks/{endpoint.pk}"),
        ("patch", f"{V1}/webhooks/{endpoint.pk}"),
        ("delete", f"{V1}/webhooks/{endpoint.pk}"),
        ("get", f"{V1}/webhooks/{endpoint.pk}/deliveries"),
        ("post", f"{V1}/webhooks/{endpoint.pk}/test"),
    ]:
        response = getattr(outsider, method)(path, {"active": False}, format="json")
        assert response.status_code == 404, (method, path)
    endpoint.refresh_from_db()
    assert endpoint.active


@pytest.mark.parametrize(
    "body, field_says",
    [
        ({"url": "http://hooks.example.com/x"}, "http is allowed only to this machine"),
        ({"url": "ftp://hooks.example.com/x"}, "no http(s) URL"),
        ({"url": "https://hooks.example.com/", "event_types": ["node.moved"]}, "unknown event type"),
    ],
)
def test_a_url_or_type_that_is_not_allowed_is_a_clear_400(inventory, body, field_says):
    response = api(inventory.owner).post(f"{V1}/webhooks", body, format="json")
    assert response.status_code == 400
    assert field_says in response.json()["error"]["message"]
    assert not WebhookEndpoint.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_send_test_event_and_read_the_delivery_log(inventory):
    receiver = Receiver().start()
    try:
        owner = api(inventory.owner)
        created = owner.post(f"{V1}/webhooks", {"url": receiver.url}, format="json").json()
        receiver.fail_next(1)
        sent = owner.post(f"{V1}/webhooks/{created['id']}/test")
        assert sent.status_code == 202 and sent.json()["event_type"] == "webhook.test"
        for _ in range(2):  # what the worker does: the 500, then the retry once due
            webhooks.deliver_pass(created["id"], seconds=5)
            WebhookEndpoint.objects.filter(pk=created["id"]).update(lease_until=None)
            WebhookDelivery.objects.update(next_attempt_at=timezone.now())
        log = owner.get(f"{V1}/webhooks/{created['id']}/deliveries").json()
        assert log["count"] == 1
        delivery = log["results"][0]
        assert delivery["state"] == "succeeded" and delivery["attempts"] == 2 and delivery["event"] is None
        assert [a["status_code"] for a in delivery["attempt_log"]] == [500, 200]
        assert [a["outcome"] for a in delivery["attempt_log"]] == ["http_error", "succeeded"]
        assert all(a["latency_ms"] >= 0 for a in delivery["attempt_log"])
        assert receiver.delivered()[0].signed_with(created["secret"])
        pending = owner.get(f"{V1}/webhooks/{created['id']}/deliveries?state=pending").json()
        assert pending["count"] == 0
        assert owner.get(f"{V1}/webhooks/{created['id']}/deliveries?state=lost").status_code == 400
        # an inactive endpoint is sent nothing, tests included
        owner.patch(f"{V1}/webhooks/{created['id']}", {"active": False}, format="json")
        refused = owner.post(f"{V1}/webhooks/{created['id']}/test")
        assert refused.status_code == 400 and "inactive" in refused.json()["error"]["message"]
    finally:
        receiver.stop()
