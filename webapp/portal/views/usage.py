"""A customer's usage: the monthly statement of the current organization, with a chart of GPU-hours per day
by server type, and its CSV download. The organization is the org switcher's: nobody sees another's."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from provisioner.errors import InvalidRequest
from provisioner.services import metering
from webapp.portal.access import current_org
from webapp.portal.charts import stacked_bars


def _statement(request: HttpRequest, month: str | None) -> metering.Statement | None:
    org = current_org(request)
    if org is None:
        return None
    if month is None:
        now = timezone.now()
        return metering.statement(org, now.year, now.month)
    try:
        year, number = metering.parse_month(month)
    except InvalidRequest:
        raise Http404("no such month")
    return metering.statement(org, year, number)


@login_required
def usage(request: HttpRequest, month: str | None = None) -> HttpResponse:
    stmt = _statement(request, month)
    context: dict[str, object] = {"statement": stmt}
    if stmt is not None:
        days = stmt.gpu_hours_per_day()
        types = sorted({r.server_type for r in stmt.records})
        context.update(
            months=[f"{y:04d}-{m:02d}" for y, m in metering.statement_months(stmt.organization)],
            by_type=stmt.by_server_type(),
            records=stmt.records,
            chart=stacked_bars(
                [str(d["date"])[8:] for d in days],
                {t: [float(d["gpu_hours"][t]) for d in days] for t in types},  # type: ignore[index]
                title=f"GPU-hours per day in {stmt.label}, by server type",
                unit="GPU-hours",
            ),
            limit=stmt.organization.monthly_spend_limit_cents,
        )
    return render(request, "portal/usage/statement.html", context)


@login_required
def usage_csv(request: HttpRequest, month: str) -> HttpResponse:
    stmt = _statement(request, month)
    if stmt is None:
        raise Http404("you belong to no organization")
    response = HttpResponse(metering.statement_csv(stmt), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{stmt.organization.slug}-{stmt.label}.csv"'
    return response
