"""Every customer endpoint (/api/v1/, outside admin/) is a CustomerViewSet: its queryset is scoped to the
caller's organizations by the base class, or the view says by name why its rows belong to no organization.
A new customer view that does neither fails here."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework import mixins
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from provisioner.lifecycle import Actor
from provisioner.models import Organization, ServerType
from provisioner.models.tenancy import OrgScopedQuerySet
from provisioner.services import webhooks
from tests.conftest import reserve
from webapp.api.urls import router
from webapp.api.viewsets import CustomerViewSet

pytestmark = pytest.mark.django_db

CUSTOMER_VIEWS = {
    prefix: viewset for prefix, viewset, _ in router.registry if not prefix.startswith("admin/")
}
# Opting out is a decision: a new one shows up here, in review.
OPTED_OUT = {"server-types", "images", "tokens"}


def _view(viewset: type, user: Any, method: str) -> Any:
    request = Request(getattr(APIRequestFactory(), method.lower())("/"))
    request.user = user
    action = "list" if method == "GET" else "destroy"
    return viewset(request=request, action=action, format_kwarg=None, args=(), kwargs={})


def _organizations_of(queryset: OrgScopedQuerySet) -> set[int | None]:
    """The organization of each row of ``queryset`` (None for a row of no organization)."""
    path = queryset.org_field or "pk"
    return set(queryset.values_list(path, flat=True))


def test_the_customer_views_are_the_registered_non_admin_routes():
    assert set(CUSTOMER_VIEWS) == {
        "server-types",
        "images",
        "ssh-keys",
        "reservations",
        "servers",
        "operations",
        "organizations",
        "tokens",
        "audit-events",
        "events",
        "webhooks",
    }


@pytest.mark.parametrize("prefix", sorted(CUSTOMER_VIEWS))
def test_every_customer_view_is_scoped_or_names_why_not(prefix):
    viewset = CUSTOMER_VIEWS[prefix]
    assert issubclass(viewset, CustomerViewSet), f"{prefix}: {viewset.__name__} is no CustomerViewSet"
    if prefix in OPTED_OUT:
        assert len(viewset.unscoped_because.split()) >= 4, f"{prefix}: say why it is unscoped"
    else:
        assert viewset.unscoped_because == "", f"{prefix} opts out; add it to OPTED_OUT if that is meant"
        assert isinstance(viewset.queryset, OrgScopedQuerySet), prefix


@pytest.mark.parametrize("prefix", sorted(set(CUSTOMER_VIEWS) - OPTED_OUT))
def test_a_scoped_view_reads_and_changes_only_what_the_caller_may(inventory, prefix):
    """Reads: the caller's organizations (staff: every one). Changes: the caller's own organizations, for
    staff too; the operator is in none, so they change nothing through the customer endpoints."""
    inv = inventory
    reserve(inv)
    reserve(inv, org=inv.other, user=inv.outsider, key=inv.other_key, label="oscar")
    for org in (inv.acme, inv.other):
        webhooks.create_endpoint(org, "https://hooks.example.com/x", actor=Actor.system("test"))
    acme, other = inv.acme.pk, inv.other.pk
    everyone = set(Organization.objects.values_list("pk", flat=True))
    allowed = {
        (inv.owner, "GET"): {acme},
        (inv.member, "GET"): {acme},
        (inv.outsider, "GET"): {other},
        (inv.operator, "GET"): everyone | {None},
        (inv.owner, "DELETE"): {acme},
        (inv.outsider, "DELETE"): {other},
        (inv.operator, "DELETE"): set(),
    }
    viewset = CUSTOMER_VIEWS[prefix]
    for (user, method), may in allowed.items():
        found = _organizations_of(_view(viewset, user, method).get_queryset())
        assert found <= may, f"{prefix} {method} as {user.username}: rows of {found - may}"
    # Not vacuous: each side finds its own rows, and the operator reads both organizations'.
    assert acme in _organizations_of(_view(viewset, inv.owner, "DELETE").get_queryset())
    assert other in _organizations_of(_view(viewset, inv.outsider, "GET").get_queryset())
    assert {acme, other} <= _organizations_of(_view(viewset, inv.operator, "GET").get_queryset())


def test_a_customer_view_over_rows_of_no_organization_must_opt_out_by_name(inventory):
    class Catalog(mixins.ListModelMixin, CustomerViewSet):
        queryset = ServerType.objects.all()

    with pytest.raises(ImproperlyConfigured, match="unscoped_because"):
        _view(Catalog, inventory.owner, "GET").get_queryset()

    class NamedCatalog(Catalog):
        unscoped_because = "the catalog belongs to no organization"

    assert _view(NamedCatalog, inventory.owner, "GET").get_queryset().count() == 2
