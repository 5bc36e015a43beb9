"""The scheduler's side of fast-track (provisioner/boot/fast_track.py): an agent that stopped heartbeating is
powered off through its server's BMC, and the server is back on the cold path."""

from __future__ import annotations

import logging

from django.utils import timezone

from provisioner import hardware
from provisioner.drivers.base import BootDevice, BootSetting
from provisioner.lifecycle import Actor, record
from provisioner.models import Node
from provisioner.states import PowerStateChoice

log = logging.getLogger("provisioner.fast_track")


def expire(now=None, actor: Actor | None = None) -> int:
    """Power off the servers whose fast-tracked agent missed its heartbeats, with their boot device set back
    to the disk (what a wipe's power-off leaves). Each is claimed first by clearing its fast-track fields on
    the values read (a heartbeat that got there first wins, and then the agent lives on). A BMC that fails
    leaves the node's power unknown and the failure logged: the fleet's power sync and the next netboot
    (which powers off first) settle it. Returns how many were powered off."""
    actor = actor or Actor.system("scheduler")
    now = now or timezone.now()
    gone = Node.objects.filter(fast_track_ticket__isnull=False, fast_track_until__lte=now)
    powered_off = 0
    for node in gone:
        claimed = Node.objects.filter(
            pk=node.pk, fast_track_ticket=node.fast_track_ticket_id, fast_track_until=node.fast_track_until
        ).update(fast_track_ticket=None, fast_track_until=None)
        if not claimed:
            continue
        reason = (
            f"fast-track: its deploy agent missed its heartbeats (last at {node.agent_heartbeat_at:%H:%M:%S}"
            " UTC); powered off, back on the cold path"
            if node.agent_heartbeat_at
            else "fast-track: its deploy agent never heartbeated; powered off, back on the cold path"
        )
        try:
            driver = hardware.power_driver(node)
            try:
                driver.power_off()
                driver.set_boot_device(BootSetting(BootDevice.DISK, persistent=True))
                state = driver.get_power_state().value
            finally:
                driver.close()
        except Exception as exc:  # the BMC may be down: reported, the node's power is then unknown
            log.warning("%s: powering off after fast-track failed: %s", node.name, exc)
            Node.objects.filter(pk=node.pk).update(
                power_state=PowerStateChoice.UNKNOWN, bmc_last_error=str(exc)[:300]
            )
            record(actor, "fast_track_expired", node=node, reason=f"{reason}; the power-off failed: {exc}")
            continue
        Node.objects.filter(pk=node.pk).update(
            power_state=state, power_checked_at=timezone.now(), bmc_last_contact_at=timezone.now()
        )
        record(actor, "fast_track_expired", node=node, reason=reason)
        log.info("%s: %s", node.name, reason)
        powered_off += 1
    return powered_off
