"""The step functions. Each is idempotent: run again after a crash, it finds its work done or redoes it."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from provisioner import crypto, events, hardware, networking
from provisioner.drivers.base import (
    BootDevice,
    BootSetting,
    DeployRequest,
    HandoverRequest,
    PersonalizeRequest,
)
from provisioner.drivers.switch import SwitchDriver
from provisioner.engine import switch_batch
from provisioner.engine.context import StepContext
from provisioner.engine.registry import step
from provisioner.errors import BurnInFailed, InvalidRequest, NeocloudError, SwitchCommandFailed
from provisioner.lifecycle import process_event
from provisioner.models import (
    BurnInReport,
    LogLine,
    NetworkAttachment,
    Node,
    Operation,
    SiteNetwork,
    TenantNetwork,
)
from provisioner.states import NodeEvent, NodeState, OperationKind, PowerStateChoice


def _advance(
    ctx: StepContext, event: NodeEvent, *, from_state: NodeState, to_state: NodeState, reason: str = ""
) -> None:
    """Move the node unless a previous run of this step already did."""
    ctx.refresh()
    if ctx.node.state == to_state:
        return
    process_event(
        ctx.node, event, actor=ctx.actor, operation=ctx.operation, expected_state=from_state, reason=reason
    )


@step("begin_deploy", timeout=30)
def begin_deploy(ctx: StepContext) -> None:
    _advance(ctx, NodeEvent.DEPLOY, from_state=NodeState.RESERVED, to_state=NodeState.DEPLOYING)


@step("begin_reimage", timeout=30)
def begin_reimage(ctx: StepContext) -> None:
    _advance(
        ctx,
        NodeEvent.REIMAGE,
        from_state=NodeState.ACTIVE,
        to_state=NodeState.DEPLOYING,
        reason=ctx.params.get("reason", "reimage requested"),
    )


def _provisioning_keypair(ctx: StepContext) -> tuple[str, str]:
    """A fresh key pair per deployment (stored encrypted on the operation so a resumed step reuses it)."""
    from provisioner.sshkeys import generate_keypair

    stored = ctx.operation.params.get("provisioning_key")
    if stored is None and (ctx.operation.kind == OperationKind.BURNIN or ctx.params.get("warm")):
        # A burn-in re-run, or a warm server taken by a reservation, reaches the node with the key of the
        # deployment that installed its OS.
        earlier = (
            Operation.objects.filter(node=ctx.node, params__has_key="provisioning_key")
            .exclude(pk=ctx.operation.pk)
            .order_by("-created_at")
            .first()
        )
        stored = earlier.params["provisioning_key"] if earlier else None
    if stored:
        return crypto.decrypt(stored["private"]), stored["public"]
    private, public = generate_keypair("ed25519")
    params = dict(ctx.operation.params)
    params["provisioning_key"] = {"private": crypto.encrypt(private), "public": public}
    Operation.objects.filter(pk=ctx.operation.pk).update(params=params)
    ctx.operation.params = params
    return private, public


def _authorized_keys(ctx: StepContext) -> list[str]:
    reservation = ctx.operation.reservation
    if reservation is not None:
        return list(reservation.authorized_keys)
    return list(ctx.params.get("authorized_keys", []))


def _personalize_warm(ctx: StepContext) -> None:
    """A warm server taken by a reservation: its OS is deployed and burned in already; it gets fresh host
    keys generated on it and its customer's keys, over SSH with the warm pool's provisioning key."""
    node = ctx.node
    private, _ = _provisioning_keypair(ctx)
    ctx.log(f"{node.name} comes from the warm pool: new host keys and the customer's keys, no deploy")
    result = hardware.deploy_driver(node).personalize(
        PersonalizeRequest(
            node_name=node.name,
            address=node.ssh_address,
            port=node.ssh_port,
            username=node.ssh_user,
            expected_fingerprints=node.host_key_fingerprints,
            provisioning_private_key=private,
            customer_keys=_authorized_keys(ctx),
            private_network=_private_network(ctx),
        ),
        ctx,
    )
    Node.objects.filter(pk=node.pk).update(
        host_key_fingerprints=result.host_key_fingerprints, known_hosts=result.known_hosts
    )


@step("deploy", timeout=900, attempts=2)
def deploy(ctx: StepContext) -> None:
    if ctx.params.get("warm"):
        _personalize_warm(ctx)
        return
    node = ctx.node
    image = node.image if node.image_id else None
    if "image_id" in ctx.params:
        from provisioner.models import Image

        image = Image.objects.get(pk=ctx.params["image_id"])
    if image is None:
        raise InvalidRequest(f"no image chosen for {node.name}")
    _, public = _provisioning_keypair(ctx)
    request = DeployRequest(
        node_name=node.name,
        boot_mac=node.boot_mac,
        # the site's image mirror when it has one: servers fetch images on their own site's network
        image_url=image.url_for_site(node.rack.site if node.rack else None),
        image_sha256=image.sha256,
        image_format=image.format,
        hostname=node.name,
        authorized_keys=_authorized_keys(ctx),
        provisioning_public_key=public,
        extra={"operation_id": ctx.operation.pk, "image_size": image.size_bytes},
        private_network=_private_network(ctx),
    )
    ctx.log(f"deploying {image.name} to {node.name}")
    try:
        result = hardware.deploy_driver(node).deploy(request, ctx)
    except Exception:
        # Left in the deploy ramdisk or in the half-configured OS (our key and the customer's on it): off.
        _power_off_after_failure(ctx, "the deploy failed")
        raise
    Node.objects.filter(pk=node.pk).update(
        ssh_address=result.address,
        ssh_port=result.ssh_port,
        host_key_fingerprints=result.host_key_fingerprints,
        known_hosts=result.known_hosts,
        image=image,
        # the deploy booted the server through its BMC and reached its OS: its power is known now
        power_state=PowerStateChoice.ON,
        power_checked_at=timezone.now(),
    )
    ctx.log(
        f"{node.name} is up at {result.address}; host keys {', '.join(result.host_key_fingerprints.values())}"
    )


@step("begin_burnin", timeout=30)
def begin_burnin(ctx: StepContext) -> None:
    _advance(ctx, NodeEvent.DEPLOYED, from_state=NodeState.DEPLOYING, to_state=NodeState.BURNING_IN)


def _run_burnin(ctx: StepContext) -> BurnInReport:
    node = ctx.node
    expectations = node.server_type.burnin_expectations()
    thresholds = dict(node.server_type.burnin_thresholds or {})
    ctx.log(f"burn-in of {node.name}: expecting {expectations['gpu_count']}x {expectations['gpu_model']}")
    private, _ = _provisioning_keypair(ctx)
    # a warm server, burned in when it joined the pool, gets a short health re-check before handover
    profile = "short" if ctx.params.get("warm") else "full"
    report = hardware.burnin_driver(node).run(
        node.name,
        {
            "expect": expectations,
            "thresholds": thresholds,
            "provisioning_private_key": private,
            "profile": profile,
        },
        ctx,
    )
    failed = [c for c in report.get("checks", []) if not c.get("passed")]
    with transaction.atomic():  # the burnin.verdict event commits with the report
        row = BurnInReport.objects.create(
            node=node,
            operation=ctx.operation,
            reservation=ctx.operation.reservation,
            passed=bool(report.get("passed")),
            summary=report.get("summary", ""),
            failed_checks=[
                {"name": c.get("name"), "gpu": c.get("gpu"), "message": c.get("message")} for c in failed
            ],
            report=report,
        )
        events.burnin_verdict(row)
    ctx.log(f"burn-in {'passed' if row.passed else 'FAILED'}: {row.summary}")
    return row


@step("burnin", timeout=1800, attempts=2)
def burnin(ctx: StepContext) -> None:
    row = _run_burnin(ctx)
    if not row.passed:
        reasons = "; ".join(c["message"] for c in row.failed_checks) or row.summary
        # The server goes to quarantine: its port goes to the quarantine VLAN before the operation ends.
        _quarantine_port(ctx)
        raise BurnInFailed(f"burn-in failed: {reasons}")


@step("burnin_only", timeout=1800, attempts=1)
def burnin_only(ctx: StepContext) -> None:
    """Operator re-run on a quarantined server: record the report, leave the node where it is."""
    try:
        row = _run_burnin(ctx)
    except Exception:
        _quarantine_port(ctx)  # the plan's network_quarantine does not run after a failed step
        raise
    if row.passed:
        ctx.log("all checks passed: the server can be returned to the pool")


@step("handover", timeout=300)
def handover(ctx: StepContext) -> None:
    node = ctx.node
    private, public = _provisioning_keypair(ctx)
    result = hardware.deploy_driver(node).handover(
        HandoverRequest(
            node_name=node.name,
            address=node.ssh_address,
            port=node.ssh_port,
            username=node.ssh_user,
            expected_fingerprints=node.host_key_fingerprints,
            provisioning_private_key=private,
            provisioning_public_key=public,
            customer_keys=_authorized_keys(ctx),
        ),
        ctx,
    )
    Node.objects.filter(pk=node.pk).update(
        host_key_fingerprints=result.host_key_fingerprints, known_hosts=result.known_hosts
    )
    ctx.log(f"handed over: {result.ssh_command}; provisioning key removed")


@step("finish_provision", timeout=30)
def finish_provision(ctx: StepContext) -> None:
    ctx.refresh()
    if ctx.node.state == NodeState.BURNING_IN:
        _require_tenant_vlan(ctx)
    _advance(ctx, NodeEvent.BURNIN_PASSED, from_state=NodeState.BURNING_IN, to_state=NodeState.ACTIVE)


@step("begin_warm_up", timeout=30)
def begin_warm_up(ctx: StepContext) -> None:
    _advance(ctx, NodeEvent.WARM_UP, from_state=NodeState.AVAILABLE, to_state=NodeState.WARMING)


@step("finish_warm_up", timeout=30)
def finish_warm_up(ctx: StepContext) -> None:
    _advance(ctx, NodeEvent.WARMED, from_state=NodeState.WARMING, to_state=NodeState.WARM)


@step("begin_clean", timeout=30)
def begin_clean(ctx: StepContext) -> None:
    ctx.refresh()
    if ctx.node.state == NodeState.CLEANING:
        return
    process_event(
        ctx.node, NodeEvent.CLEAN, actor=ctx.actor, operation=ctx.operation, reason="wipe before reuse"
    )


def _power_off_after_failure(ctx: StepContext, what: str) -> None:
    """Power the node off through its BMC after its step failed, so nothing keeps running on it (a failed
    wipe would leave the released customer's OS up, with their keys). Best effort: the BMC may be why the
    step failed; the step's own error is what the operation reports either way."""
    try:
        driver = hardware.power_driver(ctx.node)
        try:
            driver.power_off()
            state = driver.get_power_state()
        finally:
            driver.close()
    except Exception as exc:  # reported; the step's own failure is raised by the caller
        ctx.log(f"{what}; powering {ctx.node.name} off failed too: {exc}", level=LogLine.Level.WARNING)
        return
    Node.objects.filter(pk=ctx.node.pk).update(
        power_state=state.value,
        power_checked_at=timezone.now(),
        fast_track_ticket=None,
        fast_track_until=None,
    )
    ctx.log(f"{what}: {ctx.node.name} powered off so that nothing keeps running on it")


# The Ansible wipe waits at most 6 h while the agent keeps progressing (drivers.ansible.drivers.WIPE_TIMEOUT):
# a large disk takes hours; a stalled wipe fails after 10 minutes without progress.
@step("wipe", timeout=6 * 3600 + 600)
def wipe(ctx: StepContext) -> None:
    node = ctx.node
    _require_cleaning_vlan(ctx)
    try:
        hardware.deploy_driver(node).wipe(node.name, ctx)
    except Exception:
        # The released customer's OS (firmware fell back to the disk) or a half-done erase: off.
        _power_off_after_failure(ctx, "the wipe failed")
        raise
    # the wipe ends by powering the server off through its BMC (or, fast-tracked, with its agent up in the
    # ramdisk): that is when its power was last known
    fast_tracked = Node.objects.filter(pk=node.pk, fast_track_ticket__isnull=False).exists()
    Node.objects.filter(pk=node.pk).update(
        ssh_address="",
        host_key_fingerprints={},
        known_hosts="",
        image=None,
        power_state=PowerStateChoice.ON if fast_tracked else PowerStateChoice.OFF,
        power_checked_at=timezone.now(),
    )
    ctx.log(f"{node.name} wiped")


@step("finish_clean", timeout=30)
def finish_clean(ctx: StepContext) -> None:
    """Back to the pool; or on hold, when an operator asked for one while the node was not free (its row
    locked, so a hold asked for now is either seen here or applied by set_maintenance to a free node)."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=ctx.node.pk)
        if node.state in (NodeState.AVAILABLE, NodeState.MAINTENANCE):
            return  # a previous run of this step got there
        if node.hold_requested:
            asked = node.hold_requested  # process_event clears it and reloads the node
            process_event(
                node,
                NodeEvent.MAINTAIN,
                actor=ctx.actor,
                operation=ctx.operation,
                expected_state=NodeState.CLEANING,
                reason=f"wiped and put on hold, as an operator asked: {asked}",
                hold_requested="",
            )
            ctx.log(f"{node.name} wiped and put on hold ({asked})")
            return
        process_event(
            node,
            NodeEvent.CLEANED,
            actor=ctx.actor,
            operation=ctx.operation,
            expected_state=NodeState.CLEANING,
        )


@step("power_action", timeout=120)
def power_action(ctx: StepContext) -> None:
    driver = hardware.power_driver(ctx.node)
    action = ctx.params.get("action")
    try:
        if action == "on":
            driver.power_on()
        elif action == "off":
            driver.power_off(soft=bool(ctx.params.get("soft")))
        elif action == "reset":
            driver.reset()
        elif action == "pxe":
            driver.set_boot_device(BootSetting(BootDevice.PXE))
        else:
            raise InvalidRequest(f"unknown power action {action!r}; use on, off, reset or pxe")
        state = driver.get_power_state()
    finally:
        driver.close()
    # whatever ran on the server (a fast-tracked agent too) was power cycled or stopped by this action
    Node.objects.filter(pk=ctx.node.pk).update(
        power_state=state.value,
        power_checked_at=timezone.now(),
        bmc_last_contact_at=timezone.now(),
        fast_track_ticket=None,
        fast_track_until=None,
    )
    ctx.log(f"power {action}: node is now {state.value}")


# --- the network (issue 18): a network-managed node's switch port follows its lifecycle -------------------
# Provisioning VLAN while deploying and burning in; the tenant VLAN after handover (our key removed) and before
# the customer is told; the cleaning VLAN before the wipe; the quarantine VLAN when burn-in fails. A node at
# a site without a SiteNetwork is left as cabled: each step logs one line and does nothing. A switch error
# fails the step (SwitchUnreachable and SwitchCommandFailed are retried, the others not) and the operation's
# failure puts the node in its error state as for any step.


def _managed(ctx: StepContext) -> SiteNetwork | None:
    site_network = networking.site_network_of(ctx.node)
    if site_network is None:
        ctx.log(f"{ctx.node.name}: its site's network is not managed; the switch port is left as cabled")
    return site_network


def _move_port(
    ctx: StepContext, vlan: int, why: str, *, validate: bool = False, driver: SwitchDriver | None = None
) -> None:
    """Put the node's port on ``vlan``, read it back in the same session and record what the switch says.
    ``driver``: the node's switch driver, already in a session (``with driver:``) the caller shares.

    :raises InvalidNodeData: the node's cabling or switch record is unusable (not retried).
    :raises UnknownSwitchPort, SwitchUnreachable, SwitchAuthFailed, SwitchCommandFailed:
    """
    node = ctx.node
    if driver is None:
        own, port = hardware.node_switch_port(node)
        with own:
            _move_port(ctx, vlan, why, validate=validate, driver=own)
        return
    port = node.switch_port
    if validate:
        driver.validate([port])  # the port exists on the switch itself, before its first move
    driver.set_access_vlans({port: vlan})
    seen = driver.port_state(port)
    _record_port(node, seen.vlan)
    if seen.vlan != vlan:
        raise SwitchCommandFailed(
            f"switch {node.switch_name} reports port {port} on VLAN {seen.vlan} after moving it to VLAN {vlan}"
        )
    ctx.log(f"{node.name}: switch {node.switch_name} port {port} on VLAN {vlan} ({why})")


def _record_port(node: Node, vlan: int | None) -> None:
    Node.objects.filter(pk=node.pk).update(
        switch_vlan=vlan, switch_checked_at=timezone.now(), network_drift=""
    )
    node.switch_vlan = vlan


def _attachment(ctx: StepContext) -> NetworkAttachment | None:
    return networking.live_attachment(ctx.node, ctx.operation.reservation_id)


def _private_network(ctx: StepContext) -> dict[str, object] | None:
    """The config drive's private_network for the node's reservation (None: unmanaged site, no booking)."""
    attachment = _attachment(ctx)
    if attachment is None:
        return None
    network = attachment.network
    return {"address": attachment.private_address, "prefix": network.prefix, "gateway": network.gateway}


def _provisioning_move(operation: Operation) -> switch_batch.Move | None:
    site_network = networking.site_network_of(operation.node)
    if site_network is None:
        return None
    return switch_batch.Move(
        operation, operation.node, site_network.provisioning_vlan, "provisioning network"
    )


@step("network_provisioning", timeout=120)
def network_provisioning(ctx: StepContext) -> None:
    """Before deploy or a burn-in re-run: check the port exists on the switch, then put it on the
    provisioning VLAN (boot service, image mirror, deploy agents); with it, in the same switch session, the
    ports of every other node of that switch standing at this step (engine/switch_batch.py)."""
    site_network = _managed(ctx)
    if site_network is None:
        return
    switch_batch.run(ctx, "network_provisioning", _provisioning_move)


def _tenant_move(operation: Operation) -> switch_batch.Move | None:
    if networking.site_network_of(operation.node) is None:
        return None
    attachment = networking.live_attachment(operation.node, operation.reservation_id)
    if attachment is None:
        return None
    network = attachment.network
    reached = switch_batch.reached_at(operation, "network_tenant")
    return switch_batch.Move(
        operation,
        operation.node,
        network.vlan,
        f"tenant network {network.cidr}",
        extra=attachment,
        settled=attachment.configured_at is not None and attachment.configured_at >= reached,
    )


def _tenant_join(driver: SwitchDriver, moves) -> None:
    """Each VLAN's gateway once, each server's public address published, then the ports on their tenant
    VLANs, in that order, in one read, the changes and one read back (``join_tenant_networks``)."""
    driver.join_tenant_networks(
        {m.extra.network.vlan: m.extra.network.gateway_cidr for m in moves},
        {m.extra.public_address: m.extra.private_address for m in moves if m.extra.public_address},
        {m.port: m.vlan for m in moves},
    )


def _tenant_joined(driver: SwitchDriver, moves) -> None:
    NetworkAttachment.objects.filter(pk__in=[m.extra.pk for m in moves]).update(configured_at=timezone.now())


@step("network_tenant", timeout=120)
def network_tenant(ctx: StepContext) -> None:
    """After handover (our key is gone), before the customer is told: the tenant network's gateway on the
    switch, the server's public address published to its private one, the port on the tenant VLAN; with it,
    in the same switch session, every other node of that switch whose handover is done and stands at this
    step (engine/switch_batch.py)."""
    site_network = _managed(ctx)
    if site_network is None:
        return
    attachment = _attachment(ctx)
    node = ctx.node
    try:
        if attachment is None:
            raise InvalidRequest(
                f"{node.name} has no tenant network for reservation {ctx.operation.reservation_id}: it is not "
                "handed over on the provisioning network"
            )
        switch_batch.run(ctx, "network_tenant", _tenant_move, apply=_tenant_join, after=_tenant_joined)
        if attachment.public_address:
            ctx.log(
                f"{node.name}: public address {attachment.public_address} reaches {attachment.private_address}"
            )
    except Exception as exc:
        last = (
            not (isinstance(exc, NeocloudError) and exc.retryable)
            or ctx.step.attempts >= ctx.step.max_attempts
        )
        if last:
            # The customer's OS is up with their keys, on the provisioning network: off, never handed over.
            _power_off_after_failure(ctx, "the move to the tenant network failed")
        raise


def _require_tenant_vlan(ctx: StepContext) -> None:
    """finish_provision's guard: a managed node is never handed over while off its tenant VLAN."""
    if networking.site_network_of(ctx.node) is None:
        return
    attachment = _attachment(ctx)
    if attachment is None or ctx.node.switch_vlan != attachment.network.vlan:
        raise InvalidRequest(
            f"{ctx.node.name} is not on its tenant network (its port was last seen on VLAN "
            f"{ctx.node.switch_vlan}): not handed over"
        )


def _cleaning_move(operation: Operation) -> switch_batch.Move | None:
    site_network = networking.site_network_of(operation.node)
    if site_network is None:
        return None
    leaving = list(networking.attachments_leaving(operation.node))
    return switch_batch.Move(
        operation,
        operation.node,
        site_network.cleaning_vlan,
        "cleaning network",
        extra=leaving,
        settled=not leaving,
    )


def _clean_leave(driver: SwitchDriver, moves) -> None:
    """The public addresses withdrawn, then the ports on the cleaning VLAN: one read, the changes, one read
    back (``leave_tenant_networks``)."""
    driver.leave_tenant_networks(
        [a.public_address for m in moves for a in m.extra if a.public_address],
        {m.port: m.vlan for m in moves},
    )


@step("network_cleaning", timeout=120)
def network_cleaning(ctx: StepContext) -> None:
    """After release, before the wipe: withdraw the server's public addresses, put its port on the cleaning
    VLAN, end its attachments; a tenant network left empty (not an organization's shared one still in use)
    loses its gateway on the switch and its VLAN goes back to the pool. Every other node of that switch
    standing at this step is cleaned in the same switch session (engine/switch_batch.py)."""
    site_network = _managed(ctx)
    if site_network is None:
        return

    def end_attachments(driver: SwitchDriver, moves) -> None:
        for move in moves:
            for attachment in move.extra:
                emptied = networking.end_attachment(attachment)
                if emptied is not None:
                    _remove_network(ctx, driver, emptied)

    switch_batch.run(ctx, "network_cleaning", _cleaning_move, apply=_clean_leave, after=end_attachments)


def _remove_network(ctx: StepContext, driver: SwitchDriver, network: TenantNetwork) -> None:
    """A network whose last server left: its gateway off the switches, its VLAN and subnet back to the pool.
    Should this fail (after the attachment ended), the network drift job finishes it (remove_empty_networks)."""
    driver.remove_vlan_gateway(network.vlan)
    # the gateway was made on the switch of every server that joined the network
    for name in networking.switches_of(network) - {driver.access.name}:
        with hardware.switch_driver(name) as other:
            other.remove_vlan_gateway(network.vlan)
    if networking.release_network(network):
        ctx.log(f"tenant network {network.cidr} (VLAN {network.vlan}) released: its last server left")


def _require_cleaning_vlan(ctx: StepContext) -> None:
    """The wipe's guard: a managed node is never wiped while on a tenant network."""
    site_network = networking.site_network_of(ctx.node)
    if site_network is None:
        return
    ctx.refresh()
    if ctx.node.switch_vlan != site_network.cleaning_vlan:
        raise InvalidRequest(
            f"{ctx.node.name} is not on the cleaning network (its port was last seen on VLAN "
            f"{ctx.node.switch_vlan}): not wiped"
        )


def _quarantine_port(ctx: StepContext) -> None:
    """A failed burn-in: the port to the quarantine VLAN (nothing but our control plane reachable). The
    burn-in's failure stands whatever happens here; a move that fails is logged and left to the drift check."""
    site_network = networking.site_network_of(ctx.node)
    if site_network is None:
        return
    try:
        _move_port(ctx, site_network.quarantine_vlan, "quarantine network")
    except NeocloudError as exc:
        ctx.log(f"moving {ctx.node.name} to the quarantine network failed: {exc}", level=LogLine.Level.ERROR)


@step("network_quarantine", timeout=120)
def network_quarantine(ctx: StepContext) -> None:
    """After a burn-in re-run on a quarantined server: back to the quarantine VLAN."""
    site_network = _managed(ctx)
    if site_network is None:
        return
    _move_port(ctx, site_network.quarantine_vlan, "quarantine network")
