"""The webhooks page: a member adds an endpoint and sees its secret once; a refused URL is explained next
to the field; the endpoint's page shows the delivery log and sends a test event; another organization's
endpoint is a 404, and operators change no customer's endpoint here."""

from __future__ import annotations

from django.urls import reverse

from provisioner.lifecycle import Actor
from provisioner.models import WebhookDelivery, WebhookEndpoint
from provisioner.services import webhooks


def test_adding_a_webhook_shows_its_secret_once(client, inventory):
    client.force_login(inventory.member)
    response = client.post(
        reverse("portal:webhooks"),
        {"url": "https://hooks.example.com/n", "description": "billing", "event_types": ["node.transition"]},
    )
    assert response.status_code == 302
    endpoint = WebhookEndpoint.objects.get()
    assert endpoint.organization == inventory.acme and endpoint.event_types == ["node.transition"]
    shown = client.get(reverse("portal:webhooks"))
    assert "no-store" in shown["Cache-Control"]
    assert endpoint.secret in shown.content.decode() and "shown only once" in shown.content.decode()
    again = client.get(reverse("portal:webhooks")).content.decode()
    assert endpoint.secret not in again and "https://hooks.example.com/n" in again
    assert endpoint.secret not in client.get(reverse("portal:webhook", args=[endpoint.pk])).content.decode()


def test_a_plain_http_url_elsewhere_is_refused_next_to_the_field(client, inventory):
    client.force_login(inventory.owner)
    response = client.post(reverse("portal:webhooks"), {"url": "http://hooks.example.com/n"})
    assert response.status_code == 200
    assert "Http is allowed only to this machine" in response.content.decode()
    assert not WebhookEndpoint.objects.exists()


def test_the_endpoint_page_sends_a_test_event_and_shows_the_log(client, inventory):
    endpoint, _ = webhooks.create_endpoint(
        inventory.acme, "https://acme-hooks.example.com/", actor=Actor.system("t")
    )
    client.force_login(inventory.owner)
    page = client.get(reverse("portal:webhook", args=[endpoint.pk])).content.decode()
    assert "Send test event" in page and "Nothing delivered yet" in page
    sent = client.post(reverse("portal:webhook_test", args=[endpoint.pk]), follow=True).content.decode()
    assert "Test event queued" in sent
    delivery = WebhookDelivery.objects.get(endpoint=endpoint)
    assert delivery.event_type == "webhook.test" and f"#{delivery.pk}" in sent and "pending" in sent
    client.post(reverse("portal:webhook_toggle", args=[endpoint.pk]))
    endpoint.refresh_from_db()
    assert not endpoint.active
    refused = client.post(reverse("portal:webhook_test", args=[endpoint.pk]), follow=True).content.decode()
    assert "inactive" in refused
    client.post(reverse("portal:webhook_delete", args=[endpoint.pk]))
    assert not WebhookEndpoint.objects.exists()


def test_another_organization_s_webhook_is_not_found(client, inventory):
    endpoint, _ = webhooks.create_endpoint(
        inventory.acme, "https://acme-hooks.example.com/", actor=Actor.system("t")
    )
    client.force_login(inventory.outsider)
    assert client.get(reverse("portal:webhook", args=[endpoint.pk])).status_code == 404
    for name in ("portal:webhook_test", "portal:webhook_toggle", "portal:webhook_delete"):
        assert client.post(reverse(name, args=[endpoint.pk])).status_code == 404
    assert "acme-hooks.example.com" not in client.get(reverse("portal:webhooks")).content.decode()
    # an operator reads it (oversight) but changes nothing of a customer's here
    client.force_login(inventory.operator)
    assert client.get(reverse("portal:webhook", args=[endpoint.pk])).status_code == 200
    assert client.post(reverse("portal:webhook_delete", args=[endpoint.pk])).status_code == 404
    assert WebhookEndpoint.objects.filter(pk=endpoint.pk, active=True).exists()
