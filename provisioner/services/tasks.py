"""Tasks queued through Django's Tasks API: the periodic power sweep and NetBox inventory sync (by the
scheduler), and webhook delivery passes. Services, not engine: they change inventory, power and webhook
records, not operations."""

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


@task(queue_name="webhooks")
def deliver_webhooks(endpoint_id: int) -> dict[str, int]:
    """One delivery pass over a webhook endpoint (see services/webhooks.py): its due deliveries, in order,
    with short timeouts. On its own queue, so that slow customer endpoints never hold operations back."""
    from provisioner.services.webhooks import deliver_pass

    return deliver_pass(endpoint_id)


@task(queue_name="inventory")
def check_network_drift() -> dict[str, int]:
    """Read every managed switch port back and record drift (see services/network_drift.py); no repair."""
    from provisioner.services.network_drift import check_network_drift as check

    return check().counts()
