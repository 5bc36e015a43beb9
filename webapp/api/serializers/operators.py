"""Request and response shapes of the operator endpoints on nodes and reservations (/api/v1/admin/nodes,
quarantine, reservations): the fleet with its BMC records, node actions, burn-in reports and an operator's
release of a customer's reservation. Staff only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from provisioner import hardware
from provisioner.models import BurnInReport, Node
from provisioner.services.network_drift import node_network_view
from webapp.api.serializers.common import (
    AuditEventSerializer,
    BurnInSummarySerializer,
    OperationSummarySerializer,
)


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
    owner = serializers.SlugRelatedField(
        slug_field="slug",
        read_only=True,
        allow_null=True,
        help_text="the organization leasing it; null: none",
    )
    image = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True, help_text="null: never deployed"
    )

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


class NodeNetworkSerializer(serializers.Serializer):
    switch = serializers.CharField(help_text="the switch the boot NIC is cabled to")
    port = serializers.CharField()
    expected_vlans = serializers.ListField(
        child=serializers.IntegerField(), help_text="the VLANs the node's state requires; empty: none"
    )
    observed_vlan = serializers.IntegerField(
        allow_null=True,
        help_text="the port's VLAN as the switch last reported it; null: on none or never read",
    )
    checked_at = serializers.DateTimeField(allow_null=True, help_text="when the switch was last read")
    drift = serializers.CharField(
        help_text="why the port is not where the node's state requires; blank: it is"
    )
    private_address = serializers.IPAddressField(allow_null=True)
    public_address = serializers.IPAddressField(allow_null=True)
    tenant_network = serializers.CharField(allow_null=True, help_text="CIDR of its reservation's network")
    tenant_vlan = serializers.IntegerField(allow_null=True)


class NetworkCheckSerializer(serializers.Serializer):
    repair = serializers.BooleanField(
        default=False, help_text="move the port back to the VLAN the node's state requires when it drifted"
    )


class AdminNodeDetailSerializer(AdminNodeSerializer):
    history = serializers.SerializerMethodField(help_text="the node's audit trail, newest first (last 100)")
    recent_operations = serializers.SerializerMethodField(help_text="last 20 operations")
    latest_burnin = serializers.SerializerMethodField()
    network = serializers.SerializerMethodField(
        help_text="its switch port (network-managed sites): switch, port, expected and observed VLAN, drift; "
        "null where the site's network is not managed"
    )

    class Meta(AdminNodeSerializer.Meta):
        fields = [
            *AdminNodeSerializer.Meta.fields,
            "driver_info",
            "history",
            "recent_operations",
            "latest_burnin",
            "network",
        ]

    @extend_schema_field(NodeNetworkSerializer(allow_null=True))
    def get_network(self, obj: Node) -> dict[str, Any] | None:
        return node_network_view(obj)

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


class OperatorReleaseSerializer(serializers.Serializer):
    reason = serializers.CharField(
        max_length=1000,
        help_text="why the operator releases it: the customer reads it (as the reservation's status and in "
        "their audit trail)",
    )


class AdminNodeCheckedSerializer(AdminNodeDetailSerializer):
    """The node detail with what its drivers' validation finds in its record: why a node is left out of the
    pool reservations draw from (customers see it only as a server not offered)."""

    driver_problems = serializers.SerializerMethodField(
        help_text="per driver interface (power, deploy, burnin), the first problem validation finds in the "
        "node's record for provisioning, naming the field; empty when it passes"
    )

    class Meta(AdminNodeDetailSerializer.Meta):
        fields = [*AdminNodeDetailSerializer.Meta.fields, "driver_problems"]

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


class WarmPoolSerializer(serializers.Serializer):
    server_type = serializers.CharField(source="server_type.slug")
    size = serializers.IntegerField(help_text="servers kept deployed, burned in and powered on")
    image = serializers.CharField(
        source="image.slug",
        allow_null=True,
        help_text="what they run (the type's most booked image by default)",
    )
    warm = serializers.IntegerField(help_text="warm servers ready to hand over")
    warming = serializers.IntegerField(help_text="servers being deployed and burned in for the pool")


class WarmPoolUpdateSerializer(serializers.Serializer):
    size = serializers.IntegerField(min_value=0, max_value=100_000)
    image = serializers.CharField(
        required=False, allow_null=True, help_text="an image slug; null: the type's most booked image"
    )
