"""The portal given wrong input, wrong people and no HTMX: errors appear next to the field that caused them
with what was typed kept, other organizations' objects are 404, every POST needs its CSRF token, and the
polled fragments degrade to full pages."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from provisioner.lifecycle import Actor
from provisioner.models import Node, Reservation, Rollout, SSHKey
from provisioner.services.reservations import release_reservation
from provisioner.services.rollouts import start_rollout
from tests.conftest import reserve
from webapp.portal.views import operator as operator_views

HX = {"HTTP_HX_REQUEST": "true"}


def _local(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M")


def _reserve(inv, *, org=None, key=None, user=None, ends_at=None) -> Reservation:
    return reserve(inv, org=org, key=key, user=user, label="test", ends_at=ends_at)


# Polled fragments requested without HTMX (a bookmarked or shared URL, a browser with scripts off).


def test_reservation_live_fragment_without_htmx_leads_to_the_full_page(client, inventory):
    r = _reserve(inventory)
    client.force_login(inventory.owner)
    live = reverse("portal:reservation_live", args=[r.pk])
    response = client.get(live)
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:reservation", args=[r.pk])
    fragment = client.get(live, **HX)
    assert fragment.status_code == 200 and b"<html" not in fragment.content
    assert b'id="reservation-live"' in fragment.content


def test_operator_live_fragments_without_htmx_lead_to_the_full_pages(client, inventory):
    node = Node.objects.get(name="node-a100-8x-01")
    rollout = start_rollout(
        [node], actor=Actor(user=inventory.operator, label="t"), max_parallel=1, failure_budget=0
    )
    client.force_login(inventory.operator)
    for live, page, pk in [
        ("portal:ops_node_live", "portal:ops_node", node.pk),
        ("portal:ops_rollout_live", "portal:ops_rollout", rollout.pk),
    ]:
        response = client.get(reverse(live, args=[pk]))
        assert response.status_code == 302 and response["Location"] == reverse(page, args=[pk])
        fragment = client.get(reverse(live, args=[pk]), **HX)
        assert fragment.status_code == 200 and b"<html" not in fragment.content


def test_live_fragments_stay_hidden_from_other_organizations_and_customers(client, inventory):
    theirs = _reserve(inventory, org=inventory.other, key=inventory.other_key, user=inventory.outsider)
    client.force_login(inventory.owner)
    assert client.get(reverse("portal:reservation_live", args=[theirs.pk])).status_code == 404
    assert client.get(reverse("portal:reservation_live", args=[theirs.pk]), **HX).status_code == 404
    node = Node.objects.first()
    assert client.get(reverse("portal:ops_node_live", args=[node.pk]), **HX).status_code == 403


# The catalog's availability window.


def test_catalog_window_error_is_shown_in_the_htmx_fragment(client, inventory):
    client.force_login(inventory.owner)
    start = timezone.now() + dt.timedelta(days=2)
    partial = client.get(
        reverse("portal:catalog"),
        {"starts_at": _local(start), "ends_at": _local(start - dt.timedelta(hours=1))},
        **HX,
    ).content.decode()
    assert "<html" not in partial
    assert "The window must end after it starts." in partial


def test_catalog_window_with_a_bad_date_says_so_next_to_the_field(client, inventory):
    client.force_login(inventory.owner)
    body = client.get(reverse("portal:catalog"), {"starts_at": "next tuesday"}).content.decode()
    assert "Enter a valid date/time." in body
    assert 'value="next tuesday"' in body  # what was typed is kept


def test_catalog_fragment_keeps_polling_the_window_it_shows(client, inventory):
    """The 10 s refresh must ask for the window on screen, not the one the page was first loaded with."""
    client.force_login(inventory.owner)
    start = _local(timezone.now() + dt.timedelta(days=3))
    partial = client.get(reverse("portal:catalog"), {"starts_at": start}, **HX).content.decode()
    assert 'hx-trigger="every 10s"' in partial
    assert f'hx-get="/?starts_at={start.replace(":", "%3A")}"' in partial
    assert 'data-testid="avail-window-h100-8x"' in partial


# Extending a reservation.


def test_refused_extension_says_why_next_to_the_field_and_keeps_the_typed_end(client, inventory):
    end = timezone.now() + dt.timedelta(hours=4)
    r = _reserve(inventory, ends_at=end)
    client.force_login(inventory.owner)
    earlier = _local(end - dt.timedelta(hours=1))
    response = client.post(reverse("portal:reservation_extend", args=[r.pk]), {"ends_at": earlier})
    body = response.content.decode()
    assert response.status_code == 200
    assert "The new end must be later than the current end." in body
    assert f'value="{earlier}"' in body
    assert 'class="field-error"' in body
    assert Reservation.objects.get(pk=r.pk).ends_at == end


def test_extension_with_no_date_asks_for_one_next_to_the_field(client, inventory):
    r = _reserve(inventory, ends_at=timezone.now() + dt.timedelta(hours=4))
    client.force_login(inventory.owner)
    response = client.post(reverse("portal:reservation_extend", args=[r.pk]), {"ends_at": "soon"})
    body = response.content.decode()
    assert response.status_code == 200
    assert "Enter a valid date/time." in body and 'value="soon"' in body


def test_another_organizations_reservation_cannot_be_extended(client, inventory):
    theirs = _reserve(
        inventory,
        org=inventory.other,
        key=inventory.other_key,
        user=inventory.outsider,
        ends_at=timezone.now() + dt.timedelta(hours=4),
    )
    client.force_login(inventory.owner)
    later = _local(timezone.now() + dt.timedelta(days=1))
    response = client.post(reverse("portal:reservation_extend", args=[theirs.pk]), {"ends_at": later})
    assert response.status_code == 404


# Reserve form fields rendered by hand must still show their errors.


def test_reserve_form_shows_an_unknown_server_type_next_to_the_field(client, inventory):
    client.force_login(inventory.owner)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": 999999,
            "count": 1,
            "when": "now",
            "image": inventory.image.pk,
            "ssh_keys": [inventory.key.pk],
            "name": "keep me",
        },
    )
    body = response.content.decode()
    assert response.status_code == 200
    assert "Select a valid choice" in body
    assert 'value="keep me"' in body
    assert not Reservation.objects.exists()


def test_reserve_form_without_a_start_choice_says_so(client, inventory):
    client.force_login(inventory.owner)
    response = client.post(
        reverse("portal:reserve"),
        {
            "server_type": inventory.h100.pk,
            "count": 1,
            "image": inventory.image.pk,
            "ssh_keys": [inventory.key.pk],
        },
    )
    assert "This field is required." in response.content.decode()
    assert not Reservation.objects.exists()


# Released reservations say when they ended.


def test_released_reservation_shows_when_it_was_released_not_until_released(client, inventory):
    r = _reserve(inventory)
    released = release_reservation(r, actor=Actor(user=inventory.owner, label="t"))
    client.force_login(inventory.owner)
    stamp = f"{released.released_at:%Y-%m-%d %H:%M}"
    for page in [reverse("portal:reservations"), reverse("portal:reservation", args=[r.pk])]:
        body = client.get(page).content.decode()
        assert "until released" not in body, page
        assert stamp in body, page


# Fleet pages.


def test_fleet_second_page_links_back_and_keeps_the_filters(client, inventory, monkeypatch):
    monkeypatch.setattr(operator_views, "FLEET_PAGE_SIZE", 2)
    client.force_login(inventory.operator)
    body = client.get(reverse("portal:ops_fleet"), {"server_type": "h100-8x", "page": 2}).content.decode()
    assert "Page 2 of 2" in body
    assert 'href="?server_type=h100-8x&amp;page=1"' in body
    first = client.get(reverse("portal:ops_fleet"), {"server_type": "h100-8x"}).content.decode()
    assert 'href="?server_type=h100-8x&amp;page=2"' in first


def test_customers_cannot_start_a_rollout(client, inventory):
    node = Node.objects.first()
    client.force_login(inventory.owner)
    response = client.post(
        reverse("portal:ops_rollout_start"), {"nodes": [node.pk], "max_parallel": 1, "failure_budget": 0}
    )
    assert response.status_code == 403
    assert not Rollout.objects.exists()


def test_another_organizations_ssh_key_cannot_be_deleted(client, inventory):
    client.force_login(inventory.owner)
    assert client.post(reverse("portal:ssh_key_delete", args=[inventory.other_key.pk])).status_code == 404
    assert SSHKey.objects.filter(pk=inventory.other_key.pk).exists()


def test_deleting_the_only_key_of_an_open_reservation_is_refused_in_words(client, inventory):
    reservation = _reserve(inventory, ends_at=timezone.now() + dt.timedelta(hours=4))
    client.force_login(inventory.owner)
    response = client.post(reverse("portal:ssh_key_delete", args=[inventory.key.pk]), follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert f"Key {inventory.key.name} not deleted" in text
    assert f"only key of open reservation {reservation.pk}" in text
    assert SSHKey.objects.filter(pk=inventory.key.pk).exists()


# CSRF: every state-changing endpoint refuses a POST without the token.


def _post_urls(inv) -> list[str]:
    r = _reserve(inv, ends_at=timezone.now() + dt.timedelta(hours=4))
    node = Node.objects.exclude(reservation=r).first()
    rollout = start_rollout([node], actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    return [
        reverse("portal:signup"),
        reverse("portal:logout"),
        reverse("portal:switch_org"),
        reverse("portal:reserve"),
        reverse("portal:reservation_extend", args=[r.pk]),
        reverse("portal:reservation_release", args=[r.pk]),
        reverse("portal:organization"),
        reverse("portal:member_remove", args=[inv.member.pk]),
        reverse("portal:ssh_keys"),
        reverse("portal:ssh_key_delete", args=[inv.key.pk]),
        reverse("portal:api_tokens"),
        reverse("portal:ops_node_action", args=[node.pk]),
        reverse("portal:ops_rollout_start"),
        reverse("portal:ops_rollout_cancel", args=[rollout.pk]),
    ]


@pytest.mark.parametrize("persona", ["owner", "operator"])
def test_every_post_without_a_csrf_token_is_refused(inventory, persona):
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(getattr(inventory, persona))
    for url in _post_urls(inventory):
        assert strict.post(url, {}).status_code == 403, url
    assert SSHKey.objects.filter(pk=inventory.key.pk).exists()
    assert Reservation.objects.get().state != "releasing"


def test_signed_in_pages_carry_a_csrf_token_in_every_post_form(client, inventory):
    _reserve(inventory, ends_at=timezone.now() + dt.timedelta(hours=4))
    client.force_login(inventory.owner)
    r = Reservation.objects.get()
    for url in [
        reverse("portal:catalog"),
        reverse("portal:reserve"),
        reverse("portal:reservation", args=[r.pk]),
        reverse("portal:organization"),
        reverse("portal:ssh_keys"),
        reverse("portal:api_tokens"),
    ]:
        body = client.get(url).content.decode()
        forms = body.split('method="post"')[1:]
        assert forms, url
        for form in forms:
            assert 'name="csrfmiddlewaretoken"' in form.split("</form>")[0], url
