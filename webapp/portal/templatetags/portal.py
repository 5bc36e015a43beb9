"""Template helpers: state badges, progress, the ssh command line, the org switcher."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils.html import format_html

from provisioner import sshkeys
from provisioner.services.metering import format_cents
from webapp.portal.access import current_membership, memberships

register = template.Library()

# Badge colour per state: green = usable, blue = working (with a spinner), red = needs attention,
# grey = on hold or over.
_TONE = {
    "available": "green",
    "active": "green",
    "succeeded": "green",
    "passed": "green",
    "reserved": "teal",
    "scheduled": "teal",
    "deploying": "blue",
    "burning_in": "blue",
    "provisioning": "blue",
    "releasing": "blue",
    "cleaning": "blue",
    "enrolling": "blue",
    "running": "blue",
    "pending": "blue",
    "waiting": "amber",
    "quarantined": "red",
    "error": "red",
    "failed": "red",
    "halted": "red",
    "cancelling": "amber",
    "maintenance": "grey",
    "released": "grey",
    "ended": "grey",
    "cancelled": "grey",
    "skipped": "grey",
    "not_checked": "grey",
    "not_supported": "amber",
    "on": "green",
    "off": "grey",
    "unknown": "amber",
}
_SPINNING = {
    "deploying",
    "burning_in",
    "provisioning",
    "releasing",
    "cleaning",
    "enrolling",
    "running",
    "cancelling",
}


@register.simple_tag
def state_badge(state: str, label: str = "", spin: bool = True) -> str:
    """A coloured badge for any node, reservation, operation or step state; a spinner while it works
    (``spin=False`` for a state in the past, such as a timeline's)."""
    state = str(state or "unknown")
    text = label or state.replace("_", " ")
    tone = _TONE.get(state, "grey")
    if spin and state in _SPINNING:
        return format_html(
            '<span class="badge badge-{} state-{}"><span class="spinner"></span>{}</span>', tone, state, text
        )
    return format_html('<span class="badge badge-{} state-{}">{}</span>', tone, state, text)


@register.simple_tag
def progress_bar(percent: Any, state: str = "") -> str:
    pct = max(0, min(100, int(percent or 0)))
    tone = _TONE.get(str(state), "blue")
    return format_html(
        '<div class="progress" role="progressbar" aria-valuenow="{}" aria-valuemin="0" aria-valuemax="100">'
        '<div class="progress-fill progress-{}" style="width: {}%"></div></div>',
        pct,
        tone,
        pct,
    )


@register.filter
def ssh_command(node: Any) -> str:
    """The command a customer types to log in to a handed-over server."""
    return sshkeys.ssh_command(node.ssh_user, node.ssh_address, int(node.ssh_port or 22))


@register.filter
def lines(text: str) -> list[str]:
    """The non-empty lines of ``text`` (a known_hosts file): shown one element a line, so each key starts
    a line of its own on screen and when selected by hand."""
    return [line for line in str(text or "").splitlines() if line.strip()]


@register.filter
def step_percent(operation: Any) -> int:
    """Percent of an operation's steps finished, from its prefetched steps."""
    steps = list(operation.steps.all())
    if not steps:
        return 0
    done = sum(1 for s in steps if s.state in ("succeeded", "skipped"))
    return int(100 * done / len(steps))


@register.filter
def current_step(operation: Any) -> Any:
    steps = list(operation.steps.all())
    return next((s for s in steps if s.state in ("running", "failed")), None) or next(
        (s for s in steps if s.state == "pending"), None
    )


def _span(seconds: float) -> str:
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@register.filter
def step_time(step: Any) -> str:
    """Time spent in a step (its last attempt, waits included): "1 min 12 s"; "12 s so far" while it runs or
    waits; "" before it started. What the reservation and node pages show per phase."""
    from django.utils import timezone

    if step.started_at is None:
        return ""
    if step.finished_at is not None:
        return _span((step.finished_at - step.started_at).total_seconds())
    if step.state in ("running", "waiting"):
        return f"{_span((timezone.now() - step.started_at).total_seconds())} so far"
    return ""


@register.filter
def phase_summary(op: Any) -> str:
    """Time per phase of a provisioning (POST, stream, first boot, burn-in, handover), "" for other work:
    "POST into the ramdisk 24 s · stream 3 s · first boot 26 s · burn-in 4 s · handover 2 s"."""
    if op.kind not in ("provision", "reimage", "warm_up"):
        return ""
    from provisioner.services.phases import phase_times

    return " · ".join(f"{name} {_span(seconds)}" for name, seconds in phase_times(op))


@register.filter
def humanize_name(value: str) -> str:
    return str(value).replace("_", " ")


@register.filter
def dollars(cents: Any) -> str:
    return f"${int(cents or 0) / 100:,.2f}"


@register.filter
def money(cents: Any, currency: str = "") -> str:
    """Integer cents with their currency: ``123456|money:"USD"`` → ``1,234.56 USD`` (no float on the way)."""
    return format_cents(int(cents or 0), currency or None)


@register.filter
def hours(seconds: Any) -> str:
    """Seconds as hours with two decimals: ``5400|hours`` → ``1.50``."""
    return f"{int(seconds or 0) / 3600:,.2f}"


@register.inclusion_tag("portal/_org_switcher.html", takes_context=True)
def org_switcher(context: template.Context) -> dict:
    request = context["request"]
    current = current_membership(request)
    return {
        "request": request,
        "memberships": memberships(request),
        "current": current,
        "csrf_token": context.get("csrf_token"),
    }
