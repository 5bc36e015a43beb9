"""Password guessing at sign-in is slowed down (portal and Django admin): after
NEOCLOUD_SIGNIN_MAX_FAILURES wrong passwords for one account from one address, attempts from that address
are refused, the right password too, with a sentence saying how long to wait; other addresses are not
affected (nobody can lock a customer out), and the counts are in the database, shared by every process."""

from __future__ import annotations

import datetime as dt

import pytest
from django.urls import reverse
from django.utils import timezone

from provisioner.models import SignInFailure
from provisioner.services.periodics import housekeeping_pass

GUESSER, OFFICE = "203.0.113.9", "198.51.100.7"
PASSWORD = "pw-olivia-123"


def _sign_in(client, username: str, password: str, address: str, url: str | None = None):
    return client.post(
        url or reverse("portal:login"), {"username": username, "password": password}, REMOTE_ADDR=address
    )


def _signed_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.fixture
def limit(settings):
    settings.NEOCLOUD_SIGNIN_MAX_FAILURES = 3
    settings.NEOCLOUD_SIGNIN_WINDOW_MINUTES = 15
    return 3


def test_wrong_passwords_from_one_address_lock_that_address_out_of_the_account(client, inventory, limit):
    for _ in range(limit):
        assert "do not match" in _sign_in(client, "olivia", "guess", GUESSER).content.decode()

    refused = _sign_in(client, "OLIVIA", PASSWORD, GUESSER).content.decode()  # the right one, any case

    assert "Too many failed sign-ins from your address. Try again in 15 minute(s)." in refused
    assert not _signed_in(client)
    assert SignInFailure.objects.filter(username="olivia", address=GUESSER).count() == limit
    # the customer, from her own address, is not locked out
    assert _sign_in(client, "olivia", PASSWORD, OFFICE).status_code == 302 and _signed_in(client)


def test_attempts_resume_when_the_failures_leave_the_window_and_a_success_clears_them(
    client, inventory, limit
):
    for _ in range(limit):
        _sign_in(client, "olivia", "guess", GUESSER)
    SignInFailure.objects.update(at=timezone.now() - dt.timedelta(minutes=16))
    assert housekeeping_pass()["signin_failures_pruned"] == limit

    _sign_in(client, "olivia", "guess", GUESSER)
    assert _sign_in(client, "olivia", PASSWORD, GUESSER).status_code == 302 and _signed_in(client)
    assert not SignInFailure.objects.filter(username="olivia", address=GUESSER).exists()


def test_one_address_guessing_many_accounts_is_refused_too(client, inventory, limit):
    for i in range(limit * 5):
        _sign_in(client, f"user-{i}", "guess", GUESSER)
    refused = _sign_in(client, "olivia", PASSWORD, GUESSER).content.decode()
    assert "Too many failed sign-ins" in refused and not _signed_in(client)


def test_the_admin_sign_in_is_counted_the_same_way(client, inventory, limit):
    url = reverse("admin:login")
    for _ in range(limit):
        _sign_in(client, "opal", "guess", GUESSER, url)
    refused = _sign_in(client, "opal", "pw-opal-12345", GUESSER, url).content.decode()
    assert "Too many failed sign-ins" in refused and not _signed_in(client)
    assert _sign_in(client, "opal", "pw-opal-12345", OFFICE, url).status_code == 302 and _signed_in(client)
