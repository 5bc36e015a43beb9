"""Durable operations: ordered, idempotent steps with timeouts, retries and a log."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from provisioner.models.tenancy import OrgScopedQuerySet
from provisioner.states import OperationKind, OperationState, StepState


class OperationQuerySet(OrgScopedQuerySet):
    org_field = "reservation__organization"


class Operation(models.Model):
    kind = models.CharField(max_length=20, choices=OperationKind.choices)
    node = models.ForeignKey("provisioner.Node", on_delete=models.CASCADE, related_name="operations")
    reservation = models.ForeignKey(
        "provisioner.Reservation", null=True, blank=True, on_delete=models.SET_NULL, related_name="operations"
    )
    rollout = models.ForeignKey(
        "provisioner.Rollout", null=True, blank=True, on_delete=models.SET_NULL, related_name="operations"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    params = models.JSONField(default=dict, blank=True)
    state = models.CharField(
        max_length=20, choices=OperationState.choices, default=OperationState.PENDING, db_index=True
    )
    current_step = models.PositiveIntegerField(default=0)
    error_code = models.CharField(max_length=50, blank=True)
    error = models.TextField(blank=True)
    # Which worker runs it now, and when that worker last proved it is alive.
    worker_id = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    recoveries = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # A wait (state waiting): what it waits for, since when, until when at most, and when it is looked at
    # again if no event arrives first. ``wake_requested``: an event came while a worker was running it.
    wait_for = models.CharField(max_length=120, blank=True)
    waiting_since = models.DateTimeField(null=True, blank=True)
    wait_deadline = models.DateTimeField(null=True, blank=True)
    recheck_at = models.DateTimeField(null=True, blank=True)
    wake_requested = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = OperationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]  # the id breaks ties: limit/offset pages never skip or repeat
        indexes = [
            models.Index(fields=["state", "heartbeat_at"]),
            models.Index(fields=["state", "recheck_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of {self.node} ({self.state})"

    @property
    def progress_percent(self) -> int:
        steps = list(self.steps.all())
        if not steps:
            return 0
        done = sum(1 for s in steps if s.state in (StepState.SUCCEEDED, StepState.SKIPPED))
        return int(100 * done / len(steps))


class Step(models.Model):
    operation = models.ForeignKey(Operation, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=50)
    state = models.CharField(max_length=20, choices=StepState.choices, default=StepState.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    timeout_seconds = models.FloatField(default=300)
    error_code = models.CharField(max_length=50, blank=True)
    error = models.TextField(blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # What the current attempt has done so far, kept across its waits (a ticket id, a phase); cleared when
    # a new attempt starts.
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["operation", "index"]
        constraints = [models.UniqueConstraint(fields=["operation", "index"], name="uniq_step_index")]

    def __str__(self) -> str:
        return f"{self.operation_id}.{self.index} {self.name} ({self.state})"


class LogLine(models.Model):
    """One line of an operation's log: engine messages and Ansible events, in order."""

    class Level(models.TextChoices):
        DEBUG = "debug", "debug"
        INFO = "info", "info"
        WARNING = "warning", "warning"
        ERROR = "error", "error"

    operation = models.ForeignKey(Operation, on_delete=models.CASCADE, related_name="log_lines")
    step = models.ForeignKey(Step, null=True, blank=True, on_delete=models.CASCADE, related_name="log_lines")
    created_at = models.DateTimeField(auto_now_add=True)
    level = models.CharField(max_length=10, choices=Level.choices, default=Level.INFO)
    message = models.TextField()
    data = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.created_at:%H:%M:%S} {self.level} {self.message[:80]}"


class Rollout(models.Model):
    """A bulk rolling reimage: at most ``max_parallel`` nodes at once; stops after ``failure_budget`` failures."""

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        HALTED = "halted", "Halted (failure budget exceeded)"
        # Cancelled by an operator: nothing more starts, the reimages already started run to completion.
        CANCELLING = "cancelling", "Cancelling (started reimages finishing)"
        CANCELLED = "cancelled", "Cancelled"

    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    image = models.ForeignKey("provisioner.Image", null=True, blank=True, on_delete=models.PROTECT)
    node_ids = models.JSONField()
    max_parallel = models.PositiveIntegerField()
    failure_budget = models.PositiveIntegerField()
    force = models.BooleanField(default=False)
    state = models.CharField(max_length=20, choices=State.choices, default=State.RUNNING)
    message = models.TextField(blank=True)
    cancelled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    cancel_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"rollout {self.pk} ({self.state})"

    @property
    def cancellable(self) -> bool:
        """Whether an operator can still cancel it: only while it may start more nodes."""
        return self.state == self.State.RUNNING
