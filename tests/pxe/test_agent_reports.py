"""What the boot service takes from a deploy agent, and what the engine accepts as a finished deploy: the
token proves only that the reporter booted this ticket's script, so its reports are checked like any input."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from provisioner.boot import reports, tickets
from provisioner.engine.queue import create_operation
from provisioner.json_input import MAX_JSON_DEPTH
from provisioner.models import DeployTicket, Node
from provisioner.pxe.ipxe import parse_ipxe_script
from provisioner.sshkeys import fingerprint_sha256, generate_keypair

MAC = "52:54:00:00:00:01"  # node-h100-8x-01 in the inventory fixture
SHA = hashlib.sha256(b"image").hexdigest()


@pytest.fixture
def booted(inventory, client):
    """A ticket whose script the node fetched: (ticket, the agent's Authorization header)."""
    node = Node.objects.get(boot_mac=MAC)
    ticket = tickets.open_ticket(
        node, create_operation("provision", node), {"action": "erase", "node": node.name}
    )
    script = client.get(f"/boot/{MAC}.ipxe").content.decode()
    token = parse_ipxe_script(script).kernel_params()["neocloud.token"]
    return ticket, {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def post(client, path: str, body, auth: dict, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body)
    return client.post(f"/boot/api/{path}", data=data, content_type="application/json", **auth)


def host_keys() -> tuple[dict[str, str], dict[str, str]]:
    _, public = generate_keypair("ed25519")
    blob = base64.b64decode(public.split()[1])
    return {"ed25519": public}, {"ed25519": fingerprint_sha256(blob)}


def ok_result(**changes) -> dict:
    keys, prints = host_keys()
    return {
        "status": "ok",
        "error_code": None,
        "message": "image written",
        "sha256": SHA,
        "bytes_written": 5,
        "host_keys": keys,
        "host_key_fingerprints": prints,
        **changes,
    }


def test_an_ok_result_without_the_instructions_fetched_is_refused(client, booted):
    ticket, auth = booted
    refused = post(client, "result", ok_result(), auth)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "instructions_not_fetched"
    assert DeployTicket.objects.get(pk=ticket.pk).result_at is None
    # A failure may still be reported (the agent could not even use its instructions).
    assert (
        post(client, "result", {"status": "failed", "error_code": "bad_instructions"}, auth).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (ok_result(host_keys={"ed25519": ""}), "host key 'ed25519' is not an SSH public key"),
        (ok_result(host_keys="ssh-ed25519 AAAA"), "must be objects"),
        (ok_result(host_key_fingerprints={"ed25519": "MD5:aa"}), "must look like SHA256:"),
        (ok_result(sha256="xyz"), "sha256 must be 64"),
        (ok_result(bytes_written=-1), "bytes_written must be a whole number"),
        (ok_result(bytes_written=True), "bytes_written must be a whole number"),
        (ok_result(error_code="x" * 65), "error_code must be a short"),
        (ok_result(message=["a"]), "message must be a string"),
        ({"status": "done"}, "status ok or failed"),
    ],
)
def test_a_malformed_result_is_refused_and_nothing_is_stored(client, booted, body, words):
    ticket, auth = booted
    client.get("/boot/api/instructions", **auth)
    refused = post(client, "result", body, auth)
    assert refused.status_code == 400
    assert words in refused.json()["error"]["message"]
    assert DeployTicket.objects.get(pk=ticket.pk).result_at is None


def test_nan_and_oversized_reports_are_refused(client, booted):
    ticket, auth = booted
    client.get("/boot/api/instructions", **auth)
    nan = post(client, "result", None, auth, raw=b'{"status": "failed", "bytes_written": NaN}')
    assert nan.status_code == 400
    huge = post(
        client, "progress", {"stage": "write", "percent": 1, "message": "x" * reports.MAX_REPORT_BYTES}, auth
    )
    assert huge.status_code == 413
    assert DeployTicket.objects.get(pk=ticket.pk).progress in (None, {})


@pytest.mark.parametrize("path", ["progress", "result"])
@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 2000 + b"]" * 2000,
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b'{"stage": "write", "percent": 1, "message": ' + b"[" * 40 + b"]" * 40 + b"}",
    ],
    ids=["arrays", "objects", "a field past the limit"],
)
def test_deeply_nested_reports_are_a_400_in_the_error_shape(client, booted, path, raw):
    ticket, auth = booted
    refused = post(client, path, None, auth, raw=raw)
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "code": "invalid_request",
        "message": f"JSON may nest at most {MAX_JSON_DEPTH} levels of arrays and objects",
    }
    stored = DeployTicket.objects.get(pk=ticket.pk)
    assert stored.progress in (None, {}) and stored.result_at is None


@pytest.mark.parametrize("path", ["progress", "result"])
def test_a_report_over_the_request_limit_is_a_413_in_the_error_shape(client, booted, settings, path):
    """Larger than Django reads at all (DATA_UPLOAD_MAX_MEMORY_SIZE): refused on its Content-Length."""
    ticket, auth = booted
    raw = b'{"message": "' + b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1) + b'"}'
    refused = post(client, path, None, auth, raw=raw)
    assert refused.status_code == 413
    assert refused.json()["error"] == {
        "code": "too_large",
        "message": f"a report is at most {reports.MAX_REPORT_BYTES} bytes",
    }
    assert DeployTicket.objects.get(pk=ticket.pk).result_at is None


def test_progress_is_stored_as_checked_fields_only(client, booted):
    ticket, auth = booted
    bad = post(client, "progress", {"stage": "write", "percent": 250}, auth)
    assert bad.status_code == 400 and "percent must be" in bad.json()["error"]["message"]
    good = post(
        client, "progress", {"stage": "write", "percent": 40, "message": "m" * 5000, "extra": 1}, auth
    )
    assert good.status_code == 200
    stored = DeployTicket.objects.get(pk=ticket.pk).progress
    assert stored == {"stage": "write", "percent": 40, "message": "m" * reports.MAX_MESSAGE_CHARS}


def test_a_good_result_is_stored_without_fields_the_engine_does_not_read(client, booted):
    ticket, auth = booted
    client.get("/boot/api/instructions", **auth)
    body = ok_result(secret_extra="x")
    assert post(client, "result", body, auth).status_code == 200
    stored = DeployTicket.objects.get(pk=ticket.pk).result
    assert "secret_extra" not in stored
    assert stored["host_keys"] == body["host_keys"] and stored["sha256"] == SHA


def test_the_engine_accepts_only_the_deploy_it_asked_for():
    good = ok_result()
    keys, prints = reports.verify_deployed(good, SHA.upper(), 5)
    assert keys == good["host_keys"] and prints == good["host_key_fingerprints"]
    with pytest.raises(reports.ReportError, match="reports sha256 none"):
        reports.verify_deployed(ok_result(sha256=""), SHA, 5)
    with pytest.raises(reports.ReportError, match=f"expected {SHA}"):
        reports.verify_deployed(ok_result(sha256="0" * 64), SHA, 5)
    with pytest.raises(reports.ReportError, match="4 bytes written, the image has 5"):
        reports.verify_deployed(ok_result(bytes_written=4), SHA, 5)
    with pytest.raises(reports.ReportError, match="no host keys"):
        reports.verify_deployed(ok_result(host_keys={}, host_key_fingerprints={}), SHA, 5)
    other_prints = host_keys()[1]
    with pytest.raises(reports.ReportError, match="do not match its host keys"):
        reports.verify_deployed(ok_result(host_key_fingerprints=other_prints), SHA, 5)


def test_a_ticket_replaced_between_lookup_and_claim_is_not_handed_out(inventory, monkeypatch):
    node = Node.objects.get(boot_mac=MAC)
    first = tickets.open_ticket(
        node, create_operation("provision", node), {"action": "erase", "node": node.name}
    )
    real_first = type(DeployTicket.objects.all()).first
    replaced: list[DeployTicket] = []

    def first_then_replace(queryset):
        found = real_first(queryset)
        if not replaced:  # a retried deploy replaces the ticket right after this lookup
            replaced.append(
                tickets.open_ticket(node, create_operation("provision", node), {"action": "erase"})
            )
        return found

    monkeypatch.setattr(type(DeployTicket.objects.all()), "first", first_then_replace)
    ticket, token = tickets.claim_for_boot(node)
    assert token is not None and ticket is not None
    assert ticket.pk == replaced[0].pk != first.pk
    assert DeployTicket.objects.get(pk=first.pk).script_served_at is None


@pytest.mark.parametrize(("erased", "ok"), [(0, False), (None, False), (4096, True)])
def test_a_wipe_that_overwrote_nothing_is_no_wipe(inventory, monkeypatch, erased, ok):
    import threading

    from provisioner.drivers.ansible import drivers as ansible_drivers
    from provisioner.engine.context import StepContext
    from provisioner.errors import DeployFailed
    from provisioner.lifecycle import Actor
    from provisioner.models import LogLine

    node = Node.objects.get(boot_mac=MAC)
    op = create_operation("release", node)
    ctx = StepContext(op, op.steps.get(name="wipe"), Actor.system("test"), threading.Event())

    def bmc_playbook(node, playbook, ctx):  # the BMC did its part; on a network boot the agent says "ok"
        if playbook == "netboot.yml":
            result = {"status": "ok", "error_code": None, "message": "disk overwritten"}
            if erased is not None:
                result["bytes_written"] = erased
            tickets.record_result(DeployTicket.objects.get(pk=ctx.data["ticket"]), result)

    monkeypatch.setattr(ansible_drivers, "_run_bmc_playbook", bmc_playbook)
    driver = ansible_drivers.AnsibleDeployDriver(node)
    if ok:
        driver.wipe(node.name, ctx)
        assert LogLine.objects.filter(operation=op).last().message == f"{node.name}: 4096 bytes overwritten"
    else:
        with pytest.raises(DeployFailed, match="reported erasing 0 bytes"):
            driver.wipe(node.name, ctx)
