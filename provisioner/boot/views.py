"""The boot service: iPXE scripts per MAC, placeholder deploy kernel/initrd, and the deploy agent's API.

Plain Django views (no session, no CSRF: nodes in a PXE ramdisk have neither); the agent authenticates
with the one-time bearer token from its kernel command line.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, transaction
from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from provisioner.boot import fast_track, tickets
from provisioner.boot.cabling import cabling_problem, cabling_recorded, describe_heard
from provisioner.boot.reports import MAX_REPORT_BYTES, ReportError, clean_progress, clean_result
from provisioner.engine.queue import wake
from provisioner.json_input import JsonTooDeep, load_json
from provisioner.models import DeployTicket, Node
from provisioner.pxe.ipxe import (
    IpxeScriptError,
    normalize_mac,
    render_ipxe_script,
    render_local_boot_script,
    render_retry_script,
)

IPXE = "text/plain; charset=utf-8"
# The "deploy ramdisk" the lab firmware and real iPXE fetch. In the lab the agent runs directly; a real site
# serves its kernel and initrd here (NEOCLOUD_BOOT_DIR holds vmlinuz and initrd.img).
log = logging.getLogger("provisioner.boot")

PLACEHOLDER_KERNEL = b"NEOCLOUD-DEPLOY-KERNEL\n"
PLACEHOLDER_INITRD = b"NEOCLOUD-DEPLOY-INITRD\n"


def _from_provisioning_network(request: HttpRequest) -> bool:
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR") or "")
    except ValueError:
        return False
    return any(address in network for network in settings.NEOCLOUD_BOOT_NETWORKS)


def provisioning_networks_only(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Refuse callers outside NEOCLOUD_BOOT_NETWORKS: a node's MAC is no secret, and whoever fetches its
    script first gets the deploy's one-time token."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if not _from_provisioning_network(request):
            message = "the boot service answers only the provisioning networks"
            if request.path.endswith(".ipxe"):
                return HttpResponse(f"#!ipxe\necho {message}\nexit 1\n", status=403, content_type=IPXE)
            return _error(403, "not_provisioning_network", message)
        return view(request, *args, **kwargs)

    return wrapped


def _base_url(request: HttpRequest) -> str:
    return f"{request.scheme}://{request.get_host()}"


def record_and_wake(ticket: DeployTicket, result: dict[str, Any]) -> bool:
    """Record the agent's result once and wake the operation parked waiting for it (engine waits), in one
    transaction; a wipe whose agent stays up starts the node's fast-track in it. False when a result was
    already recorded."""
    with transaction.atomic():
        recorded = tickets.record_result(ticket, result)
        if recorded:
            fast_track.start(ticket, result)
            wake([ticket.operation_id])
    return recorded


@provisioning_networks_only
@require_GET
def ipxe_script(request: HttpRequest, mac: str) -> HttpResponse:
    """The node's boot script. A database that does not answer (restarting) gets a script that waits and asks
    again: the ticket is claimed in one transaction, so nothing was handed out and the next try gets it."""
    try:
        return _ipxe_script(request, mac)
    except DatabaseError as exc:
        # the broken connection is closed by Django at the end of the request (close_old_connections)
        log.warning("boot script for %s: the database failed (%s); told the node to try again", mac, exc)
        return HttpResponse(
            render_retry_script(request.build_absolute_uri(), "the boot service is busy"), content_type=IPXE
        )


def _ipxe_script(request: HttpRequest, mac: str) -> HttpResponse:
    try:
        mac = normalize_mac(mac)
    except IpxeScriptError:
        return HttpResponse("#!ipxe\necho invalid MAC address\nexit 1\n", status=400, content_type=IPXE)
    node = Node.objects.filter(boot_mac=mac).first()
    if node is None:
        return HttpResponse("#!ipxe\necho unknown machine\nexit 1\n", status=404, content_type=IPXE)
    ticket, token = tickets.claim_for_boot(node)
    if ticket is None:
        return HttpResponse(render_local_boot_script(), content_type=IPXE)
    if token is None:
        # The script (and its token) was handed out already: a second boot must not get another one.
        return HttpResponse("#!ipxe\necho deploy token already used\nexit 1\n", status=403, content_type=IPXE)
    try:
        script = render_ipxe_script(_base_url(request), token, node.name)
    except IpxeScriptError as exc:
        # Booting again cannot fix this (the ticket's token is spent, the name stays): close the ticket with
        # the reason, so the engine's wait fails now with it instead of timing out on a node that never boots.
        record_and_wake(
            ticket,
            {
                "status": "failed",
                "error_code": "boot_script_invalid",
                "message": f"the boot service cannot write an iPXE script for {node.name!r}: {exc}",
            },
        )
        return HttpResponse(
            "#!ipxe\necho Neocloud cannot boot this node (see its deploy log)\nexit 1\n",
            status=500,
            content_type=IPXE,
        )
    return HttpResponse(script, content_type=IPXE)


def _deploy_file(name: str, placeholder: bytes) -> HttpResponse | FileResponse:
    path = settings.NEOCLOUD_BOOT_DIR / name
    if path.is_file():
        return FileResponse(path.open("rb"), content_type="application/octet-stream")
    return HttpResponse(placeholder, content_type="application/octet-stream")


@provisioning_networks_only
@require_GET
def deploy_kernel(request: HttpRequest) -> HttpResponse | FileResponse:
    return _deploy_file("vmlinuz", PLACEHOLDER_KERNEL)


@provisioning_networks_only
@require_GET
def deploy_initrd(request: HttpRequest) -> HttpResponse | FileResponse:
    return _deploy_file("initrd.img", PLACEHOLDER_INITRD)


def _ticket(request: HttpRequest) -> DeployTicket | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme != "Bearer":
        return None
    return tickets.ticket_for_token(token.strip())


def _error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _json_object(request: HttpRequest, refusal: str) -> dict[str, Any]:
    """The request's JSON object. Raises ReportError with ``refusal`` for anything else (NaN and Infinity
    included: no database stores them as JSON), or with the nesting limit's sentence for a body nested
    too deep. The caller has checked the body's size."""
    try:
        body = load_json(request.body or b"{}", parse_constant=_refuse_constant)
    except JsonTooDeep as exc:
        raise ReportError(str(exc)) from None
    except ValueError:
        raise ReportError(refusal) from None
    if not isinstance(body, dict):
        raise ReportError(refusal)
    return body


def _too_big(request: HttpRequest) -> JsonResponse | None:
    try:
        length = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        length = 0
    # The header first: a body over DATA_UPLOAD_MAX_MEMORY_SIZE is not even read (Django raises on it).
    if length > MAX_REPORT_BYTES or len(request.body) > MAX_REPORT_BYTES:
        return _error(413, "too_large", f"a report is at most {MAX_REPORT_BYTES} bytes")
    return None


@provisioning_networks_only
@require_GET
def agent_instructions(request: HttpRequest) -> JsonResponse:
    ticket = _ticket(request)
    if ticket is None:
        return _error(403, "invalid_token", "unknown or expired deploy token")
    if ticket.result_at is not None or not tickets.take_instructions(ticket):
        return _error(
            409, "token_used", "these instructions were already fetched; a new deploy needs a new boot"
        )
    instructions = dict(ticket.instructions)
    if instructions.get("action") != "erase":
        # The agent waits for LLDP and reports it before writing only where there is cabling to check.
        instructions["cabling_check"] = cabling_recorded(ticket.node)
    return JsonResponse(instructions)


@provisioning_networks_only
@require_GET
def ticket_status(request: HttpRequest, ticket_id: int) -> JsonResponse:
    """A deploy ticket's state for the engine's wait task (Bearer: the ticket's watch key)."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme != "Bearer" or not tickets.check_watch_key(ticket_id, key.strip()):
        return _error(403, "invalid_key", "unknown ticket or wrong watch key")
    ticket = DeployTicket.objects.filter(pk=ticket_id).only(
        "script_served_at", "progress", "result_at", "result"
    )
    row = ticket.first()
    if row is None:
        return _error(404, "unknown_ticket", f"no deploy ticket {ticket_id}")
    return JsonResponse(
        {
            "script_served": row.script_served_at is not None,
            "finished": row.result_at is not None,
            "progress": row.progress or {},
            "result": row.result or {},
        }
    )


@csrf_exempt
@provisioning_networks_only
@require_POST
def agent_progress(request: HttpRequest) -> JsonResponse:
    ticket = _ticket(request)
    if ticket is None:
        return _error(403, "invalid_token", "unknown or expired deploy token")
    if (refused := _too_big(request)) is not None:
        return refused
    try:
        progress = clean_progress(_json_object(request, "progress must be a JSON object"))
    except ReportError as exc:
        return _error(400, "invalid_request", str(exc))
    tickets.record_progress(ticket, progress)
    if "lldp" in progress:
        return _check_cabling(ticket, progress["lldp"])
    return JsonResponse({"ok": True})


def _check_cabling(ticket: DeployTicket, lldp: dict[str, Any]) -> JsonResponse:
    """The agent's LLDP report, before it writes anything: on a mismatch with the node's recorded cabling,
    or with nothing heard while cabling is recorded, the deploy fails now (the result is recorded for the
    engine, which stops the node) and the agent is told to stop (409)."""
    node = ticket.node
    log.info("%s: %s", node.name, describe_heard(lldp))
    problem = cabling_problem(node, lldp)
    if problem is None:
        return JsonResponse(
            {"ok": True, "cabling": "confirmed" if cabling_recorded(node) else "not recorded"}
        )
    code, message = problem
    record_and_wake(
        ticket, {"status": "failed", "error_code": code, "message": message, "bytes_written": 0, "lldp": lldp}
    )
    return _error(409, code, message)


@csrf_exempt
@provisioning_networks_only
@require_POST
def agent_result(request: HttpRequest) -> JsonResponse:
    ticket = _ticket(request)
    if ticket is None:
        return _error(403, "invalid_token", "unknown or expired deploy token")
    if (refused := _too_big(request)) is not None:
        return refused
    try:
        result = clean_result(_json_object(request, "result must be a JSON object with status ok or failed"))
    except ReportError as exc:
        return _error(400, "invalid_request", str(exc))
    if result["status"] == "ok" and ticket.instructions_fetched_at is None:
        # An agent that never read what to write cannot have written it.
        return _error(409, "instructions_not_fetched", "an ok result needs the instructions fetched first")
    if not record_and_wake(ticket, result):
        return _error(409, "token_used", "a result was already reported for this deploy")
    return JsonResponse({"ok": True})


@csrf_exempt
@provisioning_networks_only
@require_POST
def agent_heartbeat(request: HttpRequest) -> JsonResponse:
    """A fast-tracked agent's heartbeat (provisioner.boot.fast_track): wait, run a new ticket, or stop (410)."""
    ticket = _ticket(request)
    if ticket is None:
        return _error(403, "invalid_token", "unknown or expired deploy token")
    answer = fast_track.heartbeat(ticket)
    if answer is None:
        return _error(410, "fast_track_ended", "this server is not fast-tracked any more; power off awaits")
    return JsonResponse(answer)
