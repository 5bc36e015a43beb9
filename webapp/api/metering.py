"""Metering endpoints: an organization's monthly statements (JSON and CSV), nested under
/api/v1/organizations/<id>/ so that the organization's scope decides who reads them, and the price list
operators set under /api/v1/admin/prices."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from provisioner import networking, usage
from provisioner.errors import InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import ServerType, ServerTypePrice
from provisioner.services import metering
from webapp.api.permissions import IsOperator
from webapp.api.serializers.common import ErrorSerializer
from webapp.api.serializers.metering import (
    PriceCreateSerializer,
    PriceSerializer,
    StatementSerializer,
    StatementSummarySerializer,
)

_MONTH = r"(?P<month>[0-9]{4}-[0-9]{2})"


def errors(*codes: int) -> dict[int, Any]:
    """Schema entries for error responses (the one error shape; as webapp.api.customer's)."""
    return {code: OpenApiResponse(ErrorSerializer, description="error") for code in codes}


def _iso(value: Any) -> str:
    return value.isoformat().replace("+00:00", "Z")


def statement_summary(stmt: metering.Statement) -> dict[str, Any]:
    return month_summary(stmt.year, stmt.month, stmt.total_cents, now=stmt.as_of)


def month_summary(year: int, month: int, total_cents: int, *, now: Any) -> dict[str, Any]:
    """What the statement list says of one month (the statement's own figures, without its records)."""
    start, end = usage.month_bounds(year, month)
    as_of = max(start, min(end, usage.whole_second(now)))
    return {
        "month": f"{year:04d}-{month:02d}",
        "start": _iso(start),
        "end": _iso(end),
        "as_of": _iso(as_of),
        "complete": as_of >= end,
        "currency": metering.currency(),
        "total_cents": total_cents,
    }


def statement_data(stmt: metering.Statement) -> dict[str, Any]:
    """A statement as the API gives it (its CSV has the same records and total)."""
    return {
        **statement_summary(stmt),
        "organization": stmt.organization.slug,
        "by_server_type": stmt.by_server_type(),
        "gpu_hours_per_day": stmt.gpu_hours_per_day(),
        "records": [metering.record_data(r) for r in stmt.records],
    }


class SpendInLists:
    """A list of reservations reads every row's ``spend`` at once (metering.spend_by_reservation, two
    queries) instead of two queries per row, and every row's private networks in one more (networking);
    ReservationSerializer takes them from the context."""

    filter_queryset: Any
    get_queryset: Any
    paginate_queryset: Any
    get_paginated_response: Any
    get_serializer_class: Any
    get_serializer_context: Any

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        rows = list(queryset) if page is None else page
        context = {
            **self.get_serializer_context(),
            "spend": metering.spend_by_reservation(r.pk for r in rows),
            "private_networks": networking.networks_by_reservation(r.pk for r in rows),
        }
        data = self.get_serializer_class()(rows, many=True, context=context).data
        return Response(data) if page is None else self.get_paginated_response(data)


class StatementActions:
    """The statement actions of OrganizationViewSet (its ``get_object`` scopes them: another organization's
    statement is a 404, as the organization itself is)."""

    get_object: Any

    def _statement(self, month: str) -> metering.Statement:
        org = self.get_object()
        try:
            year, number = metering.parse_month(month)
        except InvalidRequest as exc:
            raise NotFound(str(exc))
        return metering.statement(org, year, number)

    @extend_schema(responses={200: StatementSummarySerializer(many=True), **errors(401, 404)})
    @action(detail=True, methods=["get"], url_path="statements", pagination_class=None)
    def statements(self, request: Request, pk: str | None = None) -> Response:
        """The organization's monthly statements, newest first (this month's so far)."""
        org = self.get_object()
        now = timezone.now()
        totals = metering.monthly_totals(org, now=now)
        return Response(
            [
                month_summary(year, month, totals.get((year, month), 0), now=now)
                for year, month in metering.statement_months(org, now=now)
            ]
        )

    @extend_schema(responses={200: StatementSerializer, **errors(401, 404)})
    @action(detail=True, methods=["get"], url_path=f"statements/{_MONTH}")
    def statement(self, request: Request, pk: str | None = None, month: str = "") -> Response:
        """One month's statement (UTC): every usage record, totals by server type, GPU-hours per day."""
        return Response(statement_data(self._statement(month)))

    @extend_schema(
        responses={
            (200, "text/csv"): OpenApiResponse(
                OpenApiTypes.STR, description="one row per usage record, then the total"
            ),
            **errors(401, 404),
        }
    )
    @action(detail=True, methods=["get"], url_path=f"statements/{_MONTH}/csv")
    def statement_csv(self, request: Request, pk: str | None = None, month: str = "") -> HttpResponse:
        """The month's statement as CSV: the records of the JSON statement, and a last row with the total."""
        stmt = self._statement(month)
        response = HttpResponse(metering.statement_csv(stmt), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{stmt.organization.slug}-{stmt.label}.csv"'
        return response


class AdminPriceViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Prices per server type and hour. A new price applies from its ``effective_from`` (now by default, never
    in the past); prices are never edited, so time already used keeps the price it was used at."""

    permission_classes = [IsOperator]
    serializer_class = PriceSerializer
    queryset = ServerTypePrice.objects.select_related("server_type").order_by(
        "server_type__slug", "effective_from", "id"
    )
    filterset_fields = ["server_type__slug"]

    @extend_schema(request=PriceCreateSerializer, responses={201: PriceSerializer, **errors(400, 401, 403)})
    def create(self, request: Request) -> Response:
        serializer = PriceCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            server_type = ServerType.objects.get(slug=data["server_type"])
        except ServerType.DoesNotExist:
            raise ValidationError({"server_type": [f"no server type {data['server_type']!r}"]})
        price = metering.set_price(
            server_type,
            data["cents_per_hour"],
            actor=Actor.operator_from_request(request),
            effective_from=data.get("effective_from"),
            currency_code=data.get("currency"),
        )
        return Response(PriceSerializer(price).data, status=status.HTTP_201_CREATED)
