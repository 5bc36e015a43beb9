"""What a person sees, checked without a browser: the favicon, the known_hosts lines, burn-in reports
written for people, help texts. (tests/browser checks the same pages' layout in Chromium.)"""

from __future__ import annotations

import struct

from django.urls import reverse


def test_the_favicon_is_a_real_icon_served_at_the_site_root_and_linked_from_every_page(client, db):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    reserved, kind, count = struct.unpack("<HHH", response.content[:6])
    assert (reserved, kind) == (0, 1) and count >= 2  # an ICO directory with several sizes
    sizes = {response.content[6 + 16 * i] or 256 for i in range(count)}
    assert {16, 32} <= sizes
    page = client.get(reverse("portal:login")).content.decode()
    assert '<link rel="icon" href="/favicon.ico"' in page
    assert client.head("/favicon.ico").status_code == 200
    assert client.post("/favicon.ico").status_code == 405


def test_sign_up_password_rules_are_a_help_text_like_the_others(client, db):
    body = client.get(reverse("portal:signup")).content.decode()
    field = body[body.index('<label for="id_password1">') :]
    field = field[: field.index('<div class="field')]
    # a list inside a <p> would be pushed out of it by the browser and lose the help text's style
    assert '<div class="help"><ul>' in field and "<li>Your password" in field
    assert '<p class="help">' not in body


def test_the_reservation_page_shows_each_known_hosts_line_on_its_own(
    client, inventory, fake_hw_dir, transactional_db
):
    from provisioner.engine.runner import execute
    from provisioner.models import Node, Operation
    from provisioner.states import OperationKind, OperationState
    from tests.conftest import reserve

    r = reserve(inventory, label="test")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(provision.pk, owner="test") == OperationState.SUCCEEDED
    node = Node.objects.get(reservation=r)
    lines = [
        "198.18.0.23 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFKPU4f7xkspP6SNv",
        "198.18.0.23 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAI",
        "198.18.0.23 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC6a0O6",
    ]
    Node.objects.filter(pk=node.pk).update(ssh_address="198.18.0.23", known_hosts="\n".join(lines) + "\n")
    client.force_login(inventory.owner)
    body = client.get(reverse("portal:reservation", args=[r.pk])).content.decode()
    block = body[body.index(f'id="kh-{node.name}"') :]
    block = block[: block.index("</div>")]
    assert block.count('<code class="kh-line">') == 3
    for line in lines:
        assert f'<code class="kh-line">{line}</code>' in block
    assert "Add these lines to" in body and "this line" not in body


def _report_row(report: dict, passed: bool):
    from types import SimpleNamespace

    return SimpleNamespace(report=report, passed=passed, summary=report.get("summary", ""))


def test_burn_in_readings_are_written_for_people_never_as_python_reprs():
    from webapp.portal.burnin_reports import check_title, reading

    nbsp = "\u00a0"
    assert (
        reading(None) == "—" and reading(True) == "yes" and reading(False) == "no" and reading([]) == "none"
    )
    assert reading(79.65, "GiB") == f"79.65{nbsp}GiB" and reading(735.0) == "735"
    assert reading({"max_temperature_c": 64, "slowdown_c": 89, "margin_c": 25}) == (
        f"max temperature 64{nbsp}°C, slowdown 89{nbsp}°C, margin 25{nbsp}°C"
    )
    assert reading({"max_w": 700.5, "limit_w": 700.0}) == f"max 700.5{nbsp}W, limit 700{nbsp}W"
    assert reading({"driver_version": "580.159.04", "current": True, "pending": None}) == (
        "driver version 580.159.04, current yes, pending —"
    )
    assert reading({"uuid": "GPU-1", "pci_bus_id": "0000:17:00.0"}) == "UUID GPU-1, PCI bus ID 0000:17:00.0"
    assert check_title("memory.ecc_errors") == "Memory · ECC errors"
    assert check_title("pcie.replays") == "PCIe · replays"


def test_a_report_puts_failed_then_unanswerable_checks_first_and_folds_the_rest():
    from webapp.portal.burnin_reports import report_view

    checks = [
        {"name": "inventory.memory", "gpu": 0, "status": "passed", "passed": True, "value": 79.65,
         "threshold": {"expected_gib": 80, "min_gib": 76.0}, "message": "GPU 0: 79.65 GiB of memory."},
        {"name": "pcie.replays", "gpu": 1, "status": "not_supported", "passed": True, "value": None,
         "threshold": 80, "message": "GPU 1: PCIe replay counter not supported."},
        {"name": "modes.persistence", "gpu": 0, "status": "not_checked", "passed": True, "value": True,
         "threshold": None, "message": "GPU 0: persistence mode enabled (not checked)."},
        {"name": "thermal.margin", "gpu": 3, "status": "failed", "passed": False,
         "value": {"max_temperature_c": 87, "slowdown_c": 89, "margin_c": 2}, "threshold": 5,
         "message": "GPU 3: peak 87 C under load."},
    ]  # fmt: skip
    load = {"kind": "torch-matmul", "ran_seconds": 60.0, "tflops_per_gpu": [674.5, 650.0]}
    view = report_view(_report_row({"checks": checks, "load": load}, passed=False))
    assert view.verdict == "failed"
    assert [(c.title, c.gpu, c.status) for c in view.attention] == [
        ("Thermal · margin", "3", "failed"),
        ("PCIe · replays", "1", "not_supported"),
    ]
    assert view.attention[0].limit == "5\u00a0°C" and view.attention[0].message == "peak 87 C under load."
    assert [c.title for c in view.rest] == ["Inventory · memory", "Modes · persistence"]
    assert (
        view.rest[0].measured == "79.65\u00a0GiB"
        and view.rest[0].limit == "expected 80\u00a0GiB, min 76\u00a0GiB"
    )
    assert view.rest[1].limit == ""  # no threshold: nothing, not "None"
    assert view.counts == "4 checks: 1 failed, 1 could not be checked, 1 not checked, 1 passed"
    assert view.rest_counts == "1 not checked, 1 passed"
    assert view.load == "torch-matmul load for 60\u00a0s, 650 to 674.5 TFLOPS per GPU"

    error = report_view(
        _report_row({"checks": [], "error": {"code": "nvml", "message": "NVML missing"}}, False)
    )
    assert (error.verdict, error.error, error.attention, error.rest) == ("error", "NVML missing", [], [])


def test_the_node_page_shows_the_real_report_folded_with_its_verdict(client, inventory):
    import json
    from pathlib import Path

    from provisioner.models import BurnInReport, Node

    report = json.loads(
        (Path(__file__).resolve().parent.parent / "data" / "burnin_real_h100.json").read_text()
    )
    node = Node.objects.get(name="node-a100-8x-01")
    BurnInReport.objects.create(node=node, passed=True, summary=report["summary"], report=report)
    client.force_login(inventory.operator)
    body = client.get(reverse("portal:ops_node", args=[node.pk])).content.decode()
    section = body[body.index('class="card burnin-report"') :]
    assert 'data-verdict="passed"' in section[:100]
    assert "20 checks: 3 not checked, 17 passed" in section
    assert '<details class="all-checks">' in section and "All 20 checks" in section
    assert "attention" not in section  # nothing failed: nothing shown ahead of the fold
    for python_repr in ("{&#x27;", "None", "True", "False"):
        assert python_repr not in section, python_repr
    assert "driver version 580.159.04, CUDA driver version 13.0" in section
