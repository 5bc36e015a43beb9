"""Customer endpoints under /api/v1/: catalog, SSH keys, reservations, servers, operations, organizations,
tokens and the audit trail. Views are thin: CustomerViewSet scopes every query to the caller's organizations
(webapp/api/viewsets.py), and changes go through provisioner.services."""

from __future__ import annotations

import functools
from typing import Any

import django_filters
from django.contrib.auth.models import User
from django.db.models import Prefetch, Q, QuerySet
from django.http import Http404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from provisioner import prepared
from provisioner.lifecycle import Actor
from provisioner.models import (
    AuditEvent,
    Image,
    NetworkAttachment,
    Node,
    Operation,
    Organization,
    Reservation,
    ServerType,
    SSHKey,
)
from provisioner.prepared import PreparedQuery, columns, instances
from provisioner.services import reservations as reservation_service
from provisioner.services import tenancy
from webapp.api.metering import SpendInLists, StatementActions
from webapp.api.permissions import OwnerOnlyActions, acting_organization, tokens_for
from webapp.api.schema import GENERIC_ERROR_DESCRIPTION
from webapp.api.serializers.common import (
    AuditEventSerializer,
    ErrorSerializer,
    OperationSerializer,
    OperationSummarySerializer,
)
from webapp.api.serializers.customer import (
    ApiTokenCreateSerializer,
    ApiTokenIssuedSerializer,
    ApiTokenSerializer,
    AvailabilityQuerySerializer,
    ExtendSerializer,
    ImageSerializer,
    MemberAddSerializer,
    MemberSerializer,
    OrganizationCreateSerializer,
    OrganizationSerializer,
    ReservationCreateSerializer,
    ReservationSerializer,
    ServerSerializer,
    ServerTypeSerializer,
    SSHKeyCreateSerializer,
    SSHKeySerializer,
    reservation_data,
)
from webapp.api.viewsets import CustomerViewSet


def errors(*codes: int) -> dict[int, Any]:
    """Schema entries for error responses: they all share the one error shape."""
    return {code: OpenApiResponse(ErrorSerializer, description=GENERIC_ERROR_DESCRIPTION) for code in codes}


class ServerTypeViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, CustomerViewSet):
    """Hardware profiles you can reserve, with how many are free."""

    unscoped_because = "the catalog: server types belong to no organization"
    serializer_class = ServerTypeSerializer
    queryset = ServerType.objects.all()
    lookup_field = "slug"
    lookup_value_regex = "[^/]+"

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        query = AvailabilityQuerySerializer(data=self.request.query_params)
        query.is_valid(raise_exception=True)
        start = query.validated_data.get("starts_at")
        end = query.validated_data.get("ends_at")
        if start is None and end is not None:
            start = timezone.now()
            if end <= start:
                raise ValidationError({"ends_at": ["must be after starts_at (default: now)"]})
        context["availability"] = {
            st.pk: reservation_service.availability(st, start, end) for st in ServerType.objects.all()
        }
        return context

    @extend_schema(
        parameters=[
            OpenApiParameter("starts_at", OpenApiTypes.DATETIME, description="window start (default now)"),
            OpenApiParameter("ends_at", OpenApiTypes.DATETIME, description="window end (default open-ended)"),
        ],
        responses={200: ServerTypeSerializer(many=True), **errors(400, 401)},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)


class ImageViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, CustomerViewSet):
    """OS images servers can be deployed with."""

    unscoped_because = "images belong to no organization: customers see the public ones"
    serializer_class = ImageSerializer
    queryset = Image.objects.all()
    lookup_field = "slug"
    lookup_value_regex = "[^/]+"

    def get_queryset(self) -> QuerySet[Image]:
        images = super().get_queryset()
        return images if self.request.user.is_staff else images.filter(public=True)


@extend_schema_view(
    destroy=extend_schema(
        description="Delete a key. Open reservations no longer install it on servers provisioned from now on "
        "(spares included); servers already running keep it until released. Refused (400) while the key is "
        "the only one of an open reservation.",
        responses={204: None, **errors(400, 401, 404)},
    )
)
class SSHKeyViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    CustomerViewSet,
):
    """Your organizations' SSH public keys; reservations put them on the servers."""

    serializer_class = SSHKeySerializer
    queryset = SSHKey.objects.select_related("organization")

    @extend_schema(request=SSHKeyCreateSerializer, responses={201: SSHKeySerializer, **errors(400, 401, 404)})
    def create(self, request: Request) -> Response:
        data = _valid(SSHKeyCreateSerializer, request)
        org = acting_organization(request.user, data.get("organization"))
        key = tenancy.create_ssh_key(
            org, data.get("name", ""), data["public_key"], actor=Actor.from_request(request)
        )
        return Response(SSHKeySerializer(key).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: SSHKey) -> None:
        tenancy.delete_ssh_key(instance, actor=Actor.from_request(self.request))


def _user(request: Request) -> User:
    """The authenticated user (every customer endpoint requires one)."""
    assert isinstance(request.user, User)
    return request.user


# The largest id a row can have: ids are 64-bit signed integers on every backend.
MAX_ROW_ID = 2**63 - 1


def _row_id(text: str) -> int | None:
    """``text`` as a row id, or None when it cannot be one. ASCII digits only: str.isdigit() also accepts
    '²', which int() refuses, and a larger number than any id overflows the database's integer."""
    if not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= MAX_ROW_ID else None


def _valid(serializer_class: type, request: Request) -> dict[str, Any]:
    serializer = serializer_class(data=request.data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _asks_for(existing: Reservation, data: dict[str, Any], image: Image, ssh_keys: list[SSHKey]) -> bool:
    """Whether a create request (``data``, validated, with its image and keys) asks for the reservation an
    earlier request with the same Idempotency-Key made: a retry, not a new request reusing the key.

    The booking moved a start just past (or none) to the time of booking, and an extend may have moved the
    end later since: the same body still asks for the same reservation then.
    """
    if (existing.server_type.slug, existing.count, existing.image_id, existing.name) != (
        data["server_type"],
        data["count"],
        image.pk,
        data.get("name", ""),
    ):
        return False
    if sorted(k.public_key for k in ssh_keys) != sorted(existing.authorized_keys):
        return False
    booked_at = existing.created_at
    start = data.get("starts_at")
    if start is None:
        started_now = existing.starts_at <= booked_at + reservation_service.START_NOW_SLACK
    else:
        started_now = start < existing.starts_at <= booked_at
    if start != existing.starts_at and not started_now:
        return False
    end = data.get("ends_at")
    if end is None or existing.ends_at is None:
        return end == existing.ends_at
    return end == existing.ends_at or (
        end < existing.ends_at and AuditEvent.objects.filter(reservation=existing, action="extend").exists()
    )


# What every booking reads by slug (built once: provisioner.prepared): its server type and its image (staff
# may book any image, customers the public ones).
_SERVER_TYPE = PreparedQuery(
    lambda slug: ServerType.objects.filter(slug=slug).values_list(*columns(ServerType)), prepared.TEXT
)
_ANY_IMAGE = PreparedQuery(
    lambda slug: Image.objects.filter(slug=slug).values_list(*columns(Image)), prepared.TEXT
)
_PUBLIC_IMAGE = PreparedQuery(
    lambda slug: Image.objects.filter(slug=slug, public=True).values_list(*columns(Image)), prepared.TEXT
)


# Whether a reservation is one a user may change (CustomerViewSet's scope for changes: for_member).
_RESERVATION_TO_CHANGE = PreparedQuery(
    lambda user_id, pk: Reservation.objects.for_member(User(pk=user_id)).filter(pk=pk).values_list("pk"),
    prepared.INT,
    prepared.INT,
)


@functools.lru_cache(maxsize=64)
def _ssh_keys_query(ids: int, names: int) -> PreparedQuery:
    """An organization's SSH keys with any of ``ids`` ids or ``names`` names (a query built once for each
    number of each: provisioner.prepared)."""

    def build(org_id: int, *refs: Any) -> QuerySet[SSHKey]:
        wanted = Q(pk__in=refs[:ids]) | Q(name__in=refs[ids:])
        return SSHKey.objects.filter(organization_id=org_id).filter(wanted).values_list(*columns(SSHKey))

    return PreparedQuery(build, prepared.INT, *[prepared.INT] * ids, *[prepared.TEXT] * names)


class ReservationViewSet(
    SpendInLists,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    CustomerViewSet,
):
    """Whole servers for a window. Provisioning starts at once for a window that starts now."""

    serializer_class = ReservationSerializer
    queryset = Reservation.objects.all()
    filterset_fields = ["state"]

    # Actions that change one reservation: the service reads it again under its lock, and ?state= (which
    # filters the list) does not hide it from them.
    CHANGES = frozenset({"extend", "release"})

    def get_queryset(self) -> QuerySet[Reservation]:
        mine = super().get_queryset()
        if self.action in self.CHANGES:
            return mine
        return mine.select_related("organization", "server_type", "image").prefetch_related(
            "ssh_keys", "nodes"
        )

    def filter_queryset(self, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.action in self.CHANGES:
            return queryset
        return super().filter_queryset(queryset)

    @extend_schema(
        request=ReservationCreateSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="a retried request with the same key returns the first reservation (200) "
                "instead of booking again",
            )
        ],
        responses={
            201: ReservationSerializer,
            200: OpenApiResponse(ReservationSerializer, description="replay of an Idempotency-Key"),
            **errors(400, 401, 404, 409),
            403: OpenApiResponse(
                ErrorSerializer,
                description="the booking would take the organization past its server quota (quota_exceeded); "
                "or a change made with a portal session came without its CSRF token",
            ),
        },
    )
    def create(self, request: Request) -> Response:
        data = _valid(ReservationCreateSerializer, request)
        org = acting_organization(request.user, data.get("organization"))
        key = request.headers.get("Idempotency-Key", "").strip()
        if len(key) > 100:
            raise ValidationError({"Idempotency-Key": ["at most 100 characters"]})
        types = instances(ServerType, _SERVER_TYPE.rows(data["server_type"]))
        if not types:
            raise ValidationError({"server_type": [f"no server type {data['server_type']!r}"]})
        server_type = types[0]
        image = self._image(data["image"])
        ssh_keys = self._ssh_keys(org, data["ssh_keys"])
        existing = Reservation.objects.filter(organization=org, idempotency_key=key).first() if key else None
        if existing is not None:
            return self._replay(existing, data, image, ssh_keys)
        booking = reservation_service.book_servers(
            org,
            server_type,
            data["count"],
            image=image,
            actor=Actor.from_request(request),
            starts_at=data.get("starts_at"),
            ends_at=data.get("ends_at"),
            ssh_keys=ssh_keys,
            name=data.get("name", ""),
            idempotency_key=key,
        )
        if booking.replay:  # a concurrent request with the same Idempotency-Key made it first
            return self._replay(booking.reservation, data, image, ssh_keys)
        key_ids = [k.pk for k in sorted(ssh_keys, key=lambda k: k.name)]
        return Response(
            reservation_data(booking.reservation, ssh_key_ids=key_ids, booking=booking),
            status=status.HTTP_201_CREATED,
        )

    def _replay(
        self, existing: Reservation, data: dict[str, Any], image: Image, ssh_keys: list[SSHKey]
    ) -> Response:
        if not _asks_for(existing, data, image, ssh_keys):
            return Response(
                {"error": {"code": "idempotency_key_reused",
                           "message": f"this Idempotency-Key was used for reservation {existing.pk}, "
                                      "which asked for something else; use a new key for a new request"}},
                status=status.HTTP_409_CONFLICT,
            )  # fmt: skip
        return Response(self._out(existing.pk), status=status.HTTP_200_OK)

    def _mine_to_change(self) -> Reservation:
        """The reservation the URL names, if the caller may change it (one of their organizations'; else
        404, as get_object answers), by its id alone: for a service that reads it again under its lock.
        Checked with a statement built once (provisioner.prepared), as every release does."""
        pk = _row_id(self.kwargs["pk"])
        if pk is None or not _RESERVATION_TO_CHANGE.rows(_user(self.request).pk, pk):
            raise Http404
        return Reservation(pk=pk)

    def _out(self, pk: int) -> dict[str, Any]:
        # The caller already holds an authorized row (get_object or a replay): no scoping join needed.
        row = Reservation.objects.select_related("organization", "server_type", "image").get(pk=pk)
        return reservation_data(row)

    def _image(self, slug: str) -> Image:
        found = instances(Image, (_ANY_IMAGE if self.request.user.is_staff else _PUBLIC_IMAGE).rows(slug))
        if not found:
            raise ValidationError({"image": [f"no image {slug!r}"]})
        return found[0]

    @staticmethod
    def _ssh_keys(org: Organization, refs: list[int | str]) -> list[SSHKey]:
        """The keys ``refs`` name, each once. A number is a key id, a string a key name; a string of digits
        that names no key is read as an id (as clients that send ids as strings do), and one that names a
        key and is the id of another is refused: one reference never installs two keys.

        :raises ValidationError: a reference is no key of ``org``, or is ambiguous.
        """
        names = [r for r in refs if isinstance(r, str)]
        ids = [r for r in refs if isinstance(r, int)] + [i for i in map(_row_id, names) if i is not None]
        found = instances(SSHKey, _ssh_keys_query(len(ids), len(names)).rows(org.pk, *ids, *names))
        by_id = {k.pk: k for k in found}
        by_name = {k.name: k for k in found}
        keys: dict[int, SSHKey] = {}
        problems = []
        for ref in refs:
            if isinstance(ref, int):
                key = by_id.get(ref)
                if key is None:
                    problems.append(f"no SSH key with id {ref} in {org.name}")
                    continue
            else:
                named, row_id = by_name.get(ref), _row_id(ref)
                numbered = by_id.get(row_id) if row_id is not None else None
                if named is not None and numbered is not None and named.pk != numbered.pk:
                    problems.append(
                        f"{ref!r} is ambiguous in {org.name}: SSH key {named.pk} is named {ref!r} and SSH key "
                        f"{numbered.pk} is {numbered.name!r}; give key ids as numbers ({numbered.pk} or "
                        f"{named.pk})"
                    )
                    continue
                key = named or numbered
                if key is None:
                    problems.append(f"no SSH key {ref!r} in {org.name}")
                    continue
            keys.setdefault(key.pk, key)
        if problems:
            raise ValidationError({"ssh_keys": problems})
        return list(keys.values())

    @extend_schema(
        request=ExtendSerializer, responses={200: ReservationSerializer, **errors(400, 401, 404, 409)}
    )
    @action(detail=True, methods=["post"])
    def extend(self, request: Request, pk: str | None = None) -> Response:
        reservation = self.get_object()
        data = _valid(ExtendSerializer, request)
        reservation_service.extend_reservation(
            reservation, data["ends_at"], actor=Actor.from_request(request)
        )
        return Response(self._out(reservation.pk))

    @extend_schema(request=None, responses={202: ReservationSerializer, **errors(401, 404)})
    @action(detail=True, methods=["post"])
    def release(self, request: Request, pk: str | None = None) -> Response:
        """Give the servers back: they are wiped and return to the pool. Idempotent."""
        reservation = reservation_service.release_reservation(
            self._mine_to_change(), actor=Actor.from_request(request)
        )
        return Response(reservation_data(reservation), status=status.HTTP_202_ACCEPTED)


class ServerViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, CustomerViewSet):
    """Servers your organizations hold now, with how to reach them."""

    serializer_class = ServerSerializer
    queryset = (
        Node.objects.filter(owner__isnull=False)
        .select_related("server_type", "image")
        # their tenant network addresses, read for the whole page at once
        .prefetch_related(
            Prefetch(
                "network_attachments", queryset=NetworkAttachment.objects.live(), to_attr="live_attachments"
            )
        )
    )


def _visible(model: Any) -> Any:
    """A filter's choices: the rows of ``model`` the requesting user may see. Left unscoped, a filter by id
    answers 400 for an id that does not exist but 200 for another organization's, which tells them apart."""
    return lambda request: model.objects.for_user(getattr(request, "user", None))


class OperationFilter(django_filters.FilterSet):
    reservation = django_filters.ModelChoiceFilter(queryset=_visible(Reservation))

    class Meta:
        model = Operation
        fields = ["state", "kind", "reservation"]


class AuditEventFilter(django_filters.FilterSet):
    reservation = django_filters.ModelChoiceFilter(queryset=_visible(Reservation))
    operation = django_filters.ModelChoiceFilter(queryset=_visible(Operation))

    class Meta:
        model = AuditEvent
        fields = ["action", "reservation", "operation"]


class OperationViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, CustomerViewSet):
    """Long-running work (provision, release, reimage ...): progress, steps and log."""

    queryset = Operation.objects.select_related("node").prefetch_related("steps")
    filterset_class = OperationFilter

    def get_serializer_class(self) -> type:
        return OperationSerializer if self.action == "retrieve" else OperationSummarySerializer

    def get_serializer_context(self) -> dict[str, Any]:
        context = super().get_serializer_context()
        after = _row_id(self.request.query_params.get("after", "0"))
        if after is None:
            raise ValidationError({"after": ["must be a log line id (a non-negative integer)"]})
        context["log_after"] = after
        return context

    @extend_schema(
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="only log lines with a larger id")
        ],
        responses={200: OperationSerializer, **errors(400, 401, 404)},
    )
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)


class OrganizationViewSet(
    StatementActions,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    CustomerViewSet,
):
    """Organizations you belong to, their members and quota. Owners manage members."""

    serializer_class = OrganizationSerializer
    queryset = Organization.objects.prefetch_related("memberships__user")
    permission_classes = [*CustomerViewSet.permission_classes, OwnerOnlyActions]

    @extend_schema(
        request=OrganizationCreateSerializer, responses={201: OrganizationSerializer, **errors(400, 401)}
    )
    def create(self, request: Request) -> Response:
        data = _valid(OrganizationCreateSerializer, request)
        org = tenancy.create_organization(_user(request), data["name"], actor=Actor.from_request(request))
        return Response(
            self.get_serializer(self.get_queryset().get(pk=org.pk)).data, status=status.HTTP_201_CREATED
        )

    @extend_schema(
        request=MemberAddSerializer, responses={201: MemberSerializer, **errors(400, 401, 403, 404)}
    )
    @action(detail=True, methods=["post"], url_path="members")
    def add_member(self, request: Request, pk: str | None = None) -> Response:
        """Add a user (by username) or change their role. Owners only."""
        org = self.get_object()
        data = _valid(MemberAddSerializer, request)
        membership = tenancy.add_member(
            org, data["username"], role=data["role"], actor=Actor.from_request(request)
        )
        return Response(MemberSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=None,
        parameters=[OpenApiParameter("user_id", OpenApiTypes.INT, OpenApiParameter.PATH)],
        responses={204: None, **errors(400, 401, 403, 404)},
    )
    @action(detail=True, methods=["delete"], url_path=r"members/(?P<user_id>\d+)")
    def remove_member(self, request: Request, pk: str | None = None, user_id: str = "") -> Response:
        """Remove a member. Owners only; the last owner cannot be removed."""
        org = self.get_object()
        tenancy.remove_member(org, int(user_id), actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    CustomerViewSet,
):
    """Your personal API tokens. The token itself is shown once, when created; only its hash is stored."""

    unscoped_because = "tokens are personal: each user sees and revokes only their own, staff included"
    serializer_class = ApiTokenSerializer
    queryset = tenancy.ApiToken.objects.all()

    def get_queryset(self) -> QuerySet[Any]:
        return tokens_for(self.request.user)

    @extend_schema(
        request=ApiTokenCreateSerializer, responses={201: ApiTokenIssuedSerializer, **errors(400, 401)}
    )
    def create(self, request: Request) -> Response:
        data = _valid(ApiTokenCreateSerializer, request)
        row, plaintext = tenancy.issue_token(
            _user(request),
            data["name"],
            actor=Actor.from_request(request),
            expires_in_days=data.get("expires_in_days"),
            issued_with=request.auth if isinstance(request.auth, tenancy.ApiToken) else None,
        )
        body = dict(ApiTokenSerializer(row).data, token=plaintext)
        return Response(body, status=status.HTTP_201_CREATED, headers={"Cache-Control": "no-store"})

    @extend_schema(responses={204: None, **errors(401, 404)})
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Revoke a token: it stops working at once. Idempotent."""
        tenancy.revoke_token(self.get_object(), actor=Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class AuditEventViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, CustomerViewSet):
    """Who did what to your organizations' reservations and servers, newest first."""

    serializer_class = AuditEventSerializer
    queryset = AuditEvent.objects.select_related("node")
    filterset_class = AuditEventFilter
