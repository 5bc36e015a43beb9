"""Sign up (creates the user's organization), sign in, sign out, and the organization switcher."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.services import tenancy
from webapp.portal.access import switch_org
from webapp.portal.forms import SignUpForm
from webapp.portal.wording import sentence


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:catalog")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                user = form.save()
                tenancy.create_organization(
                    user, form.cleaned_data["organization"], actor=Actor(user=user, label=user.username)
                )
        except InvalidRequest as exc:
            form.add_error("organization", sentence(exc))
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            messages.success(
                request, f"Welcome, {user.username}. Add an SSH key, then reserve your first servers."
            )
            return redirect("portal:ssh_keys")
    return render(request, "portal/auth/signup.html", {"form": form})


@login_required
@require_POST
def switch_organization(request: HttpRequest) -> HttpResponse:
    try:
        org_id = int(request.POST.get("organization", ""))
    except ValueError:
        org_id = 0
    if not switch_org(request, org_id):
        messages.error(request, "You are not a member of that organization.")
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        target = "portal:catalog"
    return redirect(target)
