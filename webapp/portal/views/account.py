"""Organization (members, quota), SSH keys, API tokens and the organization's audit trail."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from provisioner.errors import NeocloudError
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, ApiToken, AuditEvent, Membership, SSHKey
from provisioner.services import tenancy
from webapp.portal.access import current_membership, current_org, signed_in
from webapp.portal.forms import InviteForm, SSHKeyForm, TokenForm
from webapp.portal.wording import sentence

_NEW_TOKEN_SESSION_KEY = "portal_new_token"  # noqa: S105 - a session key name, not a secret


@login_required
def organization(request: HttpRequest) -> HttpResponse:
    membership = current_membership(request)
    if membership is None:
        return render(request, "portal/account/organization.html", {"org": None})
    org = membership.organization
    form = InviteForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            added = tenancy.add_member(
                org,
                form.cleaned_data["username"],
                role=form.cleaned_data["role"],
                actor=Actor.from_request(request),
            )
        except NeocloudError as exc:
            form.add_error("username", sentence(exc))
        else:
            messages.success(request, f"{added.user.username} is now a {added.role} of {org.name}.")
            return redirect("portal:organization")
    held = (
        Allocation.objects.filter(active=True, reservation__organization=org)
        .values("node_id")
        .distinct()
        .count()
    )
    return render(
        request,
        "portal/account/organization.html",
        {
            "org": org,
            "membership": membership,
            "is_owner": membership.role == Membership.Role.OWNER,
            "members": Membership.objects.filter(organization=org)
            .select_related("user")
            .order_by("user__username"),
            "form": form,
            "held": held,
            "quota_percent": min(100, int(100 * held / org.server_quota)) if org.server_quota else 100,
        },
    )


@login_required
@require_POST
def member_remove(request: HttpRequest, user_id: int) -> HttpResponse:
    org = current_org(request)
    if org is None:
        return redirect("portal:organization")
    try:
        tenancy.remove_member(org, user_id, actor=Actor.from_request(request))
    except NeocloudError as exc:
        messages.error(request, sentence(exc))
    else:
        messages.success(request, "Member removed.")
    return redirect("portal:organization")


@login_required
def ssh_keys(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    form = SSHKeyForm(request.POST or None)
    if request.method == "POST" and org is not None and form.is_valid():
        try:
            key = tenancy.create_ssh_key(
                org,
                form.cleaned_data["name"],
                form.cleaned_data["public_key"],
                actor=Actor.from_request(request),
            )
        except NeocloudError as exc:
            form.add_error("public_key", sentence(exc))
        else:
            messages.success(request, f"Key {key.name} saved ({key.fingerprint}).")
            return redirect("portal:ssh_keys")
    keys = SSHKey.objects.for_user(request.user).filter(organization=org) if org else SSHKey.objects.none()
    return render(request, "portal/account/ssh_keys.html", {"form": form, "keys": keys, "org": org})


@login_required
@require_POST
def ssh_key_delete(request: HttpRequest, pk: int) -> HttpResponse:
    # for_member, not for_user: an operator deletes keys of their own organizations only, as anyone does
    key = get_object_or_404(SSHKey.objects.for_member(request.user).select_related("organization"), pk=pk)
    try:
        tenancy.delete_ssh_key(key, actor=Actor.from_request(request))
    except NeocloudError as exc:
        messages.error(request, f"Key {key.name} not deleted: {sentence(exc)}")
        return redirect("portal:ssh_keys")
    messages.success(
        request,
        f"Key {key.name} deleted: no server provisioned from now on gets it, scheduled reservations "
        "included. Servers already running keep it until they are released.",
    )
    return redirect("portal:ssh_keys")


@never_cache  # it shows a new token in plaintext, once: no browser or proxy may keep a copy
@login_required
def api_tokens(request: HttpRequest) -> HttpResponse:
    form = TokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        row, plaintext = tenancy.issue_token(
            signed_in(request),
            form.cleaned_data["name"],
            actor=Actor.from_request(request),
            expires_in_days=form.cleaned_data["expires_in_days"],
        )
        # Shown once, on the next page: only its hash is stored.
        request.session[_NEW_TOKEN_SESSION_KEY] = {"name": row.name, "token": plaintext}
        return redirect("portal:api_tokens")
    new_token = request.session.pop(_NEW_TOKEN_SESSION_KEY, None)
    tokens = ApiToken.objects.filter(user=signed_in(request))
    return render(
        request, "portal/account/api_tokens.html", {"form": form, "tokens": tokens, "new_token": new_token}
    )


@login_required
@require_POST
def api_token_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.filter(user=signed_in(request)), pk=pk)
    tenancy.revoke_token(token, actor=Actor.from_request(request))
    messages.success(request, f"Token {token.name} revoked: requests using it are refused from now on.")
    return redirect("portal:api_tokens")


@login_required
def audit_trail(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    events = AuditEvent.objects.for_user(request.user).select_related("actor", "node", "reservation")
    if org is not None:
        events = events.filter(organization=org)
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    return render(request, "portal/account/audit.html", {"page": page, "org": org})
