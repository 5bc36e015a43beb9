"""The Django admin cannot bypass the services: no BMC credential without a password, no owner, booking or
server type edited on a node, no reservation window edited past the capacity checks, no forged audit
events, no deleting a server a customer holds."""

from __future__ import annotations

import datetime

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from provisioner.models import AuditEvent, BmcCredential, Node, Reservation
from tests.conftest import reserve


@pytest.fixture
def admin_client(inventory) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root-ops", password="pw-root-ops-123"))
    return client


def _change_form_data(client: Client, url: str) -> dict:
    """What the change form would post back untouched: every field of the form with its current value."""
    response = client.get(url)
    assert response.status_code == 200
    form = response.context["adminform"].form
    data = {}
    for bound in form:
        value = bound.value()
        if isinstance(value, datetime.datetime):  # the admin's split date and time inputs
            value = timezone.localtime(value)
            data[f"{bound.html_name}_0"] = value.strftime("%Y-%m-%d")
            data[f"{bound.html_name}_1"] = value.strftime("%H:%M:%S")
        elif isinstance(value, (list, tuple)):
            data[bound.html_name] = [str(v) for v in value]
        else:
            data[bound.html_name] = "" if value is None else str(value)
    return data


def test_a_bmc_credential_cannot_be_added_without_a_password(admin_client, inventory):
    node = Node.objects.get(name="node-h100-8x-01")
    BmcCredential.objects.filter(node=node).delete()
    response = admin_client.post(
        "/admin/provisioner/bmccredential/add/", {"node": node.pk, "username": "admin", "new_password": ""}
    )
    assert response.status_code == 200  # the form again, with its error
    assert "new_password" in response.context["adminform"].form.errors
    assert not BmcCredential.objects.filter(node=node).exists()


def test_a_bmc_credential_is_added_with_its_password_and_changed_without_one(admin_client, inventory):
    node = Node.objects.get(name="node-h100-8x-01")
    BmcCredential.objects.filter(node=node).delete()
    response = admin_client.post(
        "/admin/provisioner/bmccredential/add/",
        {"node": node.pk, "username": "admin", "new_password": "new-bmc-pw"},
    )
    assert response.status_code == 302, response.content
    cred = BmcCredential.objects.get(node=node)
    assert cred.password == "new-bmc-pw"
    # on change, an empty password still keeps the current one
    response = admin_client.post(
        f"/admin/provisioner/bmccredential/{cred.pk}/change/",
        {"node": node.pk, "username": "root", "new_password": ""},
    )
    assert response.status_code == 302, response.content
    cred.refresh_from_db()
    assert (cred.username, cred.password) == ("root", "new-bmc-pw")


def test_a_nodes_owner_booking_image_and_server_type_are_not_edited_in_the_admin(admin_client, inventory):
    reservation = reserve(inventory)
    node = Node.objects.get(reservation=reservation)
    url = f"/admin/provisioner/node/{node.pk}/change/"
    data = _change_form_data(admin_client, url)
    other_booking = reserve(inventory, org=inventory.other, key=inventory.other_key, label="oscar")
    data.update(
        owner=str(inventory.other.pk),
        reservation=str(other_booking.pk),
        server_type=str(inventory.a100.pk),
        image="",
        state_reason="moved",
    )
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content
    after = Node.objects.get(pk=node.pk)
    assert after.owner_id == inventory.acme.pk
    assert after.reservation_id == reservation.pk
    assert after.server_type_id == inventory.h100.pk
    assert after.image_id == node.image_id


def test_a_leased_node_cannot_be_deleted_in_the_admin(admin_client, inventory):
    node = Node.objects.get(reservation=reserve(inventory))
    assert admin_client.get(f"/admin/provisioner/node/{node.pk}/delete/").status_code == 403
    assert admin_client.post(f"/admin/provisioner/node/{node.pk}/delete/", {"post": "yes"}).status_code == 403
    # nor through the list's bulk delete action
    admin_client.post(
        "/admin/provisioner/node/",
        {"action": "delete_selected", "_selected_action": [node.pk], "post": "yes"},
    )
    assert Node.objects.filter(pk=node.pk).exists()


def test_an_available_node_can_still_be_deleted_in_the_admin(admin_client, inventory):
    node = Node.objects.get(name="node-a100-8x-02")
    response = admin_client.post(f"/admin/provisioner/node/{node.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302, response.content
    assert not Node.objects.filter(pk=node.pk).exists()


def test_a_reservations_window_and_booking_are_not_edited_in_the_admin(admin_client, inventory):
    reservation = reserve(inventory)
    before = Reservation.objects.get(pk=reservation.pk)
    url = f"/admin/provisioner/reservation/{reservation.pk}/change/"
    data = _change_form_data(admin_client, url)
    later = before.starts_at + datetime.timedelta(days=30)
    data.update(
        {
            "ends_at_0": timezone.localtime(later).strftime("%Y-%m-%d"),
            "ends_at_1": timezone.localtime(later).strftime("%H:%M:%S"),
            "count": "3",
            "organization": str(inventory.other.pk),
            "name": "renamed by ops",
        }
    )
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    after = Reservation.objects.get(pk=reservation.pk)
    assert (after.ends_at, after.count, after.organization_id) == (
        before.ends_at,
        before.count,
        before.organization_id,
    )
    assert after.name == "renamed by ops"  # descriptive fields stay editable


def test_reservations_are_not_added_or_deleted_in_the_admin(admin_client, inventory):
    reservation = reserve(inventory)
    assert admin_client.get("/admin/provisioner/reservation/add/").status_code == 403
    assert admin_client.get(f"/admin/provisioner/reservation/{reservation.pk}/delete/").status_code == 403


def test_audit_events_cannot_be_forged_in_the_admin(admin_client, inventory):
    count = AuditEvent.objects.count()
    assert admin_client.get("/admin/provisioner/auditevent/add/").status_code == 403
    response = admin_client.post(
        "/admin/provisioner/auditevent/add/", {"action": "enroll", "reason": "forged"}
    )
    assert response.status_code == 403
    assert AuditEvent.objects.count() == count


def test_a_node_added_in_the_admin_still_gets_its_server_type(admin_client, inventory):
    response = admin_client.get("/admin/provisioner/node/add/")
    assert "server_type" in response.context["adminform"].form.fields
    assert "owner" not in response.context["adminform"].form.fields


def test_prices_are_added_through_the_metering_service_never_in_the_past_nor_edited(admin_client, inventory):
    from provisioner.models import ServerTypePrice

    add = "/admin/provisioner/servertypeprice/add/"
    past = admin_client.post(
        add,
        {
            "server_type": inventory.h100.pk,
            "cents_per_hour": 100,
            "effective_from_0": "2020-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert past.status_code == 200 and b"cannot start in the past" in past.content
    added = admin_client.post(add, {"server_type": inventory.h100.pk, "cents_per_hour": 2500})
    assert added.status_code == 302, added.content[:500]
    price = ServerTypePrice.objects.get()
    assert price.cents_per_hour == 2500 and price.currency == "USD" and "root-ops" in price.created_by
    inventory.h100.refresh_from_db()
    assert inventory.h100.hourly_price_cents == 2500  # the catalog shows the price in force
    change = admin_client.post(
        f"/admin/provisioner/servertypeprice/{price.pk}/change/", {"cents_per_hour": 1}
    )
    assert change.status_code in (302, 403) and ServerTypePrice.objects.get().cents_per_hour == 2500


def test_webhooks_and_netbox_syncs_are_read_in_the_admin_never_changed_and_no_secret_shown(
    admin_client, inventory
):
    from provisioner.lifecycle import Actor
    from provisioner.services import webhooks

    endpoint, secret = webhooks.create_endpoint(
        inventory.acme, "https://hooks.example.com/x", actor=Actor.system("t")
    )
    page = admin_client.get(f"/admin/provisioner/webhookendpoint/{endpoint.pk}/change/")
    assert page.status_code == 200 and "hooks.example.com" in page.content.decode()
    assert secret not in page.content.decode() and endpoint.secret_encrypted not in page.content.decode()
    for model in ("webhookendpoint", "webhookdelivery", "inventorysync"):
        assert admin_client.get(f"/admin/provisioner/{model}/").status_code == 200
        assert admin_client.get(f"/admin/provisioner/{model}/add/").status_code == 403
    assert (
        admin_client.post(
            f"/admin/provisioner/webhookendpoint/{endpoint.pk}/delete/", {"post": "yes"}
        ).status_code
        == 403
    )


def test_a_site_network_with_a_pool_holding_the_provisioning_vlan_is_refused_in_the_admin(
    admin_client, inventory
):
    from provisioner.models import Site, SiteNetwork

    site = Site.objects.get(slug="lab")
    data = {
        "site": site.pk,
        "provisioning_vlan": 10,
        "cleaning_vlan": 10,
        "quarantine_vlan": 99,
        "tenant_vlan_first": 5,
        "tenant_vlan_last": 50,
        "tenant_supernet": "198.19.0.0/16",
        "tenant_prefix": 24,
        "public_range": "203.0.113.0/24",
    }
    response = admin_client.post("/admin/provisioner/sitenetwork/add/", data)
    assert response.status_code == 200  # the form again, with its error
    assert "includes VLAN 10" in str(response.context["adminform"].form.errors)
    assert not SiteNetwork.objects.exists()
    data["tenant_vlan_first"] = 100
    data["tenant_vlan_last"] = 199
    response = admin_client.post("/admin/provisioner/sitenetwork/add/", data)
    assert response.status_code == 302
    assert SiteNetwork.objects.get(site=site).tenant_vlans() == range(100, 200)
