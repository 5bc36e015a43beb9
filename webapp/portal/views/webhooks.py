"""Webhooks of the current organization: the list, adding one (its secret shown once), and each endpoint's
delivery log with a "send test event" button. Changes go through provisioner.services.webhooks."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db.models import Count, Prefetch, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from provisioner.errors import NeocloudError
from provisioner.lifecycle import Actor
from provisioner.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from provisioner.services import webhooks as webhook_service
from webapp.portal.access import current_org
from webapp.portal.forms import WebhookForm
from webapp.portal.wording import sentence

_NEW_SECRET_SESSION_KEY = "portal_new_webhook_secret"  # noqa: S105 - a session key name, not a secret


def _changeable(request: HttpRequest) -> QuerySet[WebhookEndpoint]:
    """Endpoints the user may change: those of their own organizations (operators included)."""
    return WebhookEndpoint.objects.for_member(request.user).select_related("organization")


@never_cache  # it shows a new secret in plaintext, once: no browser or proxy may keep a copy
@login_required
def webhooks(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    form = WebhookForm(request.POST or None)
    if request.method == "POST" and org is not None and form.is_valid():
        try:
            endpoint, secret = webhook_service.create_endpoint(
                org,
                form.cleaned_data["url"],
                actor=Actor.from_request(request),
                event_types=form.cleaned_data["event_types"],
                description=form.cleaned_data["description"],
            )
        except NeocloudError as exc:
            form.add_error("url", sentence(exc))
        else:
            # Shown once, on the next page: it is kept encrypted, and never shown again.
            request.session[_NEW_SECRET_SESSION_KEY] = {
                "id": endpoint.pk,
                "url": endpoint.url,
                "secret": secret,
            }
            return redirect("portal:webhooks")
    new_secret = request.session.pop(_NEW_SECRET_SESSION_KEY, None)
    endpoints = (
        WebhookEndpoint.objects.for_user(request.user)
        .filter(organization=org)
        .annotate(
            delivered=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.State.SUCCEEDED)),
            pending=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.State.PENDING)),
            given_up=Count("deliveries", filter=Q(deliveries__state=WebhookDelivery.State.FAILED)),
        )
        if org
        else WebhookEndpoint.objects.none()
    )
    return render(
        request,
        "portal/account/webhooks.html",
        {"form": form, "endpoints": endpoints, "org": org, "new_secret": new_secret},
    )


@login_required
def webhook_detail(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = get_object_or_404(
        WebhookEndpoint.objects.for_user(request.user).select_related("organization"), pk=pk
    )
    deliveries = (
        WebhookDelivery.objects.filter(endpoint=endpoint)
        .select_related("event")
        .prefetch_related(Prefetch("attempt_log", WebhookAttempt.objects.order_by("id")))
        .order_by("-id")
    )
    page = Paginator(deliveries, 50).get_page(request.GET.get("page"))
    return render(request, "portal/account/webhook_detail.html", {"endpoint": endpoint, "page": page})


@login_required
@require_POST
def webhook_test(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = get_object_or_404(_changeable(request), pk=pk)
    try:
        webhook_service.send_test(endpoint, actor=Actor.from_request(request))
    except NeocloudError as exc:
        messages.error(request, sentence(exc))
    else:
        messages.success(request, "Test event queued: it shows in the log below once your endpoint answers.")
    return redirect("portal:webhook", pk=endpoint.pk)


@login_required
@require_POST
def webhook_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = get_object_or_404(_changeable(request), pk=pk)
    endpoint = webhook_service.update_endpoint(
        endpoint, actor=Actor.from_request(request), active=not endpoint.active
    )
    if endpoint.active:
        messages.success(request, "Endpoint active: events are delivered again, pending ones first.")
    else:
        messages.success(request, "Endpoint paused: nothing is sent to it until you resume it.")
    return redirect("portal:webhook", pk=endpoint.pk)


@login_required
@require_POST
def webhook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    endpoint = get_object_or_404(_changeable(request), pk=pk)
    url = endpoint.url
    webhook_service.delete_endpoint(endpoint, actor=Actor.from_request(request))
    messages.success(request, f"Webhook to {url} deleted, with its pending deliveries and log.")
    return redirect("portal:webhooks")
