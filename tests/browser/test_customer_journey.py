"""A customer in a real browser: sign in, reserve, watch provisioning progress live to active, read the
host-key fingerprints, release. Real worker processes do the provisioning (fake hardware drivers)."""

from __future__ import annotations

import re

import pytest

from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import write_fake_bmc
from provisioner.models import Node, Reservation
from tests.browser.conftest import shot, sign_in
from tests.conftest import wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SEEN_STATES_JS = """
window.__noReload = true;
window.__seen = [];
document.body.addEventListener("htmx:afterSwap", function () {
  document.querySelectorAll("#reservation-live .server[data-state]").forEach(function (el) {
    window.__seen.push(el.dataset.state);
  });
});
"""


def test_customer_reserves_watches_progress_live_and_releases(page, inventory, fake_hw_dir, workers):
    # Slow BMCs (0.5 s a call) stretch provisioning over seconds so progress is visible between polls.
    for node in Node.objects.filter(name__in=["node-h100-8x-01", "node-h100-8x-02"]):
        access = BmcAccess(
            protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
        )
        write_fake_bmc(access, fault="slow", slow_seconds=0.5)
    workers.worker()
    workers.scheduler()

    page.goto("/")
    assert "/login/" in page.url
    shot(page, "customer-01-sign-in")
    sign_in(page, "olivia", "pw-olivia-123")
    page.wait_for_selector("[data-type=h100-8x]")
    assert page.text_content("[data-testid=avail-now-h100-8x]") == "4"
    shot(page, "customer-02-catalog")

    page.click("[data-type=h100-8x] >> text=Reserve h100-8x")
    page.fill("#id_count", "2")
    page.fill("#id_name", "llm-finetune")
    page.check("input[name=ssh_keys]")
    shot(page, "customer-03-reserve-form")
    page.click("#reserve-form button[type=submit]")
    page.wait_for_url(re.compile(r"/reservations/\d+/$"))
    reservation = Reservation.objects.get(name="llm-finetune")

    # Mark this document (a reload would drop the marker) and record every state htmx swaps in.
    page.evaluate(SEEN_STATES_JS)
    page.wait_for_selector(".server .badge.state-deploying, .server .badge.state-burning_in", timeout=30_000)
    page.wait_for_selector("#reservation-live .server .op .progress-fill")
    shot(page, "customer-04-provisioning-live")

    page.wait_for_selector("#reservation-live[data-state=active]", timeout=90_000)
    page.wait_for_selector(".server .fingerprint")
    assert page.evaluate("window.__noReload") is True
    seen = set(page.evaluate("window.__seen"))
    assert {"deploying", "active"} <= seen or {"burning_in", "active"} <= seen, seen
    nodes = list(Node.objects.filter(reservation=reservation))
    assert len(nodes) == 2
    for node in nodes:
        card = page.locator(f"article.server[data-node='{node.name}']")
        text = card.inner_text()
        for fp in node.host_key_fingerprints.values():
            assert fp in text
        assert f"{node.ssh_user}@{node.ssh_address}" in text
        assert "PASSED" in text  # burn-in summary
    page.locator(".server button.copy").first.click()
    page.wait_for_selector(".server button.copy.copied")
    shot(page, "customer-05-active-with-access")

    page.click("#release-button")
    page.wait_for_selector("text=Released: the servers are being wiped")
    page.evaluate("window.__noReload = true")
    page.wait_for_selector("#reservation-live[data-state=released]", timeout=90_000)
    assert page.evaluate("window.__noReload") is True
    shot(page, "customer-06-released")
    wait_for(
        lambda: all(Node.objects.get(pk=n.pk).state == "available" for n in nodes), 60, message="nodes back"
    )

    page.click("nav >> text=Reservations")
    assert "llm-finetune" in page.inner_text("main")
    shot(page, "customer-07-history")
