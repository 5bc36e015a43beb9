"""Operator pages (staff only): the fleet grid, node detail with history and logs, node actions,
bulk rolling reimage and its progress."""

from __future__ import annotations

from collections import Counter

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from provisioner.errors import NeocloudError
from provisioner.filtersets import NodeFilterSet
from provisioner.lifecycle import Actor
from provisioner.models import (
    AuditEvent,
    BurnInReport,
    InventorySync,
    LogLine,
    Node,
    Operation,
    Rollout,
    ServerType,
    Site,
)
from provisioner.services import network_drift, warm_pool
from provisioner.services import nodes as node_services
from provisioner.services import rollouts as rollout_services
from provisioner.states import (
    FINISHED_OPERATION_STATES,
    LEASED_STATES,
    TRANSIENT_STATES,
    NodeState,
    OperationKind,
)
from webapp.portal.access import staff_required
from webapp.portal.burnin_reports import report_view
from webapp.portal.forms import ReimageForm, RolloutForm, model_choices
from webapp.portal.wording import sentence

LOG_LINES_PER_OPERATION = 200
TIMELINE_EVENTS = 100  # the newest; the box scrolls, and says how many there are in all
FLEET_PAGE_SIZE = 100


@staff_required
def fleet(request: HttpRequest) -> HttpResponse:
    base = Node.objects.for_user(request.user).select_related(
        "server_type", "rack__site", "owner", "reservation"
    )
    node_filter = NodeFilterSet(request.GET or None, queryset=base)
    filter_errors: list[str] = []
    if node_filter.is_bound and not node_filter.is_valid():
        # e.g. ?state=bogus from a stale link: say so, and keep the filters that are valid
        filter_errors = [
            f"{name.replace('_', ' ')} {request.GET.get(name, '')!r}: {' '.join(str(e) for e in errs)}"
            for name, errs in node_filter.errors.items()
        ]
    nodes = node_filter.qs
    # The grid: counts per (site, server type) and state, over the whole fleet (filters narrow the table).
    grid: dict[tuple[str, str], Counter] = {}
    totals: Counter = Counter()
    for site_slug, type_slug, state in base.values_list("rack__site__slug", "server_type__slug", "state"):
        grid.setdefault((site_slug or "-", type_slug), Counter())[state] += 1
        totals[state] += 1
    states = [s for s in NodeState if totals[s]]
    grid_rows = [
        {"site": site, "server_type": st, "cells": [counts[s] for s in states], "total": sum(counts.values())}
        for (site, st), counts in sorted(grid.items())
    ]
    page = Paginator(nodes, FLEET_PAGE_SIZE).get_page(request.GET.get("page"))
    filters = request.GET.copy()
    filters.pop("page", None)
    last_sync = InventorySync.objects.first()
    context = {
        "form": node_filter.form,
        "filter_errors": filter_errors,
        "page": page,
        "states": states,
        "totals": [(s, totals[s]) for s in states],
        "total": sum(totals.values()),
        "grid_rows": grid_rows,
        "warm_pools": [p for p in warm_pool.pools() if p.size or p.warm or p.warming],
        "sites": Site.objects.all(),
        "server_types": ServerType.objects.all(),
        "rollout_form": RolloutForm(),
        "query": filters.urlencode(),  # the pager adds the page number
        "last_sync": last_sync,
        # what needs the operator first: the devices skipped, then what changed
        "last_sync_results": sorted(last_sync.results, key=lambda r: r.get("outcome") != "skipped")
        if last_sync
        else [],
    }
    if request.headers.get("HX-Request"):
        return render(request, "portal/ops/_fleet_table.html", context)
    return render(request, "portal/ops/fleet.html", context)


def _nodes_in_detail(request: HttpRequest):
    related = ("server_type", "rack__site", "owner", "reservation", "image")
    return Node.objects.for_user(request.user).select_related(*related)


def _node_context(request: HttpRequest, node: Node) -> dict:
    operations = list(
        Operation.objects.for_user(request.user)
        .filter(node=node)
        .select_related("reservation", "rollout", "requested_by")
        .prefetch_related("steps")[:10]
    )
    logs_for = {op.pk for op in operations[:3]}
    lines = LogLine.objects.filter(operation_id__in=logs_for).select_related("step").order_by("-id")
    by_op: dict[int, list[LogLine]] = {}
    for line in lines:
        bucket = by_op.setdefault(line.operation_id, [])
        if len(bucket) < LOG_LINES_PER_OPERATION:
            bucket.append(line)
    for op in operations:
        op.recent_logs = list(reversed(by_op.get(op.pk, [])))  # type: ignore[attr-defined]
    busy = any(op.state not in FINISHED_OPERATION_STATES for op in operations)
    events = AuditEvent.objects.for_user(request.user).filter(node=node)
    return {
        "node": node,
        "operations": operations,
        "polling": busy or node.state in TRANSIENT_STATES,
        "timeline": list(events.select_related("actor")[:TIMELINE_EVENTS]),
        "timeline_total": events.count(),
        "reimage_form": ReimageForm(),
        "leased": node.state in LEASED_STATES,
        "network": network_drift.node_network_view(node),
    }


@staff_required
def node_detail(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_object_or_404(_nodes_in_detail(request), pk=pk)
    context = _node_context(request, node)
    rows = BurnInReport.objects.for_user(request.user).filter(node=node)[:5]
    context["reports"] = [report_view(row) for row in rows]
    return render(request, "portal/ops/node.html", context)


@staff_required
def node_live(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_object_or_404(
        Node.objects.for_user(request.user).select_related("server_type", "owner"), pk=pk
    )
    if not request.headers.get("HX-Request"):
        return redirect("portal:ops_node", pk=node.pk)
    return render(request, "portal/ops/_node_live.html", _node_context(request, node))


def _after_withdrawn_hold(node: Node) -> str:
    """What becomes of ``node`` (read after the withdrawal) once its hold request is withdrawn."""
    if node.state in LEASED_STATES:
        return "it returns to the pool after its lease."
    if node.state in (NodeState.RELEASING, NodeState.CLEANING):
        return "it returns to the pool once it is wiped."
    if node.state == NodeState.QUARANTINED:
        return "it stays quarantined until its review (return it to the pool or keep it out)."
    if node.state == NodeState.ERROR:
        return "it stays in error until an operator retries it (wipe and return) or puts it on maintenance."
    return f"it is {node.get_state_display().lower()}."


def _node_action(request: HttpRequest, node: Node, action: str) -> str:
    """Run one operator action through the services; returns the sentence to show."""
    actor = Actor.operator_from_request(request)
    reason = request.POST.get("reason", "").strip()
    if action == "maintenance_on":
        node_services.set_maintenance(node, True, actor=actor, reason=reason)
        return f"{node.name} is on maintenance hold."
    if action == "maintenance_when_free":
        node = node_services.set_maintenance(node, True, actor=actor, reason=reason, when_free=True)
        if node.state == NodeState.MAINTENANCE:
            return f"{node.name} is on maintenance hold."
        return f"{node.name} goes on maintenance hold once it is free and wiped; it takes no new bookings."
    if action == "maintenance_off":
        held = node.state == NodeState.MAINTENANCE
        node = node_services.set_maintenance(node, False, actor=actor, reason=reason)
        if not held:
            return f"Hold request on {node.name} withdrawn: {_after_withdrawn_hold(node)}"
        return f"{node.name} hold lifted: it is wiped, then returns to the pool."
    if action == "return_to_pool":
        node_services.return_from_quarantine(node, actor=actor, reason=reason)
        return f"{node.name} is being wiped and returned to the pool."
    if action == "keep_out":
        node_services.keep_in_quarantine(node, actor=actor, reason=reason)
        return f"{node.name} stays quarantined; your note is in its timeline."
    if action == "rerun_burnin":
        node_services.rerun_burnin(node, actor=actor)
        return f"Burn-in re-run started on {node.name}."
    if action in ("network_check", "network_repair"):
        report = network_drift.check_node(node, repair=action == "network_repair", actor=actor)
        if report.repaired:
            return f"{node.name}'s switch port was moved back to the VLAN its state requires."
        if report.drifting or report.unreadable:
            return f"{node.name}: {'; '.join(report.drifting + report.unreadable)}"
        return f"{node.name}'s switch port is on the VLAN its state requires."
    if action == "recover":
        node_services.recover(node, actor=actor, reason=reason)
        return f"{node.name} is being wiped and returned to the pool."
    if action == "quarantine":
        force = request.POST.get("force", "") in ("on", "true", "1")
        node = node_services.quarantine(node, actor=actor, reason=reason, force=force)
        if node.reservation_id is not None:
            return (
                f"{node.name} is quarantined; reservation {node.reservation_id} still holds it (no burn-in "
                "re-run or return to the pool until it is released)."
            )
        return f"{node.name} is quarantined."
    if action == "reimage":
        form = ReimageForm(request.POST)
        if not form.is_valid():
            problems = "; ".join(
                f"{name}: {' '.join(str(e) for e in errs)}" for name, errs in form.errors.items()
            )
            raise NeocloudError(f"the reimage form is not valid: {problems}")
        f = form.cleaned_data
        op = node_services.reimage(node, actor=actor, image=f["image"], force=f["force"], reason=f["reason"])
        if op.kind == OperationKind.CLEAN:
            return (
                f"{node.name} is idle: it is wiped and returns to the pool (it gets its image when reserved)."
            )
        return f"Reimage of {node.name} started."
    raise NeocloudError(f"unknown action {action!r}")


@staff_required
@require_POST
def node_action(request: HttpRequest, pk: int) -> HttpResponse:
    node = get_object_or_404(Node.objects.for_user(request.user), pk=pk)
    action = request.POST.get("action", "")
    try:
        messages.success(request, _node_action(request, node, action))
    except NeocloudError as exc:
        messages.error(request, f"Not done: {sentence(exc)}")
    return redirect("portal:ops_node", pk=node.pk)


@staff_required
@require_POST
def rollout_start(request: HttpRequest) -> HttpResponse:
    form = RolloutForm(request.POST)
    model_choices(form, "nodes").queryset = Node.objects.for_user(request.user)
    if not form.is_valid():
        errors = "; ".join(str(e) for errs in form.errors.values() for e in errs)
        messages.error(request, f"Rollout not started: {errors}")
        return redirect("portal:ops_fleet")
    f = form.cleaned_data
    try:
        rollout = rollout_services.start_rollout(
            list(f["nodes"]),
            actor=Actor.operator_from_request(request),
            image=f["image"],
            max_parallel=f["max_parallel"],
            failure_budget=f["failure_budget"],
            force=f["force"],
        )
    except NeocloudError as exc:
        messages.error(request, f"Rollout not started: {sentence(exc)}")
        return redirect("portal:ops_fleet")
    _tell_rollout_start(request, rollout, list(f["nodes"]))
    return redirect("portal:ops_rollout", pk=rollout.pk)


NAMED_AT_MOST = 5


def _of_selected(n: int, total: int) -> str:
    """``"1 of 1 selected server"``, ``"2 of 3 selected servers"``."""
    return f"{n} of {total} selected {'server' if total == 1 else 'servers'}"


def _named(items: list[str]) -> str:
    more = len(items) - NAMED_AT_MOST
    # " / " between items: a refusal's reason may hold a semicolon
    return " / ".join(items[:NAMED_AT_MOST]) + (f" / and {more} more" if more > 0 else "")


def _tell_rollout_start(request: HttpRequest, rollout: Rollout, selected: list[Node]) -> None:
    """Flash what starting ``rollout`` did: an error when it halted at once or reimaged nothing, a warning
    naming the servers it refused (or will refuse when their turn comes), else a success."""
    rollout.refresh_from_db()
    status = rollout_services.progress(rollout)
    total = len(selected)
    prefix = f"rollout {rollout.pk}: "
    refused = [why.removeprefix(prefix) for _, why in sorted(status.refused.items())]
    refused_text = (
        f"{_of_selected(len(refused), total)} {'was' if len(refused) == 1 else 'were'} refused: "
        f"{_named(refused)}"
    )
    if rollout.state == Rollout.State.HALTED:
        why = sentence(rollout.message.removeprefix("halted: "))
        messages.error(request, f"Rollout {rollout.pk} halted{f': {refused_text}' if refused else ''}. {why}")
        return
    if not status.operations and rollout.state != Rollout.State.RUNNING:
        messages.error(
            request,
            f"Rollout {rollout.pk} ended at once, no server was reimaged"
            f"{f': {refused_text}' if refused else ''}. {sentence(rollout.message)}",
        )
        return
    started = set(status.operations) | set(status.refused)
    not_reimageable = [
        f"{n.name} ({n.state})"
        for n in Node.objects.filter(pk__in=[n.pk for n in selected if n.pk not in started]).order_by("name")
        if n.state not in node_services.REIMAGEABLE_STATES
    ]
    if not refused and not not_reimageable:
        messages.success(
            request,
            f"Rollout {rollout.pk} started on {total} servers, {rollout.max_parallel} at a time."
            if total != 1
            else f"Rollout {rollout.pk} started on 1 server.",
        )
        return
    parts = [f"Rollout {rollout.pk} started on {_of_selected(len(status.operations), total)}."]
    if refused:
        parts.append(f"{refused_text}.")
    if not_reimageable:
        one = len(not_reimageable) == 1
        parts.append(
            f"{len(not_reimageable)} {'server' if one else 'servers'} not started yet cannot be reimaged and "
            f"will be refused when {'its' if one else 'their'} turn comes: {_named(not_reimageable)}."
        )
    parts.append(
        f"Each refusal counts against the failure budget of {rollout.failure_budget} "
        f"({status.failed} spent so far)."
    )
    messages.warning(request, " ".join(parts))


def _rollout_context(rollout: Rollout) -> dict:
    status = rollout_services.progress(rollout)
    nodes = {n.pk: n for n in Node.objects.filter(pk__in=rollout.node_ids)}
    ops = {
        op.pk: op
        for op in Operation.objects.filter(
            pk__in=[o.pk for o in status.operations.values()]
        ).prefetch_related("steps")
    }
    rows = [
        {
            "node": nodes.get(nid),
            "node_id": nid,
            "operation": ops.get(status.operations[nid].pk) if nid in status.operations else None,
            "refused": status.refused.get(nid, ""),
        }
        for nid in rollout.node_ids
    ]
    done = status.done
    return {
        "rollout": rollout,
        "rows": rows,
        "status": status,
        "done": done,
        "percent": int(100 * done / status.total) if status.total else 100,
        # a cancelling rollout still has reimages finishing: keep the page live until it is cancelled
        "polling": rollout.state in (Rollout.State.RUNNING, Rollout.State.CANCELLING),
    }


@staff_required
def rollout_list(request: HttpRequest) -> HttpResponse:
    rollouts = Paginator(Rollout.objects.select_related("requested_by", "image"), 25).get_page(
        request.GET.get("page")
    )
    return render(request, "portal/ops/rollouts.html", {"page": rollouts})


@staff_required
def rollout_detail(request: HttpRequest, pk: int) -> HttpResponse:
    rollout = get_object_or_404(Rollout.objects.select_related("requested_by", "image"), pk=pk)
    return render(request, "portal/ops/rollout.html", _rollout_context(rollout))


@staff_required
def rollout_live(request: HttpRequest, pk: int) -> HttpResponse:
    rollout = get_object_or_404(Rollout.objects.select_related("requested_by", "image"), pk=pk)
    if not request.headers.get("HX-Request"):
        return redirect("portal:ops_rollout", pk=rollout.pk)
    return render(
        request, "portal/ops/_rollout_live.html", {**_rollout_context(rollout), "live_update": True}
    )


@staff_required
@require_POST
def rollout_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Cancel a running rollout: nothing more starts; the reimages already started run to completion."""
    rollout = get_object_or_404(Rollout, pk=pk)
    try:
        rollout = rollout_services.cancel_rollout(
            rollout, actor=Actor.operator_from_request(request), reason=request.POST.get("reason", "")
        )
    except NeocloudError as exc:
        messages.error(request, f"Not cancelled: {sentence(exc)}")
        return redirect("portal:ops_rollout", pk=pk)
    if rollout.state == Rollout.State.CANCELLING:
        messages.success(
            request,
            f"Rollout {rollout.pk} cancelled: no more servers will start; the reimages already started "
            "finish first.",
        )
    else:
        messages.success(request, f"Rollout {rollout.pk} cancelled.")
    return redirect("portal:ops_rollout", pk=rollout.pk)
