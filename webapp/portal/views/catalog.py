"""The catalog of server types with live availability, and the reserve form."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from provisioner.errors import InvalidRequest, NeocloudError
from provisioner.lifecycle import Actor
from provisioner.models import Allocation, Organization, Reservation, ServerType
from provisioner.services import tenancy, warm_pool
from provisioner.services.reservations import availability, book_servers
from webapp.portal.access import current_org
from webapp.portal.forms import ReserveForm, WindowForm
from webapp.portal.wording import reservation_refusal, sentence


def _catalog_rows(form: WindowForm) -> list[dict]:
    window = form.cleaned_data if form.is_valid() else {}
    start, end = window.get("starts_at"), window.get("ends_at")
    rows = []
    for st in ServerType.objects.annotate(total=Count("nodes")).order_by("slug"):
        row = {
            "type": st,
            "total": st.total,
            "now": availability(st),
            "ready_minutes": max(1, round(warm_pool.expected_ready_seconds(st) / 60)),
        }
        if start or end:
            row["window"] = availability(st, start, end)
        rows.append(row)
    return rows


@login_required
def catalog(request: HttpRequest) -> HttpResponse:
    form = WindowForm(request.GET or None)
    context = {
        "rows": _catalog_rows(form),
        "form": form,
        "has_window": bool(request.GET.get("starts_at") or request.GET.get("ends_at")),
    }
    if request.headers.get("HX-Request"):
        return render(request, "portal/catalog/_availability.html", context)
    return render(request, "portal/catalog/catalog.html", context)


class _KeyRefused(Exception):
    """The pasted key was refused (the reservation is then not attempted)."""

    def __init__(self, error: InvalidRequest) -> None:
        super().__init__(str(error))
        self.error = error


class _Replayed(Exception):
    """book_servers found the reservation this form's token already made (the pasted key is not saved)."""

    def __init__(self, reservation: Reservation) -> None:
        super().__init__(reservation.pk)
        self.reservation = reservation


def _earlier(org: Organization, form: ReserveForm) -> Reservation | None:
    """The reservation an earlier sending of this form (same token) made, if any."""
    key = form.idempotency_key
    return Reservation.objects.filter(organization=org, idempotency_key=key).first() if key else None


def _asks_for(existing: Reservation, form: ReserveForm) -> bool:
    """Whether the form asks for what ``existing`` booked: sent again as it was, not changed and resent
    (the back button restores the spent token with the form)."""
    data = form.cleaned_data
    keys = {k.public_key for k in data["ssh_keys"]}
    if data["new_key"]:
        keys.add(form.parsed_key.line)
    start = data["starts_at"]
    return (
        existing.server_type_id == data["server_type"].pk
        and existing.count == data["count"]
        and existing.image_id == data["image"].pk
        and existing.name == data["name"]
        and set(existing.authorized_keys) == keys
        and (start is None or existing.starts_at == start)
        and existing.ends_at == data["ends_at"]
    )


def _replayed(request: HttpRequest, form: ReserveForm, existing: Reservation) -> HttpResponse | None:
    """Answer a form sent again with a spent token: the reservation it made, or (when the form was changed)
    an error on the form with a fresh token. None: the form is rendered again."""
    if _asks_for(existing, form):
        messages.info(
            request,
            f"Reservation {existing.pk} was already made from this form: it was sent twice, "
            "and nothing more was booked.",
        )
        return redirect("portal:reservation", pk=existing.pk)
    form.add_error(
        None,
        f"This form was already used to make reservation {existing.pk}, so nothing was booked. "
        "Check it and send it again to make a new reservation.",
    )
    form.renew_token()
    return None


@login_required
def reserve(request: HttpRequest) -> HttpResponse:
    org = current_org(request)
    initial = {}
    if request.GET.get("type"):
        initial["server_type"] = ServerType.objects.filter(slug=request.GET["type"]).first()
    form = ReserveForm(request.POST or None, organization=org, initial=initial)
    if request.method == "POST" and org is None:
        form.add_error(
            None, "You are not a member of any organization: create one or ask an owner to invite you."
        )
    elif request.method == "POST" and org is not None and form.is_valid():
        data = form.cleaned_data
        actor = Actor.from_request(request)
        earlier = _earlier(org, form)
        if earlier is not None:
            return _replayed(request, form, earlier) or _render_reserve(request, form, org)
        try:
            # One transaction: a pasted key is saved only if the reservation is made.
            with transaction.atomic():
                keys = list(data["ssh_keys"])
                if data["new_key"]:
                    try:
                        keys.append(
                            tenancy.create_ssh_key(org, data["new_key_name"], data["new_key"], actor=actor)
                        )
                    except InvalidRequest as exc:
                        raise _KeyRefused(exc) from exc
                booking = book_servers(
                    org,
                    data["server_type"],
                    data["count"],
                    image=data["image"],
                    actor=actor,
                    starts_at=data["starts_at"],
                    ends_at=data["ends_at"],
                    ssh_keys=keys,
                    name=data["name"],
                    idempotency_key=form.idempotency_key,
                )
                if booking.replay:  # the same form, sent at the same time, booked first
                    raise _Replayed(booking.reservation)
                reservation = booking.reservation
        except _Replayed as replayed:
            response = _replayed(request, form, replayed.reservation)
            if response is not None:
                return response
        except _KeyRefused as refused:
            earlier = _earlier(org, form)  # the same form, sent at the same time, saved the key first
            if earlier is not None:
                return _replayed(request, form, earlier) or _render_reserve(request, form, org)
            form.add_error("new_key", sentence(refused.error))
        except NeocloudError as exc:
            form.add_error(None, reservation_refusal(exc))
        else:
            messages.success(
                request,
                f"Reservation {reservation.pk} made: {reservation.count}x {reservation.server_type.name}.",
            )
            return redirect("portal:reservation", pk=reservation.pk)
    return _render_reserve(request, form, org)


def _render_reserve(request: HttpRequest, form: ReserveForm, org: Organization | None) -> HttpResponse:
    quota = None
    if org is not None:
        held = (
            Allocation.objects.filter(active=True, reservation__organization=org)
            .values("node_id")
            .distinct()
            .count()
        )
        quota = {"held": held, "limit": org.server_quota}
    types = list(ServerType.objects.all())
    live = {st.pk: availability(st) for st in types}
    return render(
        request, "portal/catalog/reserve.html", {"form": form, "org": org, "quota": quota, "live": live}
    )
