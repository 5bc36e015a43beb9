"""SSH keys through the customer API: names made from long comments, and what deleting a key does to
reservations that have not installed it yet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from django.utils import timezone
from rest_framework.test import APIClient

from provisioner.lifecycle import Actor
from provisioner.models import AuditEvent, Reservation, SSHKey
from provisioner.services.reservations import release_reservation
from provisioner.sshkeys import parse_public_key
from provisioner.states import ReservationState
from tests.api.test_api_bad_input import api
from tests.conftest import ssh_keygen

V1 = "/api/v1"


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


def add_key(inventory, tmp_path: Path, name: str) -> SSHKey:
    parsed = parse_public_key(ssh_keygen(tmp_path, name=name)[1])
    return SSHKey.objects.create(
        organization=inventory.acme, name=name, public_key=parsed.line, fingerprint=parsed.fingerprint
    )


def book(client: APIClient, keys: list, *, hours_ahead: int = 24) -> Reservation:
    start = timezone.now() + dt.timedelta(hours=hours_ahead)
    response = client.post(
        f"{V1}/reservations",
        {
            "server_type": "h100-8x",
            "count": 1,
            "image": "ubuntu-24.04",
            "ssh_keys": keys,
            "starts_at": start.isoformat(),
            "ends_at": (start + dt.timedelta(hours=2)).isoformat(),
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return Reservation.objects.get(pk=response.json()["id"])


def test_a_deleted_key_is_not_installed_by_a_reservation_that_has_not_started(inventory, tmp_path: Path):
    client = api(inventory.owner)
    desk = add_key(inventory, tmp_path, "desk")
    scheduled = book(client, ["laptop", "desk"])
    waiting = book(client, ["laptop", "desk"], hours_ahead=48)
    Reservation.objects.filter(pk=waiting.pk).update(state=ReservationState.WAITING)
    deleted = client.delete(f"{V1}/ssh-keys/{inventory.key.pk}")
    assert deleted.status_code == 204, deleted.content
    assert not SSHKey.objects.filter(pk=inventory.key.pk).exists()
    for reservation in (scheduled, waiting):
        reservation.refresh_from_db()
        assert reservation.authorized_keys == [desk.public_key]
        assert list(reservation.ssh_keys.all()) == [desk]
    event = AuditEvent.objects.get(action="ssh_key_delete")
    assert f"removed from open reservations {scheduled.pk}, {waiting.pk}" in event.reason


def test_a_key_that_is_the_only_one_of_an_open_reservation_cannot_be_deleted(inventory, tmp_path: Path):
    client = api(inventory.owner)
    add_key(inventory, tmp_path, "desk")
    first, second = book(client, ["laptop"]), book(client, ["laptop"], hours_ahead=48)
    book(client, ["laptop", "desk"], hours_ahead=72)
    refused = client.delete(f"{V1}/ssh-keys/{inventory.key.pk}")
    assert refused.status_code == 400, refused.content
    assert refused.json()["error"] == {
        "code": "invalid_request",
        "message": f"SSH key 'laptop' is the only key of open reservations {first.pk}, {second.pk}: servers "
        "provisioned for them from now on could not be reached; release them first, or delete the key once "
        "they have ended",
    }
    assert SSHKey.objects.filter(pk=inventory.key.pk).exists()
    assert all(inventory.key.public_key in r.authorized_keys for r in Reservation.objects.all())
    assert not AuditEvent.objects.filter(action="ssh_key_delete").exists()


def test_a_released_reservation_keeps_its_record_of_a_deleted_key(inventory):
    client = api(inventory.owner)
    done = book(client, ["laptop"])
    release_reservation(done, actor=Actor.system("test"))
    assert client.delete(f"{V1}/ssh-keys/{inventory.key.pk}").status_code == 204
    done.refresh_from_db()
    assert done.authorized_keys == [inventory.key.public_key]
