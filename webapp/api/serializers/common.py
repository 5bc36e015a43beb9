"""Shapes both audiences read: the error body, operations with their steps and log, audit events, a
burn-in summary, and the field that takes a row by id or by name."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from provisioner.models import AuditEvent, BurnInReport, LogLine, Operation, Step

LOG_LINES_PER_RESPONSE = 500


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="stable machine-readable code, e.g. not_enough_capacity")
    message = serializers.CharField(help_text="a sentence for people")
    details = serializers.JSONField(required=False, help_text="per-field problems for validation errors")


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label", read_only=True)
    node = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)

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
    step = serializers.SlugRelatedField(
        slug_field="name", read_only=True, allow_null=True, help_text="null: a line of no step"
    )

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
            "wait_for",
            "waiting_since",
            "wait_deadline",
            "created_at",
            "started_at",
            "finished_at",
        ]
        extra_kwargs = {
            "wait_for": {
                "help_text": "while state is waiting: what the operation waits for (no worker is held)"
            },
            "waiting_since": {"help_text": "while waiting: when the wait began"},
            "wait_deadline": {
                "help_text": "while waiting: when the wait fails (the step is then retried or failed)"
            },
        }


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


class BurnInSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = BurnInReport
        fields = ["passed", "summary", "failed_checks", "created_at"]
