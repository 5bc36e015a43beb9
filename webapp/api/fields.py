"""Serializer fields the API's serializers share."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils.dateparse import parse_datetime
from rest_framework import serializers


class WindowDateTimeField(serializers.DateTimeField):
    """A time that bounds a reservation window: ISO 8601 with its time zone, an offset (+02:00) or Z.
    A time without one is refused rather than taken as UTC: "2026-12-08T04:35:41" from a client in UTC+2
    would book two hours off without anyone noticing. (The portal's fields say "UTC" on the form, and
    the browser's datetime-local input cannot send an offset: the portal keeps reading them as UTC.)"""

    default_error_messages = {
        "naive": (
            "give the time zone: add an offset such as +02:00, or Z for UTC (for example {example}); "
            "a time without one is not taken as UTC"
        ),
    }

    def to_internal_value(self, value: Any) -> dt.datetime:
        if isinstance(value, str):
            try:
                parsed = parse_datetime(value.strip())
            except ValueError:
                parsed = None  # out of range: DRF's own parsing says so in its words
            if parsed is not None and parsed.tzinfo is None:
                self.fail(
                    "naive", example=f"{parsed.replace(tzinfo=dt.UTC).isoformat().replace('+00:00', 'Z')}"
                )
        return super().to_internal_value(value)
