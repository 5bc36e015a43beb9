"""Organizations (the customers), their members, SSH keys and API tokens."""

from __future__ import annotations

import datetime
import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q, QuerySet
from django.utils import timezone


class OrgScopedQuerySet(QuerySet):
    """Queryset of rows owned by an organization: the one place that scopes them to a user.

    ``for_user``: the rows a user may see (a customer their organizations', staff every organization's).
    ``for_member``: the rows of the organizations the user belongs to, staff included: what a user may
    change as a customer. Operators change customers' rows as operators (the operator API), not here.
    """

    # The path from a row to its organization; "" for an organization itself.
    org_field = "organization"

    def for_user(self, user: Any) -> QuerySet:
        if getattr(user, "is_staff", False):
            return self
        return self.for_member(user)

    def for_member(self, user: Any) -> QuerySet:
        if not getattr(user, "is_authenticated", False):
            return self.none()
        path = f"{self.org_field}__memberships__user" if self.org_field else "memberships__user"
        return self.filter(**{path: user}).distinct()


class OrganizationQuerySet(OrgScopedQuerySet):
    org_field = ""


class Organization(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    # Most servers this organization may hold at once (reserved, deploying or active).
    server_quota = models.PositiveIntegerField(default=16)
    # Most this organization may spend in one calendar month (UTC), in cents of NEOCLOUD_CURRENCY; null: no
    # limit. A booking that would exceed it is refused (services.metering.check_spend_limit).
    monthly_spend_limit_cents = models.PositiveBigIntegerField(null=True, blank=True)
    # On network-managed sites: one private network for all of this organization's reservations at a site
    # (their servers reach each other) instead of one per reservation.
    shared_private_network = models.BooleanField(
        default=False, help_text="one private network per site for all this organization's reservations"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OrganizationQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class MembershipQuerySet(QuerySet["Membership"]):
    def for_user(self, user: Any) -> MembershipQuerySet:
        return self.filter(user=user)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"

    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "user"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.organization} ({self.role})"


class SSHKey(models.Model):
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="ssh_keys")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    name = models.CharField(max_length=100)
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "name"], name="uniq_sshkey_name"),
            models.UniqueConstraint(fields=["organization", "fingerprint"], name="uniq_sshkey_fingerprint"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class ApiToken(models.Model):
    """A per-user API token. Only its SHA-256 is stored; the token itself is shown once at creation."""

    PREFIX = "nck_"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    hint = models.CharField(max_length=12, help_text="first characters, to tell tokens apart")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="refused from then on; empty: never")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @staticmethod
    def hash(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    @classmethod
    def issue(
        cls, user: object, name: str, expires_at: datetime.datetime | None = None
    ) -> tuple[ApiToken, str]:
        """Create a token; returns the row and the plaintext token (the only time it exists)."""
        token = cls.PREFIX + secrets.token_urlsafe(32)
        row = cls.objects.create(
            user=user, name=name, token_hash=cls.hash(token), hint=token[:10], expires_at=expires_at
        )
        return row, token

    @classmethod
    def active(cls) -> QuerySet[ApiToken]:
        """Tokens that work now: not revoked, not expired."""
        return cls.objects.filter(
            Q(revoked_at__isnull=True), Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
        )

    @property
    def status(self) -> str:
        """active, expired or revoked (for lists)."""
        if self.revoked_at:
            return "revoked"
        if self.expires_at and self.expires_at <= timezone.now():
            return "expired"
        return "active"


class SignInFailure(models.Model):
    """A wrong password for ``username`` (case-folded) from ``address``: what provisioner.services.signin
    counts to slow down password guessing. Rows older than the counting window are pruned."""

    username = models.CharField(max_length=150)
    address = models.GenericIPAddressField(null=True, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        indexes = [models.Index(fields=["username", "address", "at"]), models.Index(fields=["address", "at"])]

    def __str__(self) -> str:
        return f"{self.username} from {self.address} at {self.at:%Y-%m-%d %H:%M:%S}"
