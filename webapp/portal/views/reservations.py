"""A customer's reservations: list and history, the live detail page, extend and release."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from provisioner import networking
from provisioner.errors import NeocloudError
from provisioner.lifecycle import Actor
from provisioner.models import BurnInReport, NetworkAttachment, Operation, Reservation
from provisioner.services import metering
from provisioner.services.reservations import extend_reservation, release_reservation
from provisioner.sshkeys import ssh_command
from provisioner.states import (
    OPEN_OPERATION_STATES,
    OPEN_RESERVATION_STATES,
    ReservationState,
)
from webapp.portal.access import current_org
from webapp.portal.forms import ExtendForm
from webapp.portal.wording import sentence

# While a reservation is in one of these, its detail page keeps polling.
_MOVING_STATES = {
    ReservationState.SCHEDULED,
    ReservationState.PROVISIONING,
    ReservationState.RELEASING,
    ReservationState.WAITING,
}


def _scoped(request: HttpRequest):
    return Reservation.objects.for_user(request.user).select_related("server_type", "image", "organization")


def _changeable(request: HttpRequest):
    """The reservations this request may extend or release: its user's organizations', for staff too (an
    operator releases a customer's reservation through the operator API, audited as the operator)."""
    return Reservation.objects.for_member(request.user).select_related("server_type", "image", "organization")


@login_required
def reservation_list(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    rows = _scoped(request)
    if org is not None:
        rows = rows.filter(organization=org)
    current = rows.filter(state__in=OPEN_RESERVATION_STATES)
    history = Paginator(rows.exclude(state__in=OPEN_RESERVATION_STATES), 25).get_page(request.GET.get("page"))
    return render(
        request, "portal/reservations/list.html", {"current": current, "history": history, "org": org}
    )


def _servers(request: HttpRequest, reservation: Reservation) -> list[dict]:
    """Each server of the reservation with its latest operation (steps loaded) and burn-in report."""
    ops = (
        Operation.objects.for_user(request.user)
        .filter(reservation=reservation)
        .prefetch_related("steps")
        .order_by("node_id", "-created_at")
    )
    latest: dict[int, Operation] = {}
    for op in ops:
        latest.setdefault(op.node_id, op)
    reports: dict[int, BurnInReport] = {}
    for report in (
        BurnInReport.objects.for_user(request.user).filter(reservation=reservation).order_by("-created_at")
    ):
        reports.setdefault(report.node_id, report)
    attachments = {a.node_id: a for a in NetworkAttachment.objects.live().filter(reservation=reservation)}
    servers = []
    for alloc in reservation.allocations.select_related("node").order_by("node__name"):
        node = alloc.node
        held = alloc.active and node.reservation_id == reservation.pk
        attachment = attachments.get(node.pk)
        node.live_attachments = [attachment] if attachment else []  # type: ignore[attr-defined]
        # on a tenant network, customers reach the server at its public address
        address, port, known_hosts = networking.customer_endpoint(node) or (
            node.ssh_address,
            node.ssh_port,
            node.known_hosts,
        )
        servers.append(
            {
                "allocation": alloc,
                "node": node,
                "held": held,
                "state": node.state if held else ("ended" if not alloc.active else "waiting"),
                "operation": latest.get(node.pk),
                "burnin": reports.get(node.pk),
                "ready": held and node.state == "active" and bool(node.ssh_address),
                "ssh_command": ssh_command(node.ssh_user, address, int(port or 22)) if address else "",
                "known_hosts": known_hosts,
                "private_address": attachment.private_address if attachment else None,
                "public_address": attachment.public_address if attachment else None,
            }
        )
    return servers


def _detail_context(
    request: HttpRequest, reservation: Reservation, extend_form: ExtendForm | None = None
) -> dict:
    servers = _servers(request, reservation)
    busy = any(s["operation"] and s["operation"].state in OPEN_OPERATION_STATES for s in servers)
    return {
        "reservation": reservation,
        "servers": servers,
        "private_networks": networking.reservation_networks(reservation.pk),
        "polling": busy or reservation.state in _MOVING_STATES,
        "is_open": reservation.state in OPEN_RESERVATION_STATES,
        "extend_form": extend_form or ExtendForm(),
    }


def _page_context(
    request: HttpRequest, reservation: Reservation, extend_form: ExtendForm | None = None
) -> dict:
    """The whole page's: the live part's context, and the header's spend so far (docs/metering.md)."""
    return {
        **_detail_context(request, reservation, extend_form),
        "spend_cents": metering.reservation_spend(reservation),
        "currency": metering.currency(),
    }


@login_required
def reservation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    reservation = get_object_or_404(_scoped(request), pk=pk)
    return render(request, "portal/reservations/detail.html", _page_context(request, reservation))


@login_required
def reservation_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The polled part of the detail page (HTMX swaps it every 2 s while anything moves).

    Asked for without HTMX (a copied link, scripts off) it sends the browser to the whole page."""
    reservation = get_object_or_404(_scoped(request), pk=pk)
    if not request.headers.get("HX-Request"):
        return redirect("portal:reservation", pk=reservation.pk)
    return render(request, "portal/reservations/_live.html", _detail_context(request, reservation))


@login_required
@require_POST
def reservation_extend(request: HttpRequest, pk: int) -> HttpResponse:
    """Move the end of the reservation later. A refusal is shown next to the field, with the date kept."""
    reservation = get_object_or_404(_changeable(request), pk=pk)
    form = ExtendForm(request.POST)
    if form.is_valid():
        try:
            extend_reservation(reservation, form.cleaned_data["ends_at"], actor=Actor.from_request(request))
        except NeocloudError as exc:
            form.add_error("ends_at", sentence(exc))
        else:
            messages.success(
                request,
                f"Reservation {reservation.pk} now ends {form.cleaned_data['ends_at']:%Y-%m-%d %H:%M} UTC.",
            )
            return redirect("portal:reservation", pk=reservation.pk)
    return render(
        request, "portal/reservations/detail.html", _page_context(request, reservation, extend_form=form)
    )


@login_required
@require_POST
def reservation_release(request: HttpRequest, pk: int) -> HttpResponse:
    reservation = get_object_or_404(_changeable(request), pk=pk)
    before = reservation.state
    asked_at = timezone.now()
    try:
        after = release_reservation(reservation, actor=Actor.from_request(request))
    except NeocloudError as exc:
        messages.error(request, f"Not released: {sentence(exc)}")
    else:
        # Sent again (back button, a second tab) or released by someone else meanwhile: this request
        # released nothing, and says so.
        released_now = after.released_at is not None and after.released_at >= asked_at
        if not released_now or before not in OPEN_RESERVATION_STATES:
            messages.info(request, _already_closed(after))
        elif before == ReservationState.SCHEDULED:
            messages.success(
                request, f"Cancelled: reservation {after.pk} will not start and its servers are free again."
            )
        elif after.state == ReservationState.RELEASING:
            messages.success(
                request,
                "Released: the servers are being wiped and returned. You are no longer billed for them.",
            )
        else:
            messages.success(request, "Released: you are no longer billed for its servers.")
    return redirect("portal:reservation", pk=reservation.pk)


def _already_closed(reservation: Reservation) -> str:
    """What releasing a reservation that was no longer open did: nothing, and why."""
    if reservation.state == ReservationState.RELEASING:
        return f"Reservation {reservation.pk} is already being released: nothing more to do."
    if reservation.state == ReservationState.FAILED:
        return f"Reservation {reservation.pk} failed and is closed already: nothing was released."
    return f"Reservation {reservation.pk} was already released: nothing more to do."
