"""The boot service's LLDP cabling check: the agent's report of what the switch announced on its boot NIC is
compared with the node's recorded cabling before the agent writes anything; a mismatch, or nothing heard
while cabling is recorded, fails the deploy at once, and the engine does not retry it."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from provisioner.boot import tickets
from provisioner.boot.cabling import cabling_problem, describe_heard
from provisioner.drivers.ansible.drivers import _agent_result
from provisioner.engine.context import StepContext
from provisioner.engine.queue import create_operation
from provisioner.errors import CablingMismatch, DeployFailed
from provisioner.lifecycle import Actor
from provisioner.models import DeployTicket, LogLine, Node
from provisioner.pxe.ipxe import parse_ipxe_script

MAC = "52:54:00:00:00:01"  # node-h100-8x-01 in the inventory fixture
INSTRUCTIONS = {
    "action": "deploy",
    "node": "node-h100-8x-01",
    "image": {"url": "http://127.0.0.1:9/x.img", "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1},
    "config": {"hostname": "node-h100-8x-01", "authorized_keys": [], "network": {}},
}


def heard(switch: str | None = "leaf1", port: str | None = "swp3", **more) -> dict:
    return {"heard": True, "switch": switch, "port": port, "interface": "eth0", "waited": 1.2, **more}


NOTHING = {"heard": False, "switch": None, "port": None, "interface": "eth0", "waited": 35.0,
           "reason": "no LLDP announcement arrived on eth0 within 35 s"}  # fmt: skip


def boot(client, cabled_to: tuple[str, str] | None, action: str = "deploy"):
    node = Node.objects.get(boot_mac=MAC)
    if cabled_to:
        Node.objects.filter(pk=node.pk).update(switch_name=cabled_to[0], switch_port=cabled_to[1])
    op = create_operation("provision", node)
    instructions = INSTRUCTIONS if action == "deploy" else {"action": "erase", "node": node.name}
    ticket = tickets.open_ticket(node, op, instructions)
    token = parse_ipxe_script(client.get(f"/boot/{MAC}.ipxe").content.decode()).kernel_params()[
        "neocloud.token"
    ]
    auth = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    return op, ticket, auth


def report(client, auth, lldp):
    body = {"stage": "cabling", "percent": 100, "message": "LLDP", "lldp": lldp}
    return client.post("/boot/api/progress", data=json.dumps(body), content_type="application/json", **auth)


@pytest.mark.parametrize(("cabled_to", "expected"), [(("leaf1", "swp3"), True), (None, False)])
def test_the_instructions_ask_for_the_check_only_where_cabling_is_recorded(
    inventory, client, cabled_to, expected
):
    _, _, auth = boot(client, cabled_to)
    assert client.get("/boot/api/instructions", **auth).json()["cabling_check"] is expected


def test_a_wipe_is_not_asked_to_check_cabling(inventory, client):
    _, _, auth = boot(client, ("leaf1", "swp3"), action="erase")
    assert "cabling_check" not in client.get("/boot/api/instructions", **auth).json()


def test_lldp_naming_the_recorded_switch_and_port_lets_the_deploy_go_on(inventory, client):
    _, ticket, auth = boot(client, ("leaf1", "swp3"))
    # the switch may announce its FQDN, and names are compared without regard to case
    answer = report(client, auth, heard("Leaf1.ams1.example.net", "SWP3"))
    assert answer.status_code == 200 and answer.json() == {"ok": True, "cabling": "confirmed"}
    assert DeployTicket.objects.get(pk=ticket.pk).result_at is None


def test_another_port_fails_the_deploy_with_one_sentence_naming_both(inventory, client):
    op, ticket, auth = boot(client, ("leaf1", "swp3"))
    answer = report(client, auth, heard("leaf2", "swp7"))
    assert answer.status_code == 409
    message = (
        "node-h100-8x-01's boot NIC is cabled to leaf2 port swp7 (heard by LLDP) but recorded at leaf1 port "
        "swp3: deploy stopped; fix the cabling or the inventory"
    )
    assert answer.json()["error"] == {"code": "cabling_mismatch", "message": message}
    result = DeployTicket.objects.get(pk=ticket.pk).result
    assert result["status"] == "failed" and result["error_code"] == "cabling_mismatch"
    assert result["message"] == message and result["lldp"]["port"] == "swp7"
    # the engine's deploy step fails with that sentence, not retried, and logs what was heard
    ctx = StepContext(op, op.steps.get(name="deploy"), Actor.system("test"), threading.Event())
    ctx.save_data(ticket=ticket.pk, phase="agent")
    with pytest.raises(CablingMismatch) as failed:
        _agent_result(ctx, "the deploy agent", 900)
    assert str(failed.value) == message and failed.value.retryable is False
    assert LogLine.objects.filter(operation=op, message="LLDP on eth0: switch leaf2 port swp7").exists()


def test_another_switch_same_port_name_is_a_mismatch(inventory, client):
    _, _, auth = boot(client, ("leaf1", "swp3"))
    assert report(client, auth, heard("leaf1x", "swp3")).json()["error"]["code"] == "cabling_mismatch"


def test_nothing_heard_while_cabling_is_recorded_fails_too_saying_so(inventory, client):
    _, ticket, auth = boot(client, ("leaf1", "swp3"))
    answer = report(client, auth, NOTHING)
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "cabling_unconfirmed"
    assert error["message"] == (
        "node-h100-8x-01's boot NIC heard no LLDP announcement on eth0 (no LLDP announcement arrived on eth0 "
        "within 35 s) but is recorded at leaf1 port swp3: deploy stopped; check the cable and the switch's "
        "LLDP, or clear the recorded cabling"
    )
    assert DeployTicket.objects.get(pk=ticket.pk).result["error_code"] == "cabling_unconfirmed"


def test_without_recorded_cabling_what_was_heard_is_only_logged(inventory, client):
    op, ticket, auth = boot(client, None)
    assert report(client, auth, NOTHING).json() == {"ok": True, "cabling": "not recorded"}
    assert report(client, auth, heard("leaf9", "swp1")).status_code == 200
    tickets.record_result(
        ticket, {"status": "failed", "error_code": "disk_error", "lldp": heard("leaf9", "swp1")}
    )
    ctx = StepContext(op, op.steps.get(name="deploy"), Actor.system("test"), threading.Event())
    ctx.save_data(ticket=ticket.pk, phase="agent")
    with pytest.raises(DeployFailed) as failed:
        _agent_result(ctx, "the deploy agent", 900)
    assert not isinstance(failed.value, CablingMismatch) and failed.value.retryable
    assert LogLine.objects.filter(operation=op, message="LLDP on eth0: switch leaf9 port swp1").exists()


@pytest.mark.parametrize(
    ("lldp", "words"),
    [
        ("leaf1", "lldp must be an object"),
        ({"switch": "leaf1"}, "lldp.heard must be true or false"),
        (heard(switch="x" * 256), "lldp.switch must be a name of at most 255 printable"),
        (heard(port="swp3\nswp4"), "lldp.port must be a name"),
        (heard(waited="long"), "lldp.waited must be a number"),
    ],
)
def test_a_malformed_lldp_report_is_refused_and_checks_nothing(inventory, client, lldp, words):
    _, ticket, auth = boot(client, ("leaf1", "swp3"))
    answer = report(client, auth, lldp)
    assert answer.status_code == 400 and words in answer.json()["error"]["message"]
    assert DeployTicket.objects.get(pk=ticket.pk).result_at is None


def test_the_engine_checks_an_ok_result_again_for_an_agent_that_never_asked(inventory):
    from provisioner.drivers.ansible.drivers import AnsibleDeployDriver
    from provisioner.drivers.base import DeployRequest

    node = Node.objects.get(boot_mac=MAC)
    Node.objects.filter(pk=node.pk).update(
        switch_name="leaf1", switch_port="swp3", primary_address="198.18.0.9"
    )
    node.refresh_from_db()
    op = create_operation("provision", node)
    ticket = tickets.open_ticket(node, op, INSTRUCTIONS)
    # an "ok" from an agent that skipped the cabling report: LLDP heard another port meanwhile
    tickets.record_result(
        ticket, {"status": "ok", "sha256": INSTRUCTIONS["image"]["sha256"], "lldp": heard("leaf1", "swp4")}
    )
    ctx = StepContext(op, op.steps.get(name="deploy"), Actor.system("test"), threading.Event())
    ctx.save_data(ticket=ticket.pk, phase="agent")
    request = DeployRequest(
        node_name=node.name, boot_mac=MAC, image_url=INSTRUCTIONS["image"]["url"],
        image_sha256=INSTRUCTIONS["image"]["sha256"], image_format="raw", hostname=node.name,
        authorized_keys=[], provisioning_public_key="ssh-ed25519 AAAA", extra={"operation_id": op.pk, "image_size": 1},
    )  # fmt: skip
    with pytest.raises(
        CablingMismatch, match=r"cabled to leaf1 port swp4 .* but recorded at leaf1 port swp3"
    ):
        AnsibleDeployDriver(node).deploy(request, ctx)
    assert ctx.data["phase"] == "agent"  # the OS was never booted


def test_cabling_compares_switch_and_port_and_wants_something_heard():
    class Cabled:
        name, switch_name, switch_port = "gpu-1", "leaf1", "swp3"

    node = Cabled()
    assert cabling_problem(node, heard("leaf1", "swp3")) is None
    assert cabling_problem(node, heard("leaf1", "swp4"))[0] == "cabling_mismatch"
    assert cabling_problem(node, None)[0] == "cabling_unconfirmed"
    assert cabling_problem(node, heard(None, None))[1].startswith(
        "gpu-1's boot NIC is cabled to (an unnamed switch) port (unnamed)"
    )
    node.switch_port = ""
    assert cabling_problem(node, heard("leaf2", "swp9")) is None
    assert describe_heard(None) == "the deploy agent reported nothing about LLDP"
