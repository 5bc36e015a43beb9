"""Which SSH keys a reservation request names: a JSON number is a key id, a string a key name (a digit
string that names no key is still read as an id); one reference never means two keys; a list is short."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from provisioner.models import Reservation, SSHKey
from provisioner.sshkeys import parse_public_key
from tests.api.test_api_bad_input import api
from tests.conftest import ssh_keygen

V1 = "/api/v1"


def body(refs: list) -> dict:
    return {"server_type": "h100-8x", "count": 1, "image": "ubuntu-24.04", "ssh_keys": refs}


def add_key(inventory, tmp_path: Path, name: str) -> SSHKey:
    parsed = parse_public_key(ssh_keygen(tmp_path, name=f"k{len(name)}-{name.encode().hex()}")[1])
    return SSHKey.objects.create(
        organization=inventory.acme, name=name, public_key=parsed.line, fingerprint=parsed.fingerprint
    )


def installed(response) -> list[str]:
    assert response.status_code == 201, response.content
    return Reservation.objects.get(pk=response.json()["id"]).authorized_keys


def test_a_digit_string_naming_one_key_and_the_id_of_another_is_ambiguous(inventory, tmp_path: Path):
    named = add_key(inventory, tmp_path, str(inventory.key.pk))
    response = api(inventory.owner).post(f"{V1}/reservations", body([str(inventory.key.pk)]), format="json")
    assert response.status_code == 400, response.content
    ref = str(inventory.key.pk)
    assert response.json()["error"]["details"]["ssh_keys"] == [
        f"{ref!r} is ambiguous in Acme AI: SSH key {named.pk} is named {ref!r} and SSH key "
        f"{inventory.key.pk} is 'laptop'; give key ids as numbers ({inventory.key.pk} or {named.pk})"
    ]
    assert not Reservation.objects.exists()


def test_a_number_is_an_id_and_a_string_a_name_even_when_a_key_is_named_with_digits(
    inventory, tmp_path: Path
):
    named = add_key(inventory, tmp_path, str(inventory.key.pk))
    client = api(inventory.owner)
    by_id = client.post(f"{V1}/reservations", body([inventory.key.pk]), format="json")
    assert installed(by_id) == [inventory.key.public_key]
    assert by_id.json()["ssh_keys"] == [inventory.key.pk]
    by_name = client.post(f"{V1}/reservations", body([named.pk, "laptop"]), format="json")
    assert sorted(installed(by_name)) == sorted([named.public_key, inventory.key.public_key])


def test_a_digit_string_that_names_a_key_whose_id_is_free_is_that_key(inventory, tmp_path: Path):
    named = add_key(inventory, tmp_path, "987654")
    response = api(inventory.owner).post(f"{V1}/reservations", body(["987654"]), format="json")
    assert installed(response) == [named.public_key]


def test_a_digit_string_still_finds_a_key_by_its_id_when_no_key_has_that_name(inventory):
    response = api(inventory.owner).post(f"{V1}/reservations", body([str(inventory.key.pk)]), format="json")
    assert installed(response) == [inventory.key.public_key]


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        (10**6, "no SSH key with id 1000000 in Acme AI"),
        (2**70, 'give a key id as a number (e.g. 12) or a key name as a string (e.g. "laptop")'),
        (0, 'give a key id as a number (e.g. 12) or a key name as a string (e.g. "laptop")'),
        (True, 'give a key id as a number (e.g. 12) or a key name as a string (e.g. "laptop")'),
        (1.5, 'give a key id as a number (e.g. 12) or a key name as a string (e.g. "laptop")'),
        ("  ", "a key name cannot be blank"),
        ("x" * 101, "a key name has at most 100 characters"),
    ],
)
def test_a_reference_that_is_no_key_is_a_clear_400(inventory, ref, message):
    response = api(inventory.owner).post(f"{V1}/reservations", body([ref]), format="json")
    assert response.status_code == 400, response.content
    details = response.json()["error"]["details"]["ssh_keys"]
    assert message in str(details)


def test_a_key_named_twice_or_by_id_and_name_is_installed_once(inventory):
    refs = ["laptop", "laptop", inventory.key.pk, str(inventory.key.pk)]
    response = api(inventory.owner).post(f"{V1}/reservations", body(refs), format="json")
    assert installed(response) == [inventory.key.public_key]
    assert response.json()["ssh_keys"] == [inventory.key.pk]


def test_too_many_key_references_are_a_400_without_touching_the_database(inventory):
    client = api(inventory.owner)
    with CaptureQueriesContext(connection) as queries:
        response = client.post(f"{V1}/reservations", body([str(i) for i in range(130_000)]), format="json")
    assert response.status_code == 400, response.content[:500]
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "the request is not valid; see details",
        "details": {"ssh_keys": ["Ensure this field has no more than 100 elements."]},
    }
    assert not any("ssh" in q["sql"].lower() for q in queries.captured_queries)


def test_a_hundred_references_to_one_key_are_accepted(inventory):
    response = api(inventory.owner).post(f"{V1}/reservations", body(["laptop"] * 100), format="json")
    assert installed(response) == [inventory.key.public_key]
