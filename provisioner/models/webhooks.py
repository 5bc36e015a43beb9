"""Webhooks: an organization's endpoints, the deliveries of its events to them, and each attempt.

Deliveries are made from the event stream (provisioner.events), after the fact, by
provisioner.services.webhooks: the dispatcher reads events past each endpoint's cursor and writes a
delivery row per event and endpoint; a delivery pass (a task on the ``webhooks`` queue) sends them. No
transaction that changes the fleet ever waits on a customer's HTTP server.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from provisioner import crypto
from provisioner.models.tenancy import OrgScopedQuerySet


class WebhookEndpointQuerySet(OrgScopedQuerySet):
    org_field = "organization"


class WebhookEndpoint(models.Model):
    """Where an organization wants its events POSTed, which types, and the secret that signs them.

    The secret is encrypted at rest (provisioner.crypto, as BMC passwords are): it must be read back to
    sign each delivery. It is shown to the customer once, when the endpoint is created."""

    organization = models.ForeignKey(
        "provisioner.Organization", on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    url = models.CharField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    # Event types to deliver (Event.Type values); empty: every type.
    event_types = models.JSONField(default=list, blank=True)
    secret_encrypted = models.TextField()
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    # The dispatcher's cursor: the stream's events up to this sequence have been considered for this
    # endpoint (a new endpoint starts at the end of the stream: it gets what happens from then on).
    after_sequence = models.BigIntegerField(default=0)
    # A delivery pass holds the endpoint until then (one pass per endpoint at a time: its order).
    lease_until = models.DateTimeField(null=True, blank=True)
    # When a delivery pass was queued for it and has not started yet (no second one is queued meanwhile).
    queued_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.url} ({self.organization_id})"

    def __repr__(self) -> str:
        return f"<WebhookEndpoint {self.pk} url={self.url!r} secret=***>"

    @property
    def secret(self) -> str:
        return crypto.decrypt(self.secret_encrypted)

    @secret.setter
    def secret(self, value: str) -> None:
        self.secret_encrypted = crypto.encrypt(value)

    def wants(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class WebhookDeliveryQuerySet(OrgScopedQuerySet):
    org_field = "endpoint__organization"


class WebhookDelivery(models.Model):
    """One event for one endpoint: pending until an attempt is answered 2xx (succeeded) or a day of
    retries has passed (failed: given up). Deliveries with the same ``ordering_key`` (one server, one
    reservation) to one endpoint are sent in the order of their events: a later one waits while an
    earlier one is pending."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SUCCEEDED = "succeeded", "Delivered"
        FAILED = "failed", "Given up"

    TEST_EVENT_TYPE = "webhook.test"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    # null for a test delivery ("send test event"), which no event of the stream stands behind
    event = models.ForeignKey(
        "provisioner.Event", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    event_type = models.CharField(max_length=50)
    # "node:<id>", "reservation:<id>", or "" (no order to keep with other deliveries)
    ordering_key = models.CharField(max_length=40, blank=True)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    # When the event happened (the lag of a delivery is measured from it)
    event_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    # Seconds from the event to the answer that delivered it
    lag_seconds = models.FloatField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_latency_ms = models.FloatField(null=True, blank=True)

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        indexes = [
            models.Index(
                fields=["endpoint", "id"],
                name="webhook_pending",
                condition=models.Q(state="pending"),
            ),
            models.Index(fields=["next_attempt_at"], name="webhook_due", condition=models.Q(state="pending")),
        ]

    def __str__(self) -> str:
        return f"delivery {self.pk} of {self.event_type} to endpoint {self.endpoint_id} ({self.state})"


class WebhookAttemptQuerySet(OrgScopedQuerySet):
    org_field = "delivery__endpoint__organization"


class WebhookAttempt(models.Model):
    """One POST of a delivery: the delivery log."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Delivered (2xx)"
        HTTP_ERROR = "http_error", "Answered with an error status"
        TIMEOUT = "timeout", "No answer in time"
        UNREACHABLE = "unreachable", "Could not connect"

    delivery = models.ForeignKey(WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField()
    outcome = models.CharField(max_length=12, choices=Outcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    latency_ms = models.FloatField()

    objects = WebhookAttemptQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"attempt of delivery {self.delivery_id}: {self.outcome}"
