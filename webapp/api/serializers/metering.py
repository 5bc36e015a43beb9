"""Request and response shapes of metering: prices (operators), statements and spend (customers)."""

from __future__ import annotations

from rest_framework import serializers

from provisioner.models import ServerTypePrice


class SpendSerializer(serializers.Serializer):
    amount_cents = serializers.IntegerField(help_text="what it has cost so far, in cents")
    currency = serializers.CharField(help_text="ISO 4217")


class PriceSerializer(serializers.ModelSerializer):
    server_type = serializers.SlugRelatedField(slug_field="slug", read_only=True)

    class Meta:
        model = ServerTypePrice
        fields = [
            "id",
            "server_type",
            "cents_per_hour",
            "currency",
            "effective_from",
            "created_at",
            "created_by",
        ]


class PriceCreateSerializer(serializers.Serializer):
    server_type = serializers.CharField(help_text="server type slug")
    cents_per_hour = serializers.IntegerField(
        min_value=0, max_value=2**31 - 1, help_text="per server and hour, in cents"
    )
    currency = serializers.CharField(required=False, max_length=3, help_text="default: NEOCLOUD_CURRENCY")
    effective_from = serializers.DateTimeField(required=False, help_text="default: now; never in the past")


class UsageRecordSerializer(serializers.Serializer):
    reservation = serializers.IntegerField()
    server = serializers.CharField()
    server_type = serializers.CharField()
    kind = serializers.CharField(
        help_text="on_demand (priced as used) or reserved (a window, priced as booked)"
    )
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    seconds = serializers.IntegerField()
    cents_per_hour = serializers.IntegerField()
    currency = serializers.CharField()
    amount_cents = serializers.IntegerField()


class ServerTypeUsageSerializer(serializers.Serializer):
    server_type = serializers.CharField()
    seconds = serializers.IntegerField()
    gpu_hours = serializers.FloatField()
    amount_cents = serializers.IntegerField()


class DayUsageSerializer(serializers.Serializer):
    date = serializers.DateField()
    gpu_hours = serializers.DictField(child=serializers.FloatField(), help_text="per server type")


class StatementSummarySerializer(serializers.Serializer):
    month = serializers.CharField(help_text="YYYY-MM")
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    as_of = serializers.DateTimeField(help_text="usage counted until then (the month's end once it is over)")
    complete = serializers.BooleanField()
    currency = serializers.CharField()
    total_cents = serializers.IntegerField(help_text="the sum of the records' amount_cents")


class StatementSerializer(StatementSummarySerializer):
    organization = serializers.CharField()
    by_server_type = ServerTypeUsageSerializer(many=True)
    gpu_hours_per_day = DayUsageSerializer(many=True)
    records = UsageRecordSerializer(many=True)
