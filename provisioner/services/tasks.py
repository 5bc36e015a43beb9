"""Periodic fleet-wide work queued by the scheduler through Django's Tasks API: the power sweep and the
NetBox inventory sync. Services, not engine: they change inventory and power records, not operations."""

from __future__ import annotations

from django_tasks import task


@task(queue_name="power")
def sync_fleet_power() -> dict[str, int]:
    """Poll every enrolled BMC and record power state and drift (see services/power.py)."""
    from provisioner.services.power import sync_power

    return sync_power()


@task(queue_name="inventory")
def sync_netbox_inventory() -> dict[str, int]:
    """Bring the inventory in line with NetBox as configured in settings (see services/netbox.py)."""
    from provisioner.services.netbox import sync_from_settings

    return sync_from_settings().counts()
