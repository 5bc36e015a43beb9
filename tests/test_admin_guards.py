"""The Django admin cannot bypass the services: no BMC credential without a password, no owner, booking or
server type edited on a node, no reservation window edited past the capacity checks, no forged audit
events, no deleting a server a customer holds."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from provisioner.models import BmcCredential, Node


@pytest.fixture
def admin_client(inventory) -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root-ops", password="pw-root-ops-123"))
    return client


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
