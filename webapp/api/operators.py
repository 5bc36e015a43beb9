"""Operator endpoints under /api/v1/admin/ (staff only): the fleet, node actions, quarantine review,
rolling reimages and customers' reservations. Every action goes through provisioner.services, which audits
it as the operator ("operator <name>"): what an operator does to a customer's servers or reservation, the
customer reads as an operator's doing in their audit trail."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from provisioner.filtersets import NodeFilterSet
from provisioner.lifecycle import Actor
from provisioner.models import Image, Node, Operation, Reservation, Rollout
from provisioner.services import network_drift, warm_pool
from provisioner.services import nodes as node_service
from provisioner.services import reservations as reservation_service
from provisioner.services import rollouts as rollout_service
from provisioner.states import NodeState, OperationKind
from webapp.api.customer import errors
from webapp.api.metering import SpendInLists
from webapp.api.permissions import IsOperator
from webapp.api.serializers.common import OperationSerializer
from webapp.api.serializers.customer import ReservationSerializer, reservation_data
from webapp.api.serializers.operators import (
    AdminNodeCheckedSerializer,
    AdminNodeDetailSerializer,
    AdminNodeSerializer,
    KeepInQuarantineSerializer,
    MaintenanceSerializer,
    NetworkCheckSerializer,
    OperatorReleaseSerializer,
    PowerSerializer,
    QuarantinedNodeSerializer,
    ReasonSerializer,
    ReimageSerializer,
    WarmPoolSerializer,
    WarmPoolUpdateSerializer,
)
from webapp.api.serializers.rollouts import (
    RolloutCancelSerializer,
    RolloutCreateSerializer,
    RolloutSerializer,
)


def _op_out(op: Operation) -> dict[str, Any]:
    op = Operation.objects.select_related("node").prefetch_related("steps").get(pk=op.pk)
    return OperationSerializer(op, context={"log_after": 0}).data


def _accepted(op: Operation) -> Response:
    return Response(_op_out(op), status=status.HTTP_202_ACCEPTED)


class AdminNodeViewSet(viewsets.ReadOnlyModelViewSet):
    """The fleet. Filters: state, site, server_type, power, q (part of the name)."""

    permission_classes = [IsOperator]
    queryset = Node.objects.all()
    filterset_class = NodeFilterSet  # the portal's fleet page and rollout filters use it too

    def get_queryset(self) -> QuerySet[Node]:
        return Node.objects.for_user(self.request.user).select_related(
            "server_type", "rack__site", "owner", "image"
        )

    def get_serializer_class(self) -> type:
        return AdminNodeCheckedSerializer if self.action == "retrieve" else AdminNodeSerializer

    def _actor(self) -> Actor:
        return Actor.operator_from_request(self.request)

    def _data(self, serializer_class: type) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @extend_schema(
        request=MaintenanceSerializer,
        responses={200: AdminNodeDetailSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, pk: str | None = None) -> Response:
        """Put the node on operator hold (on=true) or lift the hold (on=false: it is wiped, then pooled).
        when_free=true holds a server that is not free once its customer is done and it is wiped; on=false
        withdraws such a request."""
        node = self.get_object()
        data = self._data(MaintenanceSerializer)
        node = node_service.set_maintenance(
            node, data["on"], actor=self._actor(), reason=data.get("reason", ""), when_free=data["when_free"]
        )
        return Response(AdminNodeDetailSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(
        request=ReimageSerializer, responses={202: OperationSerializer, **errors(400, 401, 403, 404, 409)}
    )
    @action(detail=True, methods=["post"])
    def reimage(self, request: Request, pk: str | None = None) -> Response:
        """Reimage one node. A node leased to a customer is refused (409) unless force=true; a node whose
        record fails its drivers' validation (no image to write, no BMC address, ...) is a 400
        (invalid_node_data) naming the node and the field, and nothing changes."""
        node = self.get_object()
        data = self._data(ReimageSerializer)
        image = _image(data.get("image"))
        op = node_service.reimage(
            node, actor=self._actor(), image=image, force=data["force"], reason=data.get("reason", "")
        )
        return _accepted(op)

    @extend_schema(
        request=PowerSerializer, responses={202: OperationSerializer, **errors(400, 401, 403, 404, 409)}
    )
    @action(detail=True, methods=["post"])
    def power(self, request: Request, pk: str | None = None) -> Response:
        """Queue a power action on the node's BMC. Off, reset and pxe on a node leased to a customer are
        refused (409) unless force=true; on is always allowed."""
        node = self.get_object()
        data = self._data(PowerSerializer)
        return _accepted(node_service.power(node, data["action"], actor=self._actor(), force=data["force"]))

    @extend_schema(
        request=ReasonSerializer, responses={202: OperationSerializer, **errors(400, 401, 403, 404, 409)}
    )
    @action(detail=True, methods=["post"], url_path="return-to-pool")
    def return_to_pool(self, request: Request, pk: str | None = None) -> Response:
        """After repair: wipe a quarantined node and return it to the pool."""
        node = self.get_object()
        data = self._data(ReasonSerializer)
        node = node_service.return_from_quarantine(node, actor=self._actor(), reason=data["reason"])
        op = (
            Operation.objects.filter(node=node, kind=OperationKind.CLEAN)
            .order_by("-created_at", "-id")
            .first()
        )
        assert op is not None, "return_from_quarantine always queues a clean operation"
        return _accepted(op)

    @extend_schema(
        request=KeepInQuarantineSerializer,
        responses={200: AdminNodeDetailSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"], url_path="keep-in-quarantine")
    def keep_in_quarantine(self, request: Request, pk: str | None = None) -> Response:
        """Quarantine review: keep the node out of the pool (it stays quarantined); the reason goes in its
        timeline. A node that is not quarantined (e.g. another operator returned it meanwhile) is a 409."""
        node = self.get_object()
        data = self._data(KeepInQuarantineSerializer)
        node = node_service.keep_in_quarantine(node, actor=self._actor(), reason=data.get("reason", ""))
        return Response(AdminNodeDetailSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(
        request=NetworkCheckSerializer,
        responses={200: AdminNodeDetailSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"], url_path="network-check")
    def network_check(self, request: Request, pk: str | None = None) -> Response:
        """Read the node's switch port now and record its VLAN and drift; with repair=true move a drifting
        port back to the VLAN the node's state requires (audited). The answer is the node, with its
        ``network``. A node whose site's network is not managed, or that an operation is working on, is a
        409."""
        node = self.get_object()
        data = self._data(NetworkCheckSerializer)
        network_drift.check_node(node, repair=data["repair"], actor=self._actor())
        return Response(AdminNodeDetailSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(request=None, responses={202: OperationSerializer, **errors(401, 403, 404, 409)})
    @action(detail=True, methods=["post"], url_path="rerun-burnin")
    def rerun_burnin(self, request: Request, pk: str | None = None) -> Response:
        """Run burn-in again on a quarantined node (it stays quarantined; read the new report). A node a
        reservation still holds (quarantined while leased: its customer's server) is a 409."""
        return _accepted(node_service.rerun_burnin(self.get_object(), actor=self._actor()))


def _image(slug: str | None) -> Image | None:
    if not slug:
        return None
    image = Image.objects.filter(slug=slug).first()
    if image is None:
        raise ValidationError({"image": [f"no image {slug!r}"]})
    return image


class QuarantineViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Quarantined nodes awaiting review, with the burn-in that put them there."""

    permission_classes = [IsOperator]
    serializer_class = QuarantinedNodeSerializer
    queryset = Node.objects.all()

    def get_queryset(self) -> QuerySet[Node]:
        return (
            Node.objects.for_user(self.request.user)
            .filter(state=NodeState.QUARANTINED)
            .select_related("server_type", "rack__site", "owner", "image")
        )


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Rolling bulk reimages: at most max_parallel at once, halted once failures exceed failure_budget."""

    permission_classes = [IsOperator]
    serializer_class = RolloutSerializer
    queryset = Rollout.objects.all()

    def get_queryset(self) -> QuerySet[Rollout]:
        return Rollout.objects.select_related("image", "requested_by", "cancelled_by")

    @extend_schema(
        request=RolloutCreateSerializer, responses={202: RolloutSerializer, **errors(400, 401, 403, 409)}
    )
    def create(self, request: Request) -> Response:
        """Start a rolling reimage over named nodes or a filter. Named nodes whose record fails their drivers'
        validation refuse the whole rollout (400 invalid_node_data, every such node and field in details);
        nodes chosen by a filter are refused one by one when their turn comes, counted as failures."""
        serializer = RolloutCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        nodes = _rollout_nodes(data)
        rollout = rollout_service.start_rollout(
            nodes,
            actor=Actor.operator_from_request(request),
            image=_image(data.get("image")),
            max_parallel=data["max_parallel"],
            failure_budget=data["failure_budget"],
            force=data["force"],
            named=bool(data.get("nodes")),
        )
        return Response(self.get_serializer(rollout).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=RolloutCancelSerializer,
        responses={200: RolloutSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Start no further node; the reimages already started run to completion, then the rollout turns
        cancelled (state cancelling until then). Cancelling a cancelling or cancelled rollout returns it
        unchanged (200); one that already succeeded or halted is a 409."""
        rollout = self.get_object()
        serializer = RolloutCancelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rollout = rollout_service.cancel_rollout(
            rollout, actor=Actor.operator_from_request(request), reason=serializer.validated_data["reason"]
        )
        return Response(self.get_serializer(rollout).data)


class AdminReservationFilter(django_filters.FilterSet):
    organization = django_filters.CharFilter(field_name="organization__slug", help_text="organization slug")

    class Meta:
        model = Reservation
        fields = ["state", "organization"]


class AdminReservationViewSet(
    SpendInLists, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Every organization's reservations. An operator releases a customer's reservation here, not through
    the customer endpoints (which act only within the caller's own organizations, for staff too)."""

    permission_classes = [IsOperator]
    serializer_class = ReservationSerializer
    queryset = Reservation.objects.select_related("organization", "server_type", "image").prefetch_related(
        "ssh_keys", "nodes"
    )
    filterset_class = AdminReservationFilter

    @extend_schema(
        request=OperatorReleaseSerializer,
        responses={202: ReservationSerializer, **errors(400, 401, 403, 404)},
    )
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Release a customer's reservation: its servers are wiped and return to the pool. The customer
        reads "released by operator <name>: <reason>" as its status and in their audit trail. Idempotent: a
        reservation that is no longer open is returned unchanged."""
        reservation = self.get_object()
        serializer = OperatorReleaseSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        actor = Actor.operator_from_request(request)
        released = reservation_service.release_reservation(
            reservation, actor=actor, reason=f"released by {actor}: {serializer.validated_data['reason']}"
        )
        return Response(reservation_data(released), status=status.HTTP_202_ACCEPTED)


def _rollout_nodes(data: dict[str, Any]) -> list[Node]:
    if data.get("nodes"):
        return _nodes_by_reference(data["nodes"])
    spec = data["filter"]
    # Only available and active servers can be reimaged: a filter never sweeps in a quarantined, held,
    # broken or busy server, which would only count against the failure budget.
    matching = NodeFilterSet(spec, queryset=Node.objects.filter(state__in=node_service.REIMAGEABLE_STATES))
    if not matching.is_valid():
        raise ValidationError(
            {
                "filter": {
                    name: [f"unknown {name.replace('_', ' ')} {spec[name]!r}"] for name in matching.errors
                }
            }
        )
    states = list(node_service.REIMAGEABLE_STATES)
    if spec.get("state"):
        if spec["state"] not in node_service.REIMAGEABLE_STATES:
            raise ValidationError(
                {
                    "filter": {
                        "state": [f"{spec['state']} servers cannot be reimaged; use available or active"]
                    }
                }
            )
        states = [spec["state"]]
    found = list(matching.qs.order_by("name"))
    if not found:
        raise ValidationError({"filter": [f"no {' or '.join(states)} node matches this filter"]})
    return found


def _nodes_by_reference(refs: list[int | str]) -> list[Node]:
    """The nodes ``refs`` name, in order: a number is a node id, a string a node name (NetBox allows names
    like "1234"; they never stand for an id). Raises ValidationError naming every reference that matches
    nothing."""
    ids = [r for r in refs if isinstance(r, int)]
    names = [r for r in refs if isinstance(r, str)]
    by_id = {n.pk: n for n in Node.objects.filter(pk__in=ids)}
    by_name = {n.name: n for n in Node.objects.filter(name__in=names)}
    # a client that sent ids as strings (what this endpoint once accepted) is told how to send them
    numeric = [int(r) for r in names if r not in by_name and r.isdecimal() and len(r) < 19]
    named_by_id = dict(Node.objects.filter(pk__in=numeric).values_list("pk", "name")) if numeric else {}
    problems = []
    for ref in refs:
        if isinstance(ref, int):
            if ref not in by_id:
                problems.append(f"no node with id {ref}")
        elif ref not in by_name:
            hint = ""
            if ref.isdecimal() and len(ref) < 19 and int(ref) in named_by_id:
                hint = (
                    f" (node {named_by_id[int(ref)]} has id {int(ref)}: to mean it by its id, "
                    f"send it as a number: {int(ref)})"
                )
            problems.append(f"no node named {ref!r}{hint}")
    if problems:
        raise ValidationError({"nodes": problems})
    return [by_id[r] if isinstance(r, int) else by_name[r] for r in refs]


class WarmPoolViewSet(viewsets.ViewSet):
    """Warm pools per server type: servers kept deployed with an image, burned in and powered on, handed to
    a reservation of that image in about a minute. Setting a size lets the scheduler fill or shrink it."""

    permission_classes = [IsOperator]
    lookup_field = "server_type"
    lookup_value_regex = "[^/]+"

    @extend_schema(responses={200: WarmPoolSerializer(many=True), **errors(401, 403)})
    def list(self, request: Request) -> Response:
        return Response(WarmPoolSerializer(warm_pool.pools(), many=True).data)

    @extend_schema(
        request=WarmPoolUpdateSerializer, responses={200: WarmPoolSerializer, **errors(400, 401, 403, 404)}
    )
    def partial_update(self, request: Request, server_type: str | None = None) -> Response:
        from django.shortcuts import get_object_or_404

        from provisioner.models import ServerType

        st = get_object_or_404(ServerType, slug=server_type)
        body = WarmPoolUpdateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        image = None
        if body.validated_data.get("image"):
            image = Image.objects.filter(slug=body.validated_data["image"]).first()
            if image is None:
                raise ValidationError({"image": [f"no image {body.validated_data['image']!r}"]})
        status_ = warm_pool.set_pool(
            st, body.validated_data["size"], image, actor=Actor.operator_from_request(request)
        )
        return Response(WarmPoolSerializer(status_).data)
