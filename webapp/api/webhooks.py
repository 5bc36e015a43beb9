"""Webhooks over HTTP: ``/api/v1/webhooks`` (an organization's endpoints), ``/webhooks/<id>/deliveries``
(the delivery log, newest first) and ``/webhooks/<id>/test`` (send a test event). Scoped as every customer
view (CustomerViewSet): another organization's endpoint is a 404. Changes go through
provisioner.services.webhooks."""

from __future__ import annotations

from typing import Any

from django.db.models import Prefetch, QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from provisioner.lifecycle import Actor
from provisioner.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from provisioner.services import webhooks as webhook_service
from webapp.api.customer import errors
from webapp.api.permissions import acting_organization
from webapp.api.serializers.webhooks import (
    WebhookCreatedSerializer,
    WebhookCreateSerializer,
    WebhookDeliverySerializer,
    WebhookSerializer,
    WebhookUpdateSerializer,
)
from webapp.api.viewsets import CustomerViewSet


def _valid(serializer_class: type, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


@extend_schema_view(
    list=extend_schema(responses={200: WebhookSerializer(many=True), **errors(401)}),
    retrieve=extend_schema(responses={200: WebhookSerializer, **errors(401, 404)}),
    destroy=extend_schema(
        description="Remove the endpoint with its pending deliveries and log.",
        responses={204: None, **errors(401, 404)},
    ),
)
class WebhookViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, CustomerViewSet):
    """Your organizations' webhook endpoints: where events are POSTed, signed with the endpoint's secret."""

    serializer_class = WebhookSerializer
    queryset = WebhookEndpoint.objects.select_related("organization")

    @extend_schema(
        request=WebhookCreateSerializer, responses={201: WebhookCreatedSerializer, **errors(400, 401, 404)}
    )
    def create(self, request: Request) -> Response:
        """Register an endpoint. The answer carries its secret, the only time it is shown."""
        data = _valid(WebhookCreateSerializer, request)
        org = acting_organization(request.user, data.get("organization"))
        endpoint, secret = webhook_service.create_endpoint(
            org,
            data["url"],
            actor=Actor.from_request(request),
            event_types=data.get("event_types"),
            description=data.get("description", ""),
            active=data.get("active", True),
        )
        body = dict(WebhookSerializer(endpoint).data, secret=secret)
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(
        request=WebhookUpdateSerializer, responses={200: WebhookSerializer, **errors(400, 401, 404)}
    )
    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change the URL, types, description or whether it is active. The secret stays."""
        data = _valid(WebhookUpdateSerializer, request)
        endpoint = webhook_service.update_endpoint(
            self.get_object(), actor=Actor.from_request(request), **data
        )
        return Response(WebhookSerializer(endpoint).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        webhook_service.delete_endpoint(self.get_object(), actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "state", OpenApiTypes.STR, enum=WebhookDelivery.State.values, description="only these"
            )
        ],
        responses={200: WebhookDeliverySerializer(many=True), **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def deliveries(self, request: Request, pk: str | None = None) -> Response:
        """The delivery log: each delivery (newest first) with its attempts, status codes, errors and
        latencies."""
        endpoint = self.get_object()
        rows: QuerySet[WebhookDelivery] = (
            WebhookDelivery.objects.filter(endpoint=endpoint)
            .select_related("event")
            .prefetch_related(Prefetch("attempt_log", WebhookAttempt.objects.order_by("id")))
            .order_by("-id")
        )
        state = request.query_params.get("state", "")
        if state:
            if state not in WebhookDelivery.State.values:
                raise ValidationError({"state": [f"one of {', '.join(WebhookDelivery.State.values)}"]})
            rows = rows.filter(state=state)
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer, **errors(400, 401, 404)})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: str | None = None) -> Response:
        """Send a ``webhook.test`` event to the endpoint now; follow it in the delivery log."""
        delivery = webhook_service.send_test(self.get_object(), actor=Actor.from_request(request))
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
