"""Where a provisioning's time went, per phase, for the portal: the firmware's self-test into the deploy
ramdisk (POST), the image stream, the first boot (a second POST and the OS coming up), burn-in and handover.

Worked out from what is recorded anyway: the deploy ticket's times (created when the server was power
cycled into the ramdisk, its script served once the firmware's POST was done, its instructions fetched when
the agent started, its result when the image was written and checked) and the steps' start and end. A
fast-tracked deploy has no POST into the ramdisk (the agent took the ticket at its next heartbeat), a warm
server neither a stream nor a first boot (new host keys instead)."""

from __future__ import annotations

from provisioner.models import DeployTicket, Operation


def phase_times(op: Operation) -> list[tuple[str, float]]:
    """(phase, seconds) in order, for the phases of ``op`` that have ended."""
    steps = {step.name: step for step in op.steps.all()}
    phases: list[tuple[str, float]] = []
    deploy = steps.get("deploy")
    if deploy is not None and deploy.started_at and deploy.finished_at:
        if op.params.get("warm"):
            phases.append(("new host keys", (deploy.finished_at - deploy.started_at).total_seconds()))
        else:
            ticket = (
                DeployTicket.objects.filter(operation=op, result__status="ok")
                .exclude(instructions__action="erase")
                .order_by("-created_at")
                .first()
            )
            if ticket and ticket.script_served_at and ticket.instructions_fetched_at and ticket.result_at:
                fast = bool((deploy.data or {}).get("fast_track"))
                phases.append(
                    (
                        "agent pickup (fast-track)" if fast else "POST into the ramdisk",
                        (ticket.script_served_at - ticket.created_at).total_seconds(),
                    )
                )
                phases.append(("stream", (ticket.result_at - ticket.instructions_fetched_at).total_seconds()))
                phases.append(("first boot", (deploy.finished_at - ticket.result_at).total_seconds()))
    for name, label in (("burnin", "burn-in"), ("handover", "handover")):
        step = steps.get(name)
        if step is not None and step.started_at and step.finished_at:
            phases.append((label, (step.finished_at - step.started_at).total_seconds()))
    return phases
