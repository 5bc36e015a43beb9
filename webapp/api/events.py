"""The event stream over HTTP: ``GET /api/v1/events?after=<id>&limit=`` (a customer: their organizations'
events) and ``GET /api/v1/admin/events`` (operators: every event, fleet-only ones included).

A consumer keeps the last ``id`` it processed and asks for what came after it; ``next_after`` is the
cursor to send next (the last id of the page, or ``after`` itself when nothing new came). Ids grow in the
order events become readable, so paging by them neither skips nor repeats one (provisioner.events).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from provisioner import events
from provisioner.models import Event
from webapp.api.permissions import IsOperator
from webapp.api.viewsets import CustomerViewSet

_BIGGEST_ID = 2**63 - 1  # a bigint column: larger numbers would reach SQL as an error


class EventSerializer(serializers.ModelSerializer):
    id = serializers.IntegerField(
        source="sequence", read_only=True, help_text="the cursor: send it as ?after= to read what follows"
    )
    type = serializers.CharField(read_only=True, help_text="what happened, e.g. node.transition")
    version = serializers.IntegerField(read_only=True, help_text="the payload's schema version for its type")
    organization: serializers.SlugRelatedField = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True, help_text="null: a fleet event (operators only)"
    )
    payload = serializers.JSONField(read_only=True, help_text="fields of this type and version")

    class Meta:
        model = Event
        fields = ["id", "type", "version", "organization", "created_at", "payload"]


def _number(request: Request, name: str) -> int | None:
    """The query parameter as a whole number (None when absent), at most the largest bigint: larger
    ones are taken as that, as the other lists clamp theirs, so none reaches SQL as an overflow."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return None
    try:
        return min(int(raw), _BIGGEST_ID)
    except ValueError:
        raise ValidationError({name: [f"must be a whole number, not {raw[:40]!r}"]}) from None


class EventCursorPagination(BasePagination):
    """Pages of events after a cursor: ``after`` (an event id; 0 or none: from the start) and ``limit``
    (default 100; above 500 a page of 500; zero or negative: the default, as the other lists do). A cursor
    that is no number or negative is refused (400), never read as "from the start", which would deliver
    everything again."""

    default_limit = 100
    max_limit = 500

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any]:
        after = _number(request, "after") or 0
        if after < 0:
            raise ValidationError({"after": ["must be 0 or the id of an event read before"]})
        try:
            limit = _number(request, "limit") or self.default_limit
        except ValidationError:
            limit = self.default_limit  # DRF's rule for a limit that is no number
        limit = min(limit if limit > 0 else self.default_limit, self.max_limit)
        # numbered events only (an unnumbered one has no sequence, which is never > after), in their order
        rows = list(queryset.filter(sequence__gt=after).order_by("sequence")[: limit + 1])
        self.has_more = len(rows) > limit
        rows = rows[:limit]
        self.next_after = rows[-1].sequence if rows else after
        return rows

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next_after": self.next_after, "has_more": self.has_more})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results", "next_after", "has_more"],
            "properties": {
                "results": schema,
                "next_after": {
                    "type": "integer",
                    "description": "the cursor for the next request: the last id here, or ``after`` if none",
                },
                "has_more": {"type": "boolean", "description": "more events follow at once"},
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "the id of the last event read: only later ones are returned (0: from the start)",
                "schema": {"type": "integer", "minimum": 0},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"events per page (default {self.default_limit}, at most {self.max_limit})",
                "schema": {"type": "integer", "minimum": 1},
            },
        ]


TYPE_PARAMETER = OpenApiParameter(
    "type",
    OpenApiTypes.STR,
    description="only these types, comma-separated: " + ", ".join(value for value, _ in Event.Type.choices),
)


class _EventStream(mixins.ListModelMixin, viewsets.GenericViewSet):
    """What both audiences share: the numbering before each read, the type filter, the page shape."""

    serializer_class = EventSerializer
    pagination_class = EventCursorPagination
    filter_backends = []

    def stream(self, queryset: QuerySet[Event]) -> QuerySet[Event]:
        raw = self.request.query_params.get("type", "")
        wanted = {t.strip() for t in raw.split(",") if t.strip()}
        unknown = sorted(wanted - set(Event.Type.values))
        if unknown:
            raise ValidationError(
                {
                    "type": [
                        f"unknown event type(s): {', '.join(unknown)}; known: {', '.join(Event.Type.values)}"
                    ]
                }
            )
        if wanted:
            queryset = queryset.filter(type__in=wanted)
        return queryset.select_related("organization")

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        events.sequence_committed()
        return super().list(request, *args, **kwargs)


@extend_schema_view(list=extend_schema(parameters=[TYPE_PARAMETER]))
class EventViewSet(_EventStream, CustomerViewSet):
    """Your organizations' events, oldest first, by cursor."""

    queryset = Event.objects.all()

    def get_queryset(self) -> QuerySet[Event]:
        return self.stream(super().get_queryset())


@extend_schema_view(
    list=extend_schema(
        parameters=[
            TYPE_PARAMETER,
            OpenApiParameter(
                "organization",
                OpenApiTypes.STR,
                description="one organization's events (its slug); 'none': fleet events only",
            ),
        ]
    )
)
class AdminEventViewSet(_EventStream):
    """Every event, of every organization and of the fleet, oldest first, by cursor."""

    permission_classes = [IsOperator]
    queryset = Event.objects.all()

    def get_queryset(self) -> QuerySet[Event]:
        queryset = Event.objects.all()
        org = self.request.query_params.get("organization", "")
        if org == "none":
            queryset = queryset.filter(organization__isnull=True)
        elif org:
            queryset = queryset.filter(organization__slug=org)
        return self.stream(queryset)
