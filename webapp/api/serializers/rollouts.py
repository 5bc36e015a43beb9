"""Request and response shapes of rolling reimages (/api/v1/admin/reimage-rollouts). Staff only."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from provisioner.models import Node, Rollout
from provisioner.services.rollouts import MAX_ROLLOUT_NODES, progress
from webapp.api.serializers.common import RowReferenceField


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
    image = serializers.SlugRelatedField(
        slug_field="slug", read_only=True, allow_null=True, help_text="null: each node keeps its image"
    )
    requested_by = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True, help_text="null: started by the system"
    )
    cancelled_by = serializers.SlugRelatedField(
        slug_field="username",
        read_only=True,
        allow_null=True,
        help_text="the operator who cancelled it, if anyone did",
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
