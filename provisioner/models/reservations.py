"""Reservations of whole servers, the allocations that bind nodes to them, deploy tickets, burn-in reports."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import models

from provisioner.models.tenancy import OrgScopedQuerySet
from provisioner.states import ReservationState


class Reservation(models.Model):
    """N servers of one type for a window [starts_at, ends_at). ``ends_at`` None means until released."""

    organization = models.ForeignKey(
        "provisioner.Organization", on_delete=models.PROTECT, related_name="reservations"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    server_type = models.ForeignKey(
        "provisioner.ServerType", on_delete=models.PROTECT, related_name="reservations"
    )
    count = models.PositiveIntegerField()
    image = models.ForeignKey("provisioner.Image", on_delete=models.PROTECT, related_name="reservations")
    ssh_keys = models.ManyToManyField("provisioner.SSHKey", blank=True, related_name="reservations")
    # The public keys to install, copied at reservation time. Deleting an SSHKey takes it out of open
    # reservations (services.tenancy.delete_ssh_key), never off a server already handed over.
    authorized_keys = models.JSONField(default=list)
    name = models.CharField(max_length=100, blank=True)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    state = models.CharField(max_length=20, choices=ReservationState.choices, db_index=True)
    status_message = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    released_at = models.DateTimeField(null=True, blank=True)

    objects = OrgScopedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]  # the id breaks ties: limit/offset pages never skip or repeat
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=~models.Q(idempotency_key=""),
                name="uniq_reservation_idempotency_key",
            ),
            models.CheckConstraint(
                condition=models.Q(ends_at__isnull=True) | models.Q(ends_at__gt=models.F("starts_at")),
                name="reservation_window_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"reservation {self.pk}: {self.count}x {self.server_type.slug} for {self.organization}"

    # A window that begins later than this from now has not been started: a booking starts its window at
    # once only within a minute of now (services.reservations.START_NOW_SLACK), the scheduler once it is
    # due; the rest is room for clocks that differ between hosts.
    NOT_STARTED_MARGIN = dt.timedelta(minutes=10)

    def not_started(self, now: dt.datetime) -> bool:
        """Whether nothing of this reservation can have started by ``now``: no server reserved or handed
        over for it, no operation, nothing used or billed (its window begins over NOT_STARTED_MARGIN later).
        Callers that show it skip reading those."""
        return self.starts_at > now + self.NOT_STARTED_MARGIN


class Allocation(models.Model):
    """A node bound to a reservation for its window. Active allocations of one node never overlap:
    on PostgreSQL an exclusion constraint enforces it (migration 0002); on SQLite reservations are made
    in IMMEDIATE transactions, which serialize writers."""

    reservation = models.ForeignKey(Reservation, on_delete=models.CASCADE, related_name="allocations")
    node = models.ForeignKey("provisioner.Node", on_delete=models.PROTECT, related_name="allocations")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["starts_at"]
        indexes = [models.Index(fields=["node", "active"])]

    def __str__(self) -> str:
        return f"{self.node} for reservation {self.reservation_id}"


class DeployTicket(models.Model):
    """One deploy attempt of a node. The iPXE script may be served once; it carries a fresh agent token
    whose hash is stored here. Instructions may be fetched once with that token."""

    node = models.ForeignKey("provisioner.Node", on_delete=models.CASCADE, related_name="deploy_tickets")
    operation = models.ForeignKey("provisioner.Operation", on_delete=models.CASCADE, related_name="+")
    instructions = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    token_hash = models.CharField(max_length=64, blank=True, db_index=True)
    script_served_at = models.DateTimeField(null=True, blank=True)
    instructions_fetched_at = models.DateTimeField(null=True, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    result = models.JSONField(null=True, blank=True)
    result_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"deploy ticket {self.pk} for node {self.node_id}"


class BurnInReportQuerySet(OrgScopedQuerySet):
    org_field = "reservation__organization"


class BurnInReport(models.Model):
    node = models.ForeignKey("provisioner.Node", on_delete=models.CASCADE, related_name="burnin_reports")
    operation = models.ForeignKey(
        "provisioner.Operation", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    reservation = models.ForeignKey(
        Reservation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    passed = models.BooleanField()
    summary = models.TextField()
    failed_checks = models.JSONField(default=list)
    report = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BurnInReportQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"burn-in of node {self.node_id}: {'passed' if self.passed else 'failed'}"
