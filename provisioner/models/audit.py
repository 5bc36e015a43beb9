"""The audit trail: who did what, when, from which state to which, and why."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from provisioner.models.tenancy import OrgScopedQuerySet


class AuditEventQuerySet(OrgScopedQuerySet):
    org_field = "organization"


class AuditEvent(models.Model):
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    # actor: a user, or a label for the system ("worker:ab12", "scheduler", "lab")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=100, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    operation = models.ForeignKey("provisioner.Operation", null=True, blank=True, on_delete=models.SET_NULL)
    organization = models.ForeignKey(
        "provisioner.Organization", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    node = models.ForeignKey(
        "provisioner.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="audit_events"
    )
    reservation = models.ForeignKey(
        "provisioner.Reservation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="audit_events",
    )
    action = models.CharField(max_length=50)  # "transition", "reserve", "release", "power_drift", ...
    from_state = models.CharField(max_length=20, blank=True)
    to_state = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} {self.from_state}->{self.to_state}"
