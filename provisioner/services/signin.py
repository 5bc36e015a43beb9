"""Slowing down password guessing at sign-in (the portal and the Django admin).

Counted in the database (``SignInFailure``), so every web process sees the same counts without a shared
cache. Within NEOCLOUD_SIGNIN_WINDOW_MINUTES:

* one account from one address: NEOCLOUD_SIGNIN_MAX_FAILURES wrong passwords, then every attempt (the right
  password too) is refused until the oldest failure leaves the window;
* one address over all accounts: five times that (password spraying).

Not per account alone: anyone could then lock a customer out by guessing wrong on purpose. The address is
the connection's (REMOTE_ADDR): behind a reverse proxy, run one that sets it to the client's (e.g. uWSGI's or
gunicorn's forwarded-address handling), or every visitor shares the proxy's budget. API tokens are random
and long, not passwords: not counted here. A right password clears that account's failures from that address.
"""

from __future__ import annotations

import datetime as dt
import logging
import math

from django.conf import settings
from django.utils import timezone

from provisioner.errors import NeocloudError
from provisioner.models import SignInFailure

log = logging.getLogger(__name__)

ADDRESS_FACTOR = 5


class SignInThrottled(NeocloudError):
    code = "signin_throttled"


def _window() -> dt.timedelta:
    return dt.timedelta(minutes=settings.NEOCLOUD_SIGNIN_WINDOW_MINUTES)


def _key(username: str) -> str:
    return username.strip().casefold()[:150]


def check_allowed(username: str, address: str | None) -> None:
    """:raises SignInThrottled: too many recent failures for this account from this address, or from it."""
    now = timezone.now()
    limit = settings.NEOCLOUD_SIGNIN_MAX_FAILURES
    recent = SignInFailure.objects.filter(at__gt=now - _window(), address=address)
    for failures, allowed in (
        (recent.filter(username=_key(username)), limit),
        (recent, limit * ADDRESS_FACTOR),
    ):
        count = failures.count()
        if count >= allowed:
            # attempts resume once enough of these failures have left the window
            frees_up = failures.order_by("at").values_list("at", flat=True)[count - allowed] + _window()
            minutes = max(1, math.ceil((frees_up - now).total_seconds() / 60))
            log.warning("sign-in refused for %r from %s: too many failed attempts", _key(username), address)
            raise SignInThrottled(
                f"Too many failed sign-ins from your address. Try again in {minutes} minute(s)."
            )


def record_failure(username: str, address: str | None) -> None:
    SignInFailure.objects.create(username=_key(username), address=address)
    # keep the table to the window: what is older counts for nothing
    SignInFailure.objects.filter(address=address, at__lte=timezone.now() - _window()).delete()


def record_success(username: str, address: str | None) -> None:
    SignInFailure.objects.filter(username=_key(username), address=address).delete()


def prune() -> int:
    """Delete failures older than the window (the scheduler's housekeeping). Returns how many."""
    deleted, _ = SignInFailure.objects.filter(at__lte=timezone.now() - _window()).delete()
    return deleted
