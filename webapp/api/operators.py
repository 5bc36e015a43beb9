"""Operator endpoints under /api/v1/admin/ (staff only): the fleet, node actions, quarantine review and
rolling reimages. Every action goes through provisioner.services, which audits it."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from provisioner import hardware
from provisioner.models import Image, Node, Operation, Rollout
from provisioner.services import nodes as node_service
from provisioner.services import rollouts as rollout_service
from provisioner.services.audit import Actor
from provisioner.states import NodeState, OperationKind, PowerStateChoice
from webapp.api import serializers as s
from webapp.api.customer import errors
from webapp.api.permissions import IsOperator


class NodeFilter(django_filters.FilterSet):
    state = django_filters.ChoiceFilter(choices=NodeState.choices)
    site = django_filters.CharFilter(field_name="rack__site__slug", help_text="site slug")
    server_type = django_filters.CharFilter(field_name="server_type__slug", help_text="server type slug")
    power = django_filters.ChoiceFilter(field_name="power_state", choices=PowerStateChoice.choices)

    class Meta:
        model = Node
        fields = ["state", "site", "server_type", "power"]


class AdminNodeCheckedSerializer(s.AdminNodeDetailSerializer):
    """The node detail with what its drivers' validation finds in its record: why a node is left out of the
    pool reservations draw from (customers see it only as a server not offered)."""

    driver_problems = serializers.SerializerMethodField(
        help_text="per driver interface (power, deploy, burnin), the first problem validation finds in the "
        "node's record for provisioning, naming the field; empty when it passes"
    )

    class Meta(s.AdminNodeDetailSerializer.Meta):
        fields = [*s.AdminNodeDetailSerializer.Meta.fields, "driver_problems"]

    @extend_schema_field(
        inline_serializer(
            "DriverProblem",
            {
                "interface": serializers.CharField(),
                "field": serializers.CharField(),
                "reason": serializers.CharField(),
            },
            many=True,
        )
    )
    def get_driver_problems(self, obj: Node) -> list[dict[str, str]]:
        return [
            {"interface": interface, "field": err.field, "reason": err.reason}
            for interface, err in hardware.pool_problems(obj).items()
        ]


def _op_out(op: Operation) -> dict[str, Any]:
    op = Operation.objects.select_related("node").prefetch_related("steps").get(pk=op.pk)
    return s.OperationSerializer(op, context={"log_after": 0}).data


def _accepted(op: Operation) -> Response:
    return Response(_op_out(op), status=status.HTTP_202_ACCEPTED)


class AdminNodeViewSet(viewsets.ReadOnlyModelViewSet):
    """The fleet. Filters: state, site, server_type, power."""

    permission_classes = [IsOperator]
    queryset = Node.objects.all()
    filterset_class = NodeFilter

    def get_queryset(self) -> QuerySet[Node]:
        return Node.objects.for_user(self.request.user).select_related(
            "server_type", "rack__site", "owner", "image"
        )

    def get_serializer_class(self) -> type:
        return AdminNodeCheckedSerializer if self.action == "retrieve" else s.AdminNodeSerializer

    def _actor(self) -> Actor:
        return Actor.from_request(self.request)

    def _data(self, serializer_class: type) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @extend_schema(
        request=s.MaintenanceSerializer,
        responses={200: s.AdminNodeDetailSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def maintenance(self, request: Request, pk: str | None = None) -> Response:
        """Put the node on operator hold (on=true) or lift the hold (on=false: it is wiped, then pooled).
        when_free=true holds a server that is not free once its customer is done and it is wiped; on=false
        withdraws such a request."""
        node = self.get_object()
        data = self._data(s.MaintenanceSerializer)
        node = node_service.set_maintenance(
            node, data["on"], actor=self._actor(), reason=data.get("reason", ""), when_free=data["when_free"]
        )
        return Response(s.AdminNodeDetailSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(
        request=s.ReimageSerializer, responses={202: s.OperationSerializer, **errors(400, 401, 403, 404, 409)}
    )
    @action(detail=True, methods=["post"])
    def reimage(self, request: Request, pk: str | None = None) -> Response:
        """Reimage one node. A node leased to a customer is refused (409) unless force=true; a node whose
        record fails its drivers' validation (no image to write, no BMC address, ...) is a 400
        (invalid_node_data) naming the node and the field, and nothing changes."""
        node = self.get_object()
        data = self._data(s.ReimageSerializer)
        image = _image(data.get("image"))
        op = node_service.reimage(
            node, actor=self._actor(), image=image, force=data["force"], reason=data.get("reason", "")
        )
        return _accepted(op)

    @extend_schema(
        request=s.PowerSerializer, responses={202: s.OperationSerializer, **errors(400, 401, 403, 404, 409)}
    )
    @action(detail=True, methods=["post"])
    def power(self, request: Request, pk: str | None = None) -> Response:
        """Queue a power action on the node's BMC. Off, reset and pxe on a node leased to a customer are
        refused (409) unless force=true; on is always allowed."""
        node = self.get_object()
        data = self._data(s.PowerSerializer)
        return _accepted(node_service.power(node, data["action"], actor=self._actor(), force=data["force"]))

    @extend_schema(
        request=s.ReasonSerializer, responses={202: s.OperationSerializer, **errors(400, 401, 403, 404, 409)}
    )
    @action(detail=True, methods=["post"], url_path="return-to-pool")
    def return_to_pool(self, request: Request, pk: str | None = None) -> Response:
        """After repair: wipe a quarantined node and return it to the pool."""
        node = self.get_object()
        data = self._data(s.ReasonSerializer)
        node = node_service.return_from_quarantine(node, actor=self._actor(), reason=data["reason"])
        op = (
            Operation.objects.filter(node=node, kind=OperationKind.CLEAN)
            .order_by("-created_at", "-id")
            .first()
        )
        assert op is not None, "return_from_quarantine always queues a clean operation"
        return _accepted(op)

    @extend_schema(
        request=s.KeepInQuarantineSerializer,
        responses={200: s.AdminNodeDetailSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"], url_path="keep-in-quarantine")
    def keep_in_quarantine(self, request: Request, pk: str | None = None) -> Response:
        """Quarantine review: keep the node out of the pool (it stays quarantined); the reason goes in its
        timeline. A node that is not quarantined (e.g. another operator returned it meanwhile) is a 409."""
        node = self.get_object()
        data = self._data(s.KeepInQuarantineSerializer)
        node = node_service.keep_in_quarantine(node, actor=self._actor(), reason=data.get("reason", ""))
        return Response(s.AdminNodeDetailSerializer(self.get_queryset().get(pk=node.pk)).data)

    @extend_schema(request=None, responses={202: s.OperationSerializer, **errors(401, 403, 404, 409)})
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
    serializer_class = s.QuarantinedNodeSerializer
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
    serializer_class = s.RolloutSerializer
    queryset = Rollout.objects.all()

    def get_queryset(self) -> QuerySet[Rollout]:
        return Rollout.objects.select_related("image", "requested_by", "cancelled_by")

    @extend_schema(
        request=s.RolloutCreateSerializer, responses={202: s.RolloutSerializer, **errors(400, 401, 403, 409)}
    )
    def create(self, request: Request) -> Response:
        """Start a rolling reimage over named nodes or a filter. Named nodes whose record fails their drivers'
        validation refuse the whole rollout (400 invalid_node_data, every such node and field in details);
        nodes chosen by a filter are refused one by one when their turn comes, counted as failures."""
        serializer = s.RolloutCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        nodes = _rollout_nodes(data)
        rollout = rollout_service.start_rollout(
            nodes,
            actor=Actor.from_request(request),
            image=_image(data.get("image")),
            max_parallel=data["max_parallel"],
            failure_budget=data["failure_budget"],
            force=data["force"],
            named=bool(data.get("nodes")),
        )
        return Response(self.get_serializer(rollout).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        request=s.RolloutCancelSerializer,
        responses={200: s.RolloutSerializer, **errors(400, 401, 403, 404, 409)},
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        """Start no further node; the reimages already started run to completion, then the rollout turns
        cancelled (state cancelling until then). Cancelling a cancelling or cancelled rollout returns it
        unchanged (200); one that already succeeded or halted is a 409."""
        rollout = self.get_object()
        serializer = s.RolloutCancelSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rollout = rollout_service.cancel_rollout(
            rollout, actor=Actor.from_request(request), reason=serializer.validated_data["reason"]
        )
        return Response(self.get_serializer(rollout).data)


def _rollout_nodes(data: dict[str, Any]) -> list[Node]:
    if data.get("nodes"):
        return _nodes_by_reference(data["nodes"])
    spec = data["filter"]
    # Only available and active servers can be reimaged: a filter never sweeps in a quarantined, held,
    # broken or busy server, which would only count against the failure budget.
    states = list(node_service.REIMAGEABLE_STATES)
    if spec.get("state"):
        if spec["state"] not in NodeState.values:
            raise ValidationError({"filter": {"state": [f"unknown state {spec['state']!r}"]}})
        if spec["state"] not in node_service.REIMAGEABLE_STATES:
            raise ValidationError(
                {
                    "filter": {
                        "state": [f"{spec['state']} servers cannot be reimaged; use available or active"]
                    }
                }
            )
        states = [spec["state"]]
    nodes = Node.objects.filter(state__in=states)
    if spec.get("site"):
        nodes = nodes.filter(rack__site__slug=spec["site"])
    if spec.get("server_type"):
        nodes = nodes.filter(server_type__slug=spec["server_type"])
    found = list(nodes.order_by("name"))
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
