"""The base of every customer endpoint (/api/v1/): one organization scope, applied to every query, as
NetBox's ``BaseViewSet`` restricts every queryset to what its user may do.

Reads (GET, HEAD, OPTIONS) see what ``for_user`` lets the caller see: a customer their organizations'
rows, an operator every organization's (oversight, read-only). Everything else (delete, and actions such
as release, extend or adding a member) acts within the caller's own organizations, operators included: an
operator is no customer of another organization, and changes a customer's rows through /api/v1/admin/,
audited as the operator. A row outside the scope answers 404, as one that does not exist.

A view whose rows belong to no organization opts out by name, saying why (``unscoped_because``);
tests/api/test_customer_scope.py holds every customer view to one or the other.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet
from rest_framework import permissions, viewsets

from provisioner.models.tenancy import OrgScopedQuerySet


class CustomerViewSet(viewsets.GenericViewSet):
    """``get_queryset`` returns ``queryset`` scoped to the caller's organizations; a subclass that needs
    more (joins that depend on the action, a narrower set) calls ``super().get_queryset()`` first."""

    # Why this view's rows belong to no organization (the catalog, personal tokens). Empty: scoped.
    unscoped_because: ClassVar[str] = ""

    def changes_rows(self) -> bool:
        """Whether this request may change what it finds (anything but a read)."""
        return self.request.method not in permissions.SAFE_METHODS

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        if self.unscoped_because:
            return queryset
        if not isinstance(queryset, OrgScopedQuerySet):
            raise ImproperlyConfigured(
                f"{type(self).__name__}: {queryset.model.__name__} rows have no organization scope; "
                "give the model an OrgScopedQuerySet or name why the view is unscoped (unscoped_because)"
            )
        user = self.request.user
        return queryset.for_member(user) if self.changes_rows() else queryset.for_user(user)
