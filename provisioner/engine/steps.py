"""The step functions. Each is idempotent: run again after a crash, it finds its work done or redoes it."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from provisioner import crypto, events, hardware
from provisioner.drivers.base import (
    BootDevice,
    BootSetting,
    DeployRequest,
    HandoverRequest,
    PersonalizeRequest,
)
from provisioner.engine.context import StepContext
from provisioner.engine.registry import step
from provisioner.errors import BurnInFailed, InvalidRequest
from provisioner.lifecycle import process_event
from provisioner.models import BurnInReport, LogLine, Node, Operation
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
        raise BurnInFailed(f"burn-in failed: {reasons}")


@step("burnin_only", timeout=1800, attempts=1)
def burnin_only(ctx: StepContext) -> None:
    """Operator re-run on a quarantined server: record the report, leave the node where it is."""
    row = _run_burnin(ctx)
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
