"""SSH keys through the customer API: names made from long comments, and what deleting a key does to
reservations that have not installed it yet."""

from __future__ import annotations

from pathlib import Path

from rest_framework.test import APIClient

from provisioner.models import ApiToken, SSHKey
from tests.conftest import ssh_keygen

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.raise_request_exception = False
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def test_a_second_unnamed_key_whose_long_comment_starts_the_same_is_refused_for_its_name(
    inventory, tmp_path: Path
):
    client = api(inventory.owner)
    comment = "c" * 120
    first = ssh_keygen(tmp_path, name="one")[1].rsplit(" ", 1)[0] + f" {comment}-one"
    second = ssh_keygen(tmp_path, name="two")[1].rsplit(" ", 1)[0] + f" {comment}-two"
    saved = client.post(f"{V1}/ssh-keys", {"public_key": first}, format="json")
    assert saved.status_code == 201, saved.content
    assert saved.json()["name"] == "c" * 100
    refused = client.post(f"{V1}/ssh-keys", {"public_key": second}, format="json")
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"]["message"] == (
        f"a key called {'c' * 100!r} already exists in Acme AI; pick another name"
    )
    named = client.post(f"{V1}/ssh-keys", {"public_key": second, "name": "desk"}, format="json")
    assert named.status_code == 201, named.content
    assert SSHKey.objects.filter(organization=inventory.acme).count() == 3
