"""The portal when a form is sent twice (double click, browser resend, back button, second tab), and pages
that show a secret are never stored by a browser or proxy."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from django.urls import reverse
from django.utils import timezone

from provisioner.lifecycle import Actor
from provisioner.models import Reservation, SSHKey
from provisioner.services.reservations import book_servers, release_reservation
from tests.conftest import reserve, ssh_keygen


def _token(client) -> str:
    page = client.get(reverse("portal:reserve")).content.decode()
    found = re.search(r'name="token" value="([^"]+)"', page) or re.search(
        r'value="([^"]+)"[^>]*name="token"', page
    )
    assert found, "the reserve form carries a one-time token"
    return found.group(1)


def _form(inventory, token: str, **extra) -> dict:
    data = {
        "server_type": inventory.h100.pk,
        "count": 2,
        "when": "now",
        "image": inventory.image.pk,
        "ssh_keys": [inventory.key.pk],
        "name": "training run",
        "token": token,
    }
    data.update(extra)
    return data


def _messages(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_reserve_form_sent_twice_with_one_token_books_once(client, inventory):
    client.force_login(inventory.owner)
    token = _token(client)
    first = client.post(reverse("portal:reserve"), _form(inventory, token))
    second = client.post(reverse("portal:reserve"), _form(inventory, token), follow=True)
    r = Reservation.objects.get()
    page = reverse("portal:reservation", args=[r.pk])
    assert first.status_code == 302 and first["Location"] == page
    assert second.redirect_chain == [(page, 302)]
    assert r.idempotency_key == f"portal:{token}"
    assert any(f"Reservation {r.pk} was already made" in m for m in _messages(second))


def test_reserve_form_resent_with_a_pasted_key_books_once_and_keeps_one_key(client, inventory, tmp_path):
    _, pub = ssh_keygen(tmp_path, name="new")
    client.force_login(inventory.member)
    token = _token(client)
    data = _form(inventory, token, ssh_keys=[], new_key_name="workstation", new_key=pub)
    client.post(reverse("portal:reserve"), data)
    again = client.post(reverse("portal:reserve"), data)
    r = Reservation.objects.get()
    assert again.status_code == 302 and again["Location"] == reverse("portal:reservation", args=[r.pk])
    assert SSHKey.objects.filter(name="workstation").count() == 1


def test_each_rendering_of_the_reserve_form_has_its_own_token(client, inventory):
    client.force_login(inventory.owner)
    first, second = _token(client), _token(client)
    assert first != second
    client.post(reverse("portal:reserve"), _form(inventory, first))
    client.post(reverse("portal:reserve"), _form(inventory, second, count=1))
    assert Reservation.objects.count() == 2


def test_a_used_token_sent_with_another_request_books_nothing_and_says_so(client, inventory):
    # Back button after booking, a change, submit: the restored form still holds the spent token.
    client.force_login(inventory.owner)
    token = _token(client)
    client.post(reverse("portal:reserve"), _form(inventory, token))
    changed = client.post(reverse("portal:reserve"), _form(inventory, token, count=1))
    assert changed.status_code == 200
    body = changed.content.decode()
    assert "already used" in body
    assert f'value="{token}"' not in body  # a fresh token: sending the form again books the change
    assert Reservation.objects.count() == 1


def test_a_forged_token_is_refused(client, inventory):
    client.force_login(inventory.owner)
    response = client.post(reverse("portal:reserve"), _form(inventory, "x" * 200))
    assert response.status_code == 200
    assert not Reservation.objects.exists()


def _book_first(inventory, token: str, key: SSHKey) -> Reservation:
    """The reservation the other sending of the form made."""
    return book_servers(
        inventory.acme,
        inventory.h100,
        2,
        image=inventory.image,
        actor=Actor.system("test"),
        ssh_keys=[key],
        name="training run",
        idempotency_key=f"portal:{token}",
    ).reservation


def _hide_the_views_first_lookup(monkeypatch) -> list:
    """The other sending commits just after the view looked for it: the view's look-up finds nothing."""
    real_filter = Reservation.objects.filter
    calls: list = []

    def hide_first_lookup(*args, **kwargs):
        if "idempotency_key" in kwargs and not calls:
            calls.append(kwargs)
            return Reservation.objects.none()
        return real_filter(*args, **kwargs)

    monkeypatch.setattr(Reservation.objects, "filter", hide_first_lookup)
    return calls


def test_a_concurrent_sending_that_booked_first_is_followed_to_its_reservation(
    client, inventory, monkeypatch
):
    client.force_login(inventory.owner)
    token = _token(client)
    first = _book_first(inventory, token, inventory.key)
    calls = _hide_the_views_first_lookup(monkeypatch)
    response = client.post(reverse("portal:reserve"), _form(inventory, token))
    monkeypatch.undo()
    assert calls, "the view looks for an earlier booking with the token"
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:reservation", args=[first.pk])
    assert Reservation.objects.count() == 1


def test_a_concurrent_replay_does_not_save_the_pasted_key_again(client, inventory, monkeypatch, tmp_path):
    _, pub = ssh_keygen(tmp_path, name="new")
    client.force_login(inventory.owner)
    token = _token(client)
    # The other sending saved its key (then deleted here so that this one saves it again) and booked.
    key = SSHKey.objects.create(
        organization=inventory.acme, name="workstation", public_key=pub, fingerprint="SHA256:other"
    )
    first = _book_first(inventory, token, key)
    key.delete()
    _hide_the_views_first_lookup(monkeypatch)
    data = _form(inventory, token, ssh_keys=[], new_key_name="workstation", new_key=pub)
    response = client.post(reverse("portal:reserve"), data)
    monkeypatch.undo()
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:reservation", args=[first.pk])
    assert not SSHKey.objects.filter(name="workstation").exists()  # rolled back with the replay


def test_a_concurrent_sending_that_saved_the_pasted_key_first_is_followed(
    client, inventory, monkeypatch, tmp_path
):
    _, pub = ssh_keygen(tmp_path, name="new")
    client.force_login(inventory.owner)
    token = _token(client)
    data = _form(inventory, token, ssh_keys=[], new_key_name="workstation", new_key=pub)
    client.post(reverse("portal:reserve"), data)
    first = Reservation.objects.get()
    _hide_the_views_first_lookup(monkeypatch)
    response = client.post(reverse("portal:reserve"), data)  # its key is refused: already saved
    monkeypatch.undo()
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:reservation", args=[first.pk])
    assert Reservation.objects.count() == 1


def test_releasing_twice_does_not_claim_a_second_release(client, inventory):
    r = reserve(inventory, label="t", ends_at=timezone.now() + dt.timedelta(hours=4))
    client.force_login(inventory.owner)
    url = reverse("portal:reservation_release", args=[r.pk])
    first = client.post(url, follow=True)
    assert any(m.startswith("Released:") for m in _messages(first))
    second = client.post(url, follow=True)
    said = _messages(second)
    assert not any("Released:" in m or "no longer billed" in m for m in said), said
    assert any(f"Reservation {r.pk} is already being released" in m for m in said), said


@pytest.mark.parametrize(
    ("state", "words"),
    [("released", "was already released"), ("failed", "failed")],
    ids=["released", "failed"],
)
def test_releasing_a_closed_reservation_says_so_and_claims_no_release(client, inventory, state, words):
    r = reserve(inventory, label="t")
    release_reservation(r, actor=Actor.system("test"))
    Reservation.objects.filter(pk=r.pk).update(state=state)
    client.force_login(inventory.owner)
    said = _messages(client.post(reverse("portal:reservation_release", args=[r.pk]), follow=True))
    assert any(f"Reservation {r.pk} {words}" in m for m in said), said
    assert not any("Released:" in m or "being wiped" in m or "no longer billed" in m for m in said), said


def test_releasing_a_scheduled_reservation_says_the_booking_is_cancelled(client, inventory):
    start = timezone.now() + dt.timedelta(days=2)
    r = book_servers(
        inventory.acme,
        inventory.a100,
        1,
        image=inventory.image,
        actor=Actor.system("test"),
        starts_at=start,
        ends_at=start + dt.timedelta(days=1),
        ssh_keys=[inventory.key],
    ).reservation
    client.force_login(inventory.owner)
    said = _messages(client.post(reverse("portal:reservation_release", args=[r.pk]), follow=True))
    assert any("Cancelled:" in m for m in said), said
    assert not any("being wiped" in m for m in said), said
    assert Reservation.objects.get(pk=r.pk).state == "released"


def test_the_page_that_shows_a_new_api_token_is_never_stored(client, inventory):
    client.force_login(inventory.owner)
    page = client.post(reverse("portal:api_tokens"), {"name": "ci"}, follow=True)
    assert 'id="new-token">nck_' in page.content.decode()
    assert "no-store" in page["Cache-Control"]
    assert "no-store" in client.get(reverse("portal:api_tokens"))["Cache-Control"]
