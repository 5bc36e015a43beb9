"""Prices of server time. Usage itself is not stored: it is derived from allocations and handovers when read
(provisioner.services.metering), so it can never disagree with them."""

from __future__ import annotations

from django.db import models


class ServerTypePrice(models.Model):
    """The price of one server of ``server_type`` per hour, from ``effective_from`` until the next price of the
    type takes effect. Prices are added, never edited: a change of price applies from its ``effective_from``
    on and never to time already used (services.metering.set_price refuses a start in the past)."""

    server_type = models.ForeignKey("provisioner.ServerType", on_delete=models.PROTECT, related_name="prices")
    cents_per_hour = models.PositiveIntegerField()
    currency = models.CharField(max_length=3)
    effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=100, blank=True)

    class Meta:
        ordering = ["server_type", "effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["server_type", "effective_from"], name="uniq_server_type_price_start"
            ),
        ]

    def __str__(self) -> str:
        return (
            f"{self.server_type_id}: {self.cents_per_hour} {self.currency} cents/h from {self.effective_from}"
        )
