"""Counts kept as rows, so that every process's share is counted: a failed BMC call in a worker is seen by
the web process that answers a Prometheus scrape (prometheus-client's own counters live in one process)."""

from __future__ import annotations

import logging

from django.db import DatabaseError, IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone

log = logging.getLogger(__name__)


class BmcCallErrorQuerySet(models.QuerySet["BmcCallErrors"]):
    def add(self, protocol: str, kind: str, count: int = 1) -> None:
        """Count ``count`` failed BMC calls of ``protocol`` and ``kind`` (errors.bmc_error_kind). One
        UPDATE, or an INSERT for the first of its kind (a concurrent first INSERT loses and updates). Never
        raises: a count that cannot be written is logged, and the call's own error is what matters."""
        if count <= 0:
            return
        now = timezone.now()
        row = self.filter(protocol=protocol, kind=kind)
        try:
            if row.update(count=F("count") + count, last_at=now):
                return
            try:
                with transaction.atomic():
                    self.create(protocol=protocol, kind=kind, count=count, last_at=now)
            except IntegrityError:
                row.update(count=F("count") + count, last_at=now)
        except DatabaseError:
            log.warning("could not count %d failed %s BMC call(s) (%s)", count, protocol, kind, exc_info=True)


class BmcCallErrors(models.Model):
    """How many power and boot-device calls to BMCs failed, by BMC protocol and kind of failure, since
    the installation began (neocloud_bmc_call_errors_total). Written where driver errors are met: the
    engine's power driver (provisioner.hardware) and the fleet power sync."""

    protocol = models.CharField(max_length=20)
    kind = models.CharField(max_length=20)
    count = models.PositiveBigIntegerField(default=0)
    last_at = models.DateTimeField()

    objects = BmcCallErrorQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "BMC call errors"
        constraints = [models.UniqueConstraint(fields=["protocol", "kind"], name="uniq_bmc_call_error_kind")]

    def __str__(self) -> str:
        return f"{self.protocol} {self.kind}: {self.count}"
