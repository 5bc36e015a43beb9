"""Who may do what through the API, in one place.

Rows: every customer queryset is scoped by webapp/api/viewsets.CustomerViewSet with the models'
``for_user`` (reads: a customer sees their organizations' rows, staff see all) and ``for_member``
(everything else: the caller's own organizations, staff included; operators act on customers' rows
through /api/v1/admin/). A row outside that scope is a 404, never a 403, so its existence does not leak.
Actions: the small mapping below says which viewset actions are staff-only or owner-only (403 for everyone
else).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.db.models import QuerySet
from rest_framework import permissions
from rest_framework.exceptions import NotFound, ValidationError

from provisioner import prepared
from provisioner.models import ApiToken, Membership, Organization
from provisioner.prepared import PreparedQuery, columns, instances

OWNER_ONLY_ACTIONS = {
    "organizations": {"add_member", "remove_member"},
}


class IsOperator(permissions.BasePermission):
    """Staff only: the whole ``/api/v1/admin/`` tree."""

    message = "this endpoint is for operators (staff) only"

    def has_permission(self, request: Any, view: Any) -> bool:
        return bool(request.user and request.user.is_authenticated and request.user.is_staff)


class OwnerOnlyActions(permissions.BasePermission):
    """Owner-only actions of OWNER_ONLY_ACTIONS[view.basename]. Staff are owners where they are owners:
    being an operator makes no one an owner of a customer's organization."""

    message = "only an owner of this organization can do that"

    def applies_to(self, view: Any) -> bool:
        """Whether this view's action is one it may refuse (the API schema documents a 403 there)."""
        return getattr(view, "action", None) in OWNER_ONLY_ACTIONS.get(view.basename, set())

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        if not self.applies_to(view):
            return True
        org = obj if isinstance(obj, Organization) else obj.organization
        return Membership.objects.filter(
            organization=org, user=request.user, role=Membership.Role.OWNER
        ).exists()


def tokens_for(user: Any) -> QuerySet[ApiToken]:
    """API tokens are personal: everyone, staff included, sees only their own."""
    if not getattr(user, "is_authenticated", False):
        return ApiToken.objects.none()
    return ApiToken.objects.filter(user=user)


def acting_organization(user: Any, slug: str | None) -> Organization:
    """The organization a create request acts for: the one named, or the user's only one.

    Only organizations the user is a member of qualify, for staff too: operators do not book for customers.

    :raises NotFound: ``slug`` names an organization the user is not a member of.
    :raises ValidationError: none named and the user is in zero or several organizations.
    """
    member = getattr(user, "is_authenticated", False)  # as Organization.objects.for_member(user)
    if slug:
        found = instances(Organization, _MEMBER_OF_NAMED.rows(user.pk, slug)) if member else []
        if not found:
            raise NotFound(f"you are not a member of an organization called {slug!r}")
        return found[0]
    orgs = instances(Organization, _MEMBER_OF.rows(user.pk)) if member else []
    if len(orgs) == 1:
        return orgs[0]
    if not orgs:
        raise ValidationError({"organization": ["you are not a member of any organization"]})
    raise ValidationError({"organization": ["you belong to several organizations: name one (its slug)"]})


def _mine(user_id: int) -> QuerySet[Organization]:
    return Organization.objects.for_member(User(pk=user_id))


# What acting_organization reads on every booking (built once: provisioner.prepared): the organization named,
# or the user's first two (one: that one).
_MEMBER_OF_NAMED = PreparedQuery(
    lambda user_id, slug: _mine(user_id).filter(slug=slug).values_list(*columns(Organization))[:1],
    prepared.INT,
    prepared.TEXT,
)
_MEMBER_OF = PreparedQuery(
    lambda user_id: _mine(user_id).values_list(*columns(Organization))[:2], prepared.INT
)
