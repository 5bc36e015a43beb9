"""Who may see what in the portal: the current organization of a request, and the operator gate.

Row-level scoping is the models' ``for_user``; this module only answers "which organization is this
request acting for" (the org switcher) and "is this an operator" (staff)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from provisioner.models import Membership, Organization

SESSION_ORG_KEY = "portal_org_id"


def signed_in(request: HttpRequest) -> User:
    """The signed-in user of a view behind login_required (typed: never the anonymous user)."""
    user = request.user
    assert isinstance(user, User), "login_required lets only signed-in users through"
    return user


def memberships(request: HttpRequest) -> list[Membership]:
    """The signed-in user's memberships, organizations loaded, in name order."""
    if not request.user.is_authenticated:
        return []
    return list(
        Membership.objects.for_user(request.user)
        .select_related("organization")
        .order_by("organization__name")
    )


def current_membership(request: HttpRequest) -> Membership | None:
    """The membership the request acts through: the one picked in the org switcher, else the first.

    Cached on the request. Returns None for a user in no organization (an operator, typically)."""
    if hasattr(request, "_portal_membership"):
        return request._portal_membership  # type: ignore[attr-defined]
    rows = memberships(request)
    chosen = request.session.get(SESSION_ORG_KEY)
    found = next((m for m in rows if m.organization_id == chosen), rows[0] if rows else None)
    request._portal_membership = found  # type: ignore[attr-defined]
    return found


def current_org(request: HttpRequest) -> Organization | None:
    membership = current_membership(request)
    return membership.organization if membership else None


def switch_org(request: HttpRequest, org_id: int) -> bool:
    """Make ``org_id`` the request's organization if the user belongs to it. Idempotent."""
    if not any(m.organization_id == org_id for m in memberships(request)):
        return False
    request.session[SESSION_ORG_KEY] = org_id
    if hasattr(request, "_portal_membership"):
        del request._portal_membership
    return True


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Operator pages: anonymous users go to the sign-in page, signed-in customers get 403."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied("This page is for operators.")
        return view(request, *args, **kwargs)

    return login_required(wrapped)
