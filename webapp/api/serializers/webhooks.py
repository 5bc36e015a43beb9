"""Webhook endpoints and their delivery log, as the API shows them. The secret appears in one answer only:
the one that creates the endpoint."""

from __future__ import annotations

from rest_framework import serializers

from provisioner.models import Event, WebhookAttempt, WebhookDelivery, WebhookEndpoint

EVENT_TYPES_HELP = "event types to deliver (" + ", ".join(Event.Type.values) + "); empty or left out: all"


class WebhookSerializer(serializers.ModelSerializer):
    organization = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    event_types = serializers.ListField(
        child=serializers.CharField(), read_only=True, help_text=EVENT_TYPES_HELP
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["id", "organization", "url", "description", "event_types", "active", "created_at"]
        read_only_fields = fields


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        help_text="signs every delivery (HMAC-SHA256, the Neocloud-Signature header): shown only in this "
        "response, store it now"
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class WebhookCreateSerializer(serializers.Serializer):
    url = serializers.CharField(
        max_length=500,
        help_text="https URL deliveries are POSTed to (http only to 127.0.0.1, ::1, localhost)",
    )
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=50), required=False, max_length=50, help_text=EVENT_TYPES_HELP
    )
    active = serializers.BooleanField(required=False, default=True)
    organization = serializers.SlugField(required=False, help_text="slug; needed if you are in several")


class WebhookUpdateSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=500, required=False)
    description = serializers.CharField(max_length=200, required=False, allow_blank=True)
    event_types = serializers.ListField(
        child=serializers.CharField(max_length=50), required=False, max_length=50, help_text=EVENT_TYPES_HELP
    )
    active = serializers.BooleanField(
        required=False, help_text="false: nothing is sent until it is true again"
    )


class WebhookAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["at", "outcome", "status_code", "error", "latency_ms"]
        read_only_fields = fields


class WebhookDeliverySerializer(serializers.ModelSerializer):
    event = serializers.IntegerField(
        source="event.sequence",
        read_only=True,
        allow_null=True,
        help_text="the event's id in the stream (/api/v1/events); null for a test event",
    )
    attempt_log = WebhookAttemptSerializer(many=True, read_only=True, help_text="each try, oldest first")

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "event",
            "event_type",
            "state",
            "attempts",
            "created_at",
            "next_attempt_at",
            "finished_at",
            "lag_seconds",
            "last_status_code",
            "last_error",
            "last_latency_ms",
            "attempt_log",
        ]
        read_only_fields = fields
