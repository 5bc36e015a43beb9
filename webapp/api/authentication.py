"""API token authentication: ``Authorization: Bearer nck_...``. Tokens are stored hashed (SHA-256)."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone
from rest_framework import authentication, exceptions

from provisioner.models import ApiToken

LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):  # type: ignore[no-untyped-def]
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        parts = header.split()
        if len(parts) != 2 or parts[0] != self.keyword:
            return None
        token = parts[1]
        if not token.startswith(ApiToken.PREFIX):
            raise exceptions.AuthenticationFailed("malformed API token")
        try:  # token_hash is unique: get() needs no ordering, unlike first()
            row = ApiToken.active().select_related("user").get(token_hash=ApiToken.hash(token))
        except ApiToken.DoesNotExist:
            row = None
        if row is None or not row.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, revoked or expired API token")
        now = timezone.now()
        # "Last used" to the minute is enough: a busy client does not write on every request.
        if row.last_used_at is None or now - row.last_used_at > LAST_USED_RESOLUTION:
            ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
        return (row.user, row)

    def authenticate_header(self, request):  # type: ignore[no-untyped-def]
        return self.keyword
