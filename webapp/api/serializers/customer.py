"""Request and response shapes of the customer endpoints (/api/v1/): catalog, SSH keys, organizations,
tokens, reservations and servers."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from provisioner import networking, prepared
from provisioner.models import (
    ApiToken,
    Image,
    Membership,
    Node,
    Operation,
    Organization,
    Reservation,
    ServerType,
    SSHKey,
)
from provisioner.models.inventory import SERVER_TYPE_FIELDS
from provisioner.prepared import PreparedQuery
from provisioner.services import metering, warm_pool
from provisioner.services.reservations import START_NOW_SLACK
from provisioner.sshkeys import ssh_command
from provisioner.states import LEASED_STATES, StepState
from webapp.api.fields import WindowDateTimeField
from webapp.api.serializers.common import (
    BurnInSummarySerializer,
    OperationSummarySerializer,
    RowReferenceField,
)
from webapp.api.serializers.metering import SpendSerializer

if TYPE_CHECKING:
    from provisioner.services.reservations import Booking


class ServerTypeSerializer(serializers.ModelSerializer):
    available = serializers.SerializerMethodField(
        help_text="servers free now, or for the window given by ?starts_at=&ends_at="
    )

    expected_ready_seconds = serializers.SerializerMethodField(
        help_text="about how long one server reserved now takes from the reservation to SSH: about a minute "
        "from the warm pool, else measured from this type's recent deploys"
    )

    class Meta:
        model = ServerType
        fields = ["id", "slug", *SERVER_TYPE_FIELDS, "available", "expected_ready_seconds"]

    def get_available(self, obj: ServerType) -> int:
        return self.context["availability"][obj.pk]

    def get_expected_ready_seconds(self, obj: ServerType) -> int:
        return warm_pool.expected_ready_seconds(obj)


class AvailabilityQuerySerializer(serializers.Serializer):
    starts_at = WindowDateTimeField(required=False)
    ends_at = WindowDateTimeField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("starts_at"), attrs.get("ends_at")
        # As booking does (reservations._validate_window): a window that cannot be booked has no count.
        if start and start < timezone.now() - START_NOW_SLACK:
            raise serializers.ValidationError({"starts_at": ["the window cannot start in the past"]})
        if start and end and end <= start:
            raise serializers.ValidationError({"ends_at": ["must be after starts_at"]})
        return attrs


class ImageSerializer(serializers.ModelSerializer):
    # Image slugs carry versions ("ubuntu-24.04"): not the letters, digits, - and _ of a SlugField's pattern.
    slug = serializers.CharField(read_only=True)

    class Meta:
        model = Image
        fields = ["id", "slug", "name", "os_name", "format", "size_bytes", "sha256", "created_at"]


class SSHKeySerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = SSHKey
        fields = ["id", "organization", "name", "public_key", "fingerprint", "created_at"]


class SSHKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    public_key = serializers.CharField(max_length=16384, help_text="one OpenSSH public key line")
    organization = serializers.SlugField(required=False, help_text="slug; needed if you are in several")


class MemberSerializer(serializers.ModelSerializer):
    user_id = serializers.IntegerField(source="user.id", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)

    class Meta:
        model = Membership
        fields = ["user_id", "username", "role", "created_at"]


class OrganizationSerializer(serializers.ModelSerializer):
    members = MemberSerializer(source="memberships", many=True, read_only=True)
    my_role = serializers.SerializerMethodField()
    servers_held = serializers.SerializerMethodField(
        help_text="servers leased now (counts against the quota)"
    )

    class Meta:
        model = Organization
        fields = [
            "id",
            "name",
            "slug",
            "server_quota",
            "monthly_spend_limit_cents",
            "shared_private_network",
            "servers_held",
            "my_role",
            "members",
            "created_at",
        ]
        # set by operators (the admin): a shared network joins all its reservations' servers at a site
        read_only_fields = ["monthly_spend_limit_cents", "shared_private_network"]

    def get_my_role(self, obj: Organization) -> str | None:
        user = self.context["request"].user
        return next((m.role for m in obj.memberships.all() if m.user_id == user.pk), None)

    def get_servers_held(self, obj: Organization) -> int:
        return obj.nodes.filter(state__in=LEASED_STATES).count()


class OrganizationCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)


class MemberAddSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Membership.Role.choices, default=Membership.Role.MEMBER)


class ApiTokenSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "hint", "created_at", "last_used_at", "revoked_at", "expires_at"]


class ApiTokenCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=365,
        help_text="the token stops working this many days from now; leave out for one that lasts until revoked",
    )


class ApiTokenIssuedSerializer(ApiTokenSerializer):
    token = serializers.CharField(help_text="the token itself: shown only in this response, store it now")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]


class ReservationServerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "name", "state"]


class PrivateNetworkServerSerializer(serializers.Serializer):
    name = serializers.CharField(help_text="the server")
    private_address = serializers.IPAddressField(help_text="its address on the private network")
    public_address = serializers.IPAddressField(
        allow_null=True, help_text="its public address (reaches it on the private address); null: none"
    )


class PrivateNetworkSerializer(serializers.Serializer):
    cidr = serializers.CharField(help_text="the network, e.g. 198.19.3.0/24")
    gateway = serializers.IPAddressField(help_text="its default gateway")
    servers = PrivateNetworkServerSerializer(many=True)


class ReservationSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    server_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    image = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    ssh_keys = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    servers = ReservationServerSerializer(source="nodes", many=True, read_only=True)
    operations = serializers.SerializerMethodField(help_text="provisioning and release work, newest first")
    spend = serializers.SerializerMethodField(
        help_text="what the reservation has cost so far (docs/metering.md: on demand as used, a window as booked)"
    )
    private_networks = serializers.SerializerMethodField(
        help_text="the private network its servers share (one per site; empty where the site's network is not "
        "managed): CIDR, gateway and each server's private and public addresses"
    )

    class Meta:
        model = Reservation
        fields = [
            "id",
            "name",
            "organization",
            "server_type",
            "count",
            "image",
            "ssh_keys",
            "starts_at",
            "ends_at",
            "state",
            "status_message",
            "servers",
            "operations",
            "spend",
            "private_networks",
            "created_at",
            "released_at",
        ]

    @extend_schema_field(PrivateNetworkSerializer(many=True))
    def get_private_networks(self, obj: Reservation) -> list[dict[str, Any]]:
        known = self.context.get("private_networks")  # a list reads every row's at once (SpendInLists)
        if known is not None:
            return known.get(obj.pk, [])
        return networking.reservation_networks(obj.pk)

    @extend_schema_field(SpendSerializer)
    def get_spend(self, obj: Reservation) -> dict[str, Any]:
        known = self.context.get(
            "spend"
        )  # a list reads every row's at once (webapp.api.metering.SpendInLists)
        if known is not None:
            return {"amount_cents": known.get(obj.pk, 0), "currency": metering.currency()}
        return spend_data(obj)

    @extend_schema_field(OperationSummarySerializer(many=True))
    def get_operations(self, obj: Reservation) -> Any:
        ops = (
            obj.operations.select_related("node")
            .prefetch_related("steps")
            .order_by("-created_at", "-id")[:50]
        )
        return OperationSummarySerializer(ops, many=True).data


_TIMESTAMP = serializers.DateTimeField(read_only=True)


def spend_data(reservation: Reservation, *, new: bool = False) -> dict[str, Any]:
    """The reservation's ``spend``: nothing for one just booked (``new``: no query), else what it cost so far."""
    amount = 0 if new else metering.reservation_spend(reservation)
    return {"amount_cents": amount, "currency": metering.currency()}


def _timestamp(value: dt.datetime | None) -> str | None:
    return None if value is None else _TIMESTAMP.to_representation(value)


def reservation_data(
    reservation: Reservation,
    *,
    ssh_key_ids: list[int] | None = None,
    booking: Booking | None = None,
) -> dict[str, Any]:
    """What ReservationSerializer says about one reservation, read with at most three small queries.

    The create and release endpoints answer with this on every call: a serializer tree re-reads the
    reservation with four prefetches and builds its fields anew each time, which costs more than the
    booking itself. ``reservation`` must come with its organization, server type and image loaded;
    ``ssh_key_ids``, if the caller has them, in the order of the keys' names. With the ``booking`` that
    just made the reservation, its servers and operations are the ones the booking started (read nothing).
    The tests check that this and the serializer agree.
    """
    if ssh_key_ids is None:
        ssh_key_ids = [pk for (pk,) in _RESERVATION_KEYS.rows(reservation.pk)]
    if booking is not None and not booking.replay:
        servers = [{"id": n.pk, "name": n.name, "state": n.state} for n in booking.started]
        operations = [
            _operation_data({c: getattr(op, c) for c in _OPERATION_COLUMNS}, node=op.node.name, percent=0)
            for op in booking.operations
        ]
    elif reservation.not_started(timezone.now()):  # no servers and no operations yet: nothing to read
        servers, operations = [], []
    else:
        servers = [
            {"id": pk, "name": name, "state": state}
            for pk, name, state in _RESERVATION_SERVERS.rows(reservation.pk)
        ]
        operations = []
        for row in _RESERVATION_OPERATIONS.rows(reservation.pk):
            op = dict(zip(_OPERATION_COLUMNS, row, strict=False))
            node, total, done = row[len(_OPERATION_COLUMNS) :]
            operations.append(_operation_data(op, node=node, percent=int(100 * done / total) if total else 0))
    return {
        "id": reservation.pk,
        "name": reservation.name,
        "organization": reservation.organization.slug,
        "server_type": reservation.server_type.slug,
        "count": reservation.count,
        "image": reservation.image.slug,
        "ssh_keys": ssh_key_ids,
        "starts_at": _timestamp(reservation.starts_at),
        "ends_at": _timestamp(reservation.ends_at),
        "state": reservation.state,
        "status_message": reservation.status_message,
        "servers": servers,
        "operations": operations,
        "spend": spend_data(reservation, new=booking is not None and not booking.replay),
        "private_networks": (
            []
            if booking is not None and not booking.networked
            else networking.reservation_networks(reservation.pk)
        ),
        "created_at": _timestamp(reservation.created_at),
        "released_at": _timestamp(reservation.released_at),
    }


_OPERATION_COLUMNS = (
    "id",
    "kind",
    "state",
    "reservation_id",
    "rollout_id",
    "error_code",
    "error",
    "wait_for",
    "waiting_since",
    "wait_deadline",
    "created_at",
    "started_at",
    "finished_at",
)


# What reservation_data reads of a reservation it did not just book (a query each, built once: see
# provisioner.prepared): its keys' ids in the order of their names, its servers, its operations newest first
# (at most 50) with their node's name and how many of their steps there are and are done.
_RESERVATION_KEYS = PreparedQuery(
    lambda pk: SSHKey.objects.filter(reservations=pk).values_list("pk"), prepared.INT
)
_RESERVATION_SERVERS = PreparedQuery(
    lambda pk: Node.objects.filter(reservation=pk).values_list("id", "name", "state"), prepared.INT
)
_RESERVATION_OPERATIONS = PreparedQuery(
    lambda pk: (
        Operation.objects.filter(reservation=pk)
        .values(*_OPERATION_COLUMNS, "node__name")
        .annotate(
            steps_total=Count("steps"),
            steps_done=Count("steps", filter=Q(steps__state__in=[StepState.SUCCEEDED, StepState.SKIPPED])),
        )
        .order_by("-created_at", "-id")
        .values_list(*_OPERATION_COLUMNS, "node__name", "steps_total", "steps_done")[:50]
    ),
    prepared.INT,
)


def _operation_data(row: dict[str, Any], *, node: str, percent: int) -> dict[str, Any]:
    """OperationSummarySerializer's fields from an operation's columns."""
    return {
        "id": row["id"],
        "kind": row["kind"],
        "state": row["state"],
        "percent": percent,
        "node": node,
        "reservation": row["reservation_id"],
        "rollout": row["rollout_id"],
        "error_code": row["error_code"],
        "error": row["error"],
        "wait_for": row["wait_for"],
        "waiting_since": _timestamp(row["waiting_since"]),
        "wait_deadline": _timestamp(row["wait_deadline"]),
        "created_at": _timestamp(row["created_at"]),
        "started_at": _timestamp(row["started_at"]),
        "finished_at": _timestamp(row["finished_at"]),
    }


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1, "description": "an SSH key's id"},
            {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "an SSH key's name (digits that name no key: its id)",
            },
        ]
    }
)
class SSHKeyReferenceField(RowReferenceField):
    """An SSH key by id (a JSON number) or by name (a JSON string). Unlike nodes, a string of digits that
    names no key is still read as an id, as clients sent ids before; the view refuses one that names a key
    and is the id of another (ReservationViewSet._ssh_keys)."""

    default_error_messages = {
        "invalid": 'give a key id as a number (e.g. 12) or a key name as a string (e.g. "laptop")',
        "blank": "a key name cannot be blank",
        "max_length": "a key name has at most 100 characters",
    }


class ShortListField(serializers.ListField):
    """A ListField that refuses a list longer than ``max_length`` before validating its items: a request
    with 100,000 of them is answered at once."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if self.max_length is not None and isinstance(data, (list, tuple)) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


MAX_SSH_KEYS_PER_RESERVATION = 100


class ReservationCreateSerializer(serializers.Serializer):
    server_type = serializers.SlugField(help_text="server type slug, e.g. h100-8x")
    count = serializers.IntegerField(min_value=1, max_value=256)
    image = serializers.CharField(max_length=100, help_text="image slug")
    ssh_keys = ShortListField(
        child=SSHKeyReferenceField(),
        min_length=1,
        max_length=MAX_SSH_KEYS_PER_RESERVATION,
        help_text=f"the SSH keys to install (at most {MAX_SSH_KEYS_PER_RESERVATION}; repeats count once): "
        'each a key id as a number (e.g. 12) or a key name as a string (e.g. "laptop"). A string of '
        "digits that is no key's name is read as a key id; one that is the name of one key and the id of "
        "another is refused as ambiguous (give the id as a number)",
    )

    def validate_ssh_keys(self, value: list[int | str]) -> list[int | str]:
        return list(dict.fromkeys(value))  # each reference once, in the order given

    starts_at = WindowDateTimeField(required=False, help_text="default: now")
    ends_at = WindowDateTimeField(required=False, allow_null=True, help_text="default: until released")
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    organization = serializers.SlugField(required=False, help_text="slug; needed if you are in several")


class ExtendSerializer(serializers.Serializer):
    ends_at = WindowDateTimeField()


class ServerSerializer(serializers.ModelSerializer):
    server_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    image = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    address = serializers.SerializerMethodField(
        help_text="where its SSH server is reached: its public address on a managed network"
    )
    ssh_port = serializers.SerializerMethodField()
    ssh_command = serializers.SerializerMethodField()
    known_hosts = serializers.SerializerMethodField(help_text="its host keys, for the address above")
    private_address = serializers.SerializerMethodField(
        help_text="its address on the reservation's private network; null: none"
    )
    public_address = serializers.SerializerMethodField(help_text="its public address; null: none")
    burnin = serializers.SerializerMethodField(help_text="the latest burn-in of this server for its lease")

    class Meta:
        model = Node
        fields = [
            "id",
            "name",
            "server_type",
            "state",
            "reservation",
            "image",
            "address",
            "ssh_port",
            "ssh_user",
            "ssh_command",
            "host_key_fingerprints",
            "known_hosts",
            "private_address",
            "public_address",
            "burnin",
        ]

    def _attachment(self, obj: Node) -> Any:
        """The server's live attachment for the reservation holding it (prefetched by the viewset as
        ``live_attachments``, else read once)."""
        if not hasattr(obj, "_customer_attachment"):
            prefetched = getattr(obj, "live_attachments", None)
            if obj.reservation_id is None:
                found = None
            elif prefetched is not None:
                found = next((a for a in prefetched if a.reservation_id == obj.reservation_id), None)
            else:
                found = networking.live_attachment(obj)
            obj._customer_attachment = found  # type: ignore[attr-defined]
        return obj._customer_attachment  # type: ignore[attr-defined]

    def _endpoint(self, obj: Node) -> tuple[str, int, str]:
        """(address, port, known_hosts) the customer uses: the public address once the server joined its
        tenant network, else its SSH address."""
        attachment = self._attachment(obj)
        if attachment is not None and attachment.configured_at is not None and attachment.public_address:
            endpoint = networking.customer_endpoint(obj)
            if endpoint is not None:
                return endpoint
        return obj.ssh_address, obj.ssh_port, obj.known_hosts

    def get_address(self, obj: Node) -> str:
        return self._endpoint(obj)[0]

    def get_ssh_port(self, obj: Node) -> int:
        return self._endpoint(obj)[1]

    def get_known_hosts(self, obj: Node) -> str:
        return self._endpoint(obj)[2]

    @extend_schema_field(serializers.IPAddressField(allow_null=True))
    def get_private_address(self, obj: Node) -> str | None:
        attachment = self._attachment(obj)
        return attachment.private_address if attachment is not None else None

    @extend_schema_field(serializers.IPAddressField(allow_null=True))
    def get_public_address(self, obj: Node) -> str | None:
        attachment = self._attachment(obj)
        return attachment.public_address if attachment is not None else None

    def get_ssh_command(self, obj: Node) -> str | None:
        address, port, _ = self._endpoint(obj)
        if not address:
            return None
        return ssh_command(obj.ssh_user, address, port)

    @extend_schema_field(BurnInSummarySerializer(allow_null=True))
    def get_burnin(self, obj: Node) -> dict[str, Any] | None:
        report = obj.burnin_reports.filter(reservation=obj.reservation).order_by("-created_at").first()
        return BurnInSummarySerializer(report).data if report else None
