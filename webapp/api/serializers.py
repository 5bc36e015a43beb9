"""Request and response shapes of the API. Output serializers never include BMC credentials, token hashes or
provisioning keys: fields are listed explicitly, never ``__all__``."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Q
from django.utils import timezone
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from provisioner.models import (
    ApiToken,
    AuditEvent,
    BurnInReport,
    Image,
    LogLine,
    Membership,
    Node,
    Operation,
    Organization,
    Reservation,
    Rollout,
    ServerType,
    SSHKey,
    Step,
)
from provisioner.models.inventory import SERVER_TYPE_FIELDS
from provisioner.services.reservations import START_NOW_SLACK
from provisioner.services.rollouts import MAX_ROLLOUT_NODES
from provisioner.sshkeys import ssh_command
from provisioner.states import LEASED_STATES, StepState

if TYPE_CHECKING:
    from provisioner.services.reservations import Booking

LOG_LINES_PER_RESPONSE = 500


# --- errors ---------------------------------------------------------------------------------------


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="stable machine-readable code, e.g. not_enough_capacity")
    message = serializers.CharField(help_text="a sentence for people")
    details = serializers.JSONField(required=False, help_text="per-field problems for validation errors")


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


# --- catalog --------------------------------------------------------------------------------------


class ServerTypeSerializer(serializers.ModelSerializer):
    available = serializers.SerializerMethodField(
        help_text="servers free now, or for the window given by ?starts_at=&ends_at="
    )

    class Meta:
        model = ServerType
        fields = ["id", "slug", *SERVER_TYPE_FIELDS, "available"]

    def get_available(self, obj: ServerType) -> int:
        return self.context["availability"][obj.pk]


class AvailabilityQuerySerializer(serializers.Serializer):
    starts_at = serializers.DateTimeField(required=False)
    ends_at = serializers.DateTimeField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        start, end = attrs.get("starts_at"), attrs.get("ends_at")
        # As booking does (reservations._validate_window): a window that cannot be booked has no count.
        if start and start < timezone.now() - START_NOW_SLACK:
            raise serializers.ValidationError({"starts_at": ["the window cannot start in the past"]})
        if start and end and end <= start:
            raise serializers.ValidationError({"ends_at": ["must be after starts_at"]})
        return attrs


class ImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = Image
        fields = ["id", "slug", "name", "os_name", "format", "size_bytes", "sha256", "created_at"]


# --- tenancy --------------------------------------------------------------------------------------


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
        fields = ["id", "name", "slug", "server_quota", "servers_held", "my_role", "members", "created_at"]

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


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "action",
            "node",
            "reservation",
            "operation",
            "from_state",
            "to_state",
            "reason",
            "request_id",
        ]


# --- operations -----------------------------------------------------------------------------------


class StepSerializer(serializers.ModelSerializer):
    class Meta:
        model = Step
        fields = [
            "index",
            "name",
            "state",
            "attempts",
            "max_attempts",
            "error_code",
            "error",
            "started_at",
            "finished_at",
        ]


class LogLineSerializer(serializers.ModelSerializer):
    step = serializers.SlugRelatedField(slug_field="name", read_only=True)

    class Meta:
        model = LogLine
        fields = ["id", "created_at", "level", "step", "message"]


class OperationSummarySerializer(serializers.ModelSerializer):
    node = serializers.SlugRelatedField(slug_field="name", read_only=True)
    percent = serializers.IntegerField(source="progress_percent", read_only=True)

    class Meta:
        model = Operation
        fields = [
            "id",
            "kind",
            "state",
            "percent",
            "node",
            "reservation",
            "rollout",
            "error_code",
            "error",
            "created_at",
            "started_at",
            "finished_at",
        ]


class OperationSerializer(OperationSummarySerializer):
    steps = StepSerializer(many=True, read_only=True)
    log = serializers.SerializerMethodField(
        help_text=f"log lines after ?after=<id> (at most {LOG_LINES_PER_RESPONSE}); poll with the last id"
    )

    class Meta(OperationSummarySerializer.Meta):
        fields = [*OperationSummarySerializer.Meta.fields, "steps", "log"]

    @extend_schema_field(LogLineSerializer(many=True))
    def get_log(self, obj: Operation) -> Any:
        after = self.context.get("log_after", 0)
        lines = (
            obj.log_lines.filter(id__gt=after).select_related("step").order_by("id")[:LOG_LINES_PER_RESPONSE]
        )
        return LogLineSerializer(lines, many=True).data


# --- reservations and servers ---------------------------------------------------------------------


class ReservationServerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Node
        fields = ["id", "name", "state"]


class ReservationSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    server_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    image = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    ssh_keys = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    servers = ReservationServerSerializer(source="nodes", many=True, read_only=True)
    operations = serializers.SerializerMethodField(help_text="provisioning and release work, newest first")

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
            "created_at",
            "released_at",
        ]

    @extend_schema_field(OperationSummarySerializer(many=True))
    def get_operations(self, obj: Reservation) -> Any:
        ops = (
            obj.operations.select_related("node")
            .prefetch_related("steps")
            .order_by("-created_at", "-id")[:50]
        )
        return OperationSummarySerializer(ops, many=True).data


_TIMESTAMP = serializers.DateTimeField(read_only=True)


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
        ssh_key_ids = list(SSHKey.objects.filter(reservations=reservation).values_list("pk", flat=True))
    if booking is not None and not booking.replay:
        servers = [{"id": n.pk, "name": n.name, "state": n.state} for n in booking.started]
        operations = [
            _operation_data({c: getattr(op, c) for c in _OPERATION_COLUMNS}, node=op.node.name, percent=0)
            for op in booking.operations
        ]
    else:
        servers = list(Node.objects.filter(reservation=reservation).values("id", "name", "state"))
        done = [StepState.SUCCEEDED, StepState.SKIPPED]
        operations = [
            _operation_data(
                op,
                node=op["node__name"],
                percent=int(100 * op["steps_done"] / op["steps_total"]) if op["steps_total"] else 0,
            )
            for op in Operation.objects.filter(reservation=reservation)
            .values(*_OPERATION_COLUMNS, "node__name")
            .annotate(steps_total=Count("steps"), steps_done=Count("steps", filter=Q(steps__state__in=done)))
            .order_by("-created_at", "-id")[:50]
        ]
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
    "created_at",
    "started_at",
    "finished_at",
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
        "created_at": _timestamp(row["created_at"]),
        "started_at": _timestamp(row["started_at"]),
        "finished_at": _timestamp(row["finished_at"]),
    }


class RowReferenceField(serializers.Field):
    """A row by id (a JSON number, returned as an int) or by name (a JSON string, returned stripped as a
    str): the type of the JSON value says which, so a name of digits is not mistaken for an id."""

    default_error_messages = {
        "invalid": "give an id as a number (e.g. 12) or a name as a string",
        "blank": "a name cannot be blank",
        "max_length": "a name has at most 100 characters",
    }

    def to_internal_value(self, data: Any) -> int | str:
        if isinstance(data, bool) or not isinstance(data, (int, str)):
            self.fail("invalid")
        if isinstance(data, int):
            if not 1 <= data < 2**63:
                self.fail("invalid")
            return data
        name = data.strip()
        if not name:
            self.fail("blank")
        if len(name) > 100:
            self.fail("max_length")
        return name

    def to_representation(self, value: int | str) -> int | str:
        return value


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

    starts_at = serializers.DateTimeField(required=False, help_text="default: now")
    ends_at = serializers.DateTimeField(required=False, allow_null=True, help_text="default: until released")
    name = serializers.CharField(max_length=100, required=False, allow_blank=True)
    organization = serializers.SlugField(required=False, help_text="slug; needed if you are in several")


class ExtendSerializer(serializers.Serializer):
    ends_at = serializers.DateTimeField()


class BurnInSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = BurnInReport
        fields = ["passed", "summary", "failed_checks", "created_at"]


class ServerSerializer(serializers.ModelSerializer):
    server_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    image = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    address = serializers.CharField(source="ssh_address", read_only=True)
    ssh_command = serializers.SerializerMethodField()
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
            "burnin",
        ]

    def get_ssh_command(self, obj: Node) -> str | None:
        if not obj.ssh_address:
            return None
        return ssh_command(obj.ssh_user, obj.ssh_address, obj.ssh_port)

    @extend_schema_field(BurnInSummarySerializer(allow_null=True))
    def get_burnin(self, obj: Node) -> dict[str, Any] | None:
        report = obj.burnin_reports.filter(reservation=obj.reservation).order_by("-created_at").first()
        return BurnInSummarySerializer(report).data if report else None


# --- operators ------------------------------------------------------------------------------------


class BurnInReportSerializer(serializers.ModelSerializer):
    class Meta:
        model = BurnInReport
        fields = [
            "id",
            "passed",
            "summary",
            "failed_checks",
            "report",
            "operation",
            "reservation",
            "created_at",
        ]


class AdminNodeSerializer(serializers.ModelSerializer):
    server_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    site = serializers.CharField(source="rack.site.slug", read_only=True, allow_null=True, default=None)
    rack = serializers.CharField(source="rack.name", read_only=True, allow_null=True, default=None)
    owner = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    image = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = Node
        fields = [
            "id",
            "name",
            "serial",
            "server_type",
            "site",
            "rack",
            "state",
            "state_changed_at",
            "state_reason",
            "power_state",
            "power_checked_at",
            "bmc_protocol",
            "bmc_address",
            "bmc_port",
            "bmc_last_contact_at",
            "bmc_last_error",
            "hold_requested",
            "owner",
            "reservation",
            "image",
            "ssh_address",
            "primary_address",
        ]


class AdminNodeDetailSerializer(AdminNodeSerializer):
    history = serializers.SerializerMethodField(help_text="the node's audit trail, newest first (last 100)")
    recent_operations = serializers.SerializerMethodField(help_text="last 20 operations")
    latest_burnin = serializers.SerializerMethodField()

    class Meta(AdminNodeSerializer.Meta):
        fields = [
            *AdminNodeSerializer.Meta.fields,
            "driver_info",
            "history",
            "recent_operations",
            "latest_burnin",
        ]

    @extend_schema_field(AuditEventSerializer(many=True))
    def get_history(self, obj: Node) -> Any:
        return AuditEventSerializer(
            obj.audit_events.select_related("node").order_by("-created_at", "-id")[:100], many=True
        ).data

    @extend_schema_field(OperationSummarySerializer(many=True))
    def get_recent_operations(self, obj: Node) -> Any:
        ops = (
            obj.operations.select_related("node")
            .prefetch_related("steps")
            .order_by("-created_at", "-id")[:20]
        )
        return OperationSummarySerializer(ops, many=True).data

    @extend_schema_field(BurnInReportSerializer(allow_null=True))
    def get_latest_burnin(self, obj: Node) -> dict[str, Any] | None:
        report = obj.burnin_reports.order_by("-created_at").first()
        return BurnInReportSerializer(report).data if report else None


class QuarantinedNodeSerializer(AdminNodeSerializer):
    latest_burnin = serializers.SerializerMethodField(help_text="why it is here: its latest burn-in")

    class Meta(AdminNodeSerializer.Meta):
        fields = [*AdminNodeSerializer.Meta.fields, "latest_burnin"]

    @extend_schema_field(BurnInSummarySerializer(allow_null=True))
    def get_latest_burnin(self, obj: Node) -> dict[str, Any] | None:
        report = obj.burnin_reports.order_by("-created_at").first()
        return BurnInSummarySerializer(report).data if report else None


class MaintenanceSerializer(serializers.Serializer):
    on = serializers.BooleanField()
    reason = serializers.CharField(required=False, allow_blank=True, max_length=300)
    when_free = serializers.BooleanField(
        default=False,
        help_text=(
            "on=true for a server that is not free now (a customer holds it, or it is being prepared or "
            "wiped): put it on hold once its wipe ends instead of returning it to the pool; it takes no new "
            "bookings meanwhile (hold_requested). A free server goes on hold at once."
        ),
    )


class ReimageSerializer(serializers.Serializer):
    image = serializers.CharField(
        max_length=100, required=False, help_text="image slug; default: the node's current image"
    )
    force = serializers.BooleanField(
        default=False, help_text="reimage even if the node is leased to a customer"
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=1000)


class PowerSerializer(serializers.Serializer):
    action = serializers.ChoiceField(choices=["on", "off", "reset", "pxe"])
    force = serializers.BooleanField(
        default=False,
        help_text="power off, reset or set pxe boot even if the node is leased to a customer (its server "
        "is live); power on needs no force",
    )


class ReasonSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=1000, help_text="what was repaired")


class KeepInQuarantineSerializer(serializers.Serializer):
    reason = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=1000,
        help_text="the review's note for the node's timeline (audited); default: kept out of the pool after review",
    )


class NodeFilterSpecSerializer(serializers.Serializer):
    state = serializers.CharField(
        required=False,
        help_text="available or active; without it, both: servers in other states (quarantined, "
        "maintenance, error, busy) cannot be reimaged and are left out",
    )
    site = serializers.SlugField(required=False)
    server_type = serializers.SlugField(required=False)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1, "description": "a node's id"},
            {"type": "string", "minLength": 1, "maxLength": 100, "description": "a node's name"},
        ]
    }
)
class NodeReferenceField(RowReferenceField):
    """A node by id (a JSON number) or by name (a JSON string). Never both readings of one value: NetBox
    allows a node named "1234", which must not be confused with the node whose id is 1234."""

    default_error_messages = {
        "invalid": 'give a node id as a number (e.g. 12) or a node name as a string (e.g. "gpu-01")',
        "blank": "a node name cannot be blank",
        "max_length": "a node name has at most 100 characters",
    }


class RolloutCreateSerializer(serializers.Serializer):
    nodes = serializers.ListField(
        child=NodeReferenceField(),
        required=False,
        min_length=1,
        help_text="the nodes, in order: each a node id as a number or a node name as a string "
        '(a string is always a name, even "1234")',
    )
    filter = NodeFilterSpecSerializer(required=False, help_text="instead of nodes: every node matching this")
    image = serializers.CharField(max_length=100, required=False, help_text="image slug")
    max_parallel = serializers.IntegerField(min_value=1, max_value=1000)
    failure_budget = serializers.IntegerField(
        min_value=0,
        max_value=MAX_ROLLOUT_NODES,
        default=0,
        help_text="halt once more than this many nodes fail; a rollout covers at most "
        f"{MAX_ROLLOUT_NODES} nodes, so {MAX_ROLLOUT_NODES} never halts",
    )
    force = serializers.BooleanField(default=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if bool(attrs.get("nodes")) == bool(attrs.get("filter")):
            raise serializers.ValidationError({"nodes": ["give either nodes or filter (not both)"]})
        return attrs


class RolloutCancelSerializer(serializers.Serializer):
    reason = serializers.CharField(max_length=1000, help_text="why the rollout is cancelled (audited)")


class RolloutNodeSerializer(serializers.Serializer):
    node_id = serializers.IntegerField()
    node = serializers.CharField()
    state = serializers.ChoiceField(
        choices=["pending", "running", "succeeded", "failed", "cancelled", "refused"],
        help_text="pending: not started yet (never, once the rollout is cancelling, cancelled or halted); "
        "refused: could not be started (see error), a failure; "
        "cancelled: skipped, its customer released the server during the rollout, not a failure",
    )
    operation = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)


class RolloutCountsSerializer(serializers.Serializer):
    total = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField(help_text="failed or refused: these spend the failure budget")
    skipped = serializers.IntegerField(
        help_text="reimage cancelled because the customer released the server meanwhile: not a failure"
    )
    running = serializers.IntegerField()
    pending = serializers.IntegerField()


class RolloutSerializer(serializers.ModelSerializer):
    image = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    cancelled_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, help_text="the operator who cancelled it, if anyone did"
    )
    counts = serializers.SerializerMethodField()
    nodes = serializers.SerializerMethodField()
    halted_reason = serializers.SerializerMethodField()

    class Meta:
        model = Rollout
        fields = [
            "id",
            "state",
            "message",
            "halted_reason",
            "image",
            "max_parallel",
            "failure_budget",
            "force",
            "requested_by",
            "cancelled_by",
            "cancel_reason",
            "counts",
            "nodes",
            "created_at",
            "finished_at",
        ]

    def _progress(self, obj: Rollout) -> Any:
        from provisioner.services.rollouts import progress

        cache = self.context.setdefault("_rollout_progress", {})
        if obj.pk not in cache:
            cache[obj.pk] = progress(obj)
        return cache[obj.pk]

    @extend_schema_field(RolloutCountsSerializer)
    def get_counts(self, obj: Rollout) -> dict[str, int]:
        p = self._progress(obj)
        return {
            "total": p.total,
            "succeeded": p.succeeded,
            "failed": p.failed,
            "skipped": p.skipped,
            "running": p.running,
            "pending": p.pending,
        }

    @extend_schema_field(RolloutNodeSerializer(many=True))
    def get_nodes(self, obj: Rollout) -> Any:
        p = self._progress(obj)
        names = dict(Node.objects.filter(pk__in=obj.node_ids).values_list("pk", "name"))
        rows = []
        for nid in obj.node_ids:
            op = p.operations.get(nid)
            if op is not None:
                rows.append(
                    {
                        "node_id": nid,
                        "node": names.get(nid, str(nid)),
                        "state": op.state,
                        "operation": op.pk,
                        "error": op.error,
                    }
                )
            elif nid in p.refused:
                rows.append(
                    {
                        "node_id": nid,
                        "node": names.get(nid, str(nid)),
                        "state": "refused",
                        "operation": None,
                        "error": p.refused[nid],
                    }
                )
            else:
                rows.append(
                    {
                        "node_id": nid,
                        "node": names.get(nid, str(nid)),
                        "state": "pending",
                        "operation": None,
                        "error": "",
                    }
                )
        return rows

    def get_halted_reason(self, obj: Rollout) -> str | None:
        return obj.message if obj.state == Rollout.State.HALTED else None
