"""The main pages as a new customer and an operator see them, at desktop width and at a phone's 390 px:
a screenshot of each, and what a screenshot can only suggest, checked: nothing is wider than the phone's
screen, every known_hosts line shows whole on a line of its own, a node page with a two-report burn-in
history stays a few screens tall, help texts look alike, the API docs carry no raw markdown, and the
favicon is served. The data come from the services and the ORM (no lab, no worker processes)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.engine.runner import execute
from provisioner.handover import known_hosts_name
from provisioner.lifecycle import Actor
from provisioner.models import BurnInReport, Node, Operation
from provisioner.services import nodes as node_services
from provisioner.services import webhooks
from provisioner.sshkeys import parse_public_key
from provisioner.states import NodeState, OperationKind, OperationState
from tests.browser.conftest import ARTIFACTS, shot, sign_in
from tests.conftest import reserve

pytestmark = [pytest.mark.browser]

DATA = Path(__file__).resolve().parent.parent / "data"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1400, "height": 900}
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}
ADDRESS = "198.18.0.23"
NODE_PAGE_MAX_HEIGHT = 4000

# The widest element that reaches past the right edge of the window, if any (the page's own width is
# document.documentElement.scrollWidth; a box inside a scroller does not widen the page).
OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  document.querySelectorAll("body *").forEach((el) => {
    const box = el.getBoundingClientRect();
    if (box.width && box.right > width + 1) {
      let clipped = false;
      for (let up = el.parentElement; up; up = up.parentElement) {
        const style = getComputedStyle(up);
        if (style.overflowX !== "visible" && up.getBoundingClientRect().right <= width + 1) { clipped = true; break; }
      }
      if (!clipped) { wide.push(el.tagName.toLowerCase() + "." + el.className + " right=" + Math.round(box.right)); }
    }
  });
  return {scroll: document.documentElement.scrollWidth, wide: wide.slice(0, 8)};
}"""

# For each known_hosts line on the page: its text, whether it starts on a line of its own and whether any
# of it is hidden (cut off by its box or a scrolling parent, or out of the window sideways).
KNOWN_HOSTS_JS = """(selector) => {
  const width = document.documentElement.clientWidth;
  return Array.from(document.querySelectorAll(selector)).map((el) => {
    const box = el.getBoundingClientRect();
    let hidden = el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1;
    for (let up = el.parentElement; up; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (style.overflowY !== "visible" || style.overflowX !== "visible") {
        const outer = up.getBoundingClientRect();
        if (box.top < outer.top - 1 || box.bottom > outer.bottom + 1 || box.right > outer.right + 1) {
          hidden = true;
        }
      }
    }
    const previous = el.previousElementSibling;
    const ownLine = !previous || previous.getBoundingClientRect().bottom <= box.top + 1;
    return {text: el.innerText, hidden: hidden || box.right > width + 1 || box.left < -1, ownLine: ownLine,
            height: box.height};
  });
}"""


# What a person gets who selects the element's text with the mouse.
SELECT_JS = """(sel) => {
  const range = document.createRange();
  range.selectNodeContents(document.querySelector(sel));
  window.getSelection().removeAllRanges();
  window.getSelection().addRange(range);
  return window.getSelection().toString();
}"""

# How many line boxes the user@address part of an ssh command takes: 1 when it does not break.
LOGIN_BOXES_JS = """(el) => {
  const text = el.firstChild, at = text.textContent.lastIndexOf(" ") + 1, range = document.createRange();
  range.setStart(text, at);
  range.setEnd(text, text.textContent.length);
  return new Set(Array.from(range.getClientRects()).map((r) => Math.round(r.top))).size;
}"""


@pytest.fixture
def browser_at(chromium, live_server) -> Iterator:
    """A fresh browser window (own cookies) of the given size: ``browser_at(PHONE)``."""
    contexts = []

    def open_window(viewport: dict[str, int]):
        context = chromium.new_context(viewport=viewport, base_url=live_server.url)
        context.grant_permissions(["clipboard-read", "clipboard-write"])
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield open_window
    for context in contexts:
        context.close()


def _host_keys(tmp_path: Path) -> list[str]:
    """Three real host public keys (ed25519, ecdsa, rsa), as ssh-keygen -A would make them."""
    import subprocess

    lines = []
    for kind, bits in [("ed25519", None), ("ecdsa", "256"), ("rsa", "3072")]:
        path = tmp_path / f"ssh_host_{kind}_key"
        cmd = ["ssh-keygen", "-q", "-N", "", "-t", kind, "-f", str(path), "-C", ""]
        if bits:
            cmd += ["-b", bits]
        subprocess.run(cmd, check=True)
        lines.append((tmp_path / f"ssh_host_{kind}_key.pub").read_text().split()[:2])
    return [" ".join(parts) for parts in lines]


@pytest.fixture
def handed_over(inventory, fake_hw_dir, tmp_path):
    """A reservation whose one server went through the real provisioning steps (fake hardware drivers,
    run in this process) and was handed over at a lab address with three host keys."""
    r = reserve(inventory, label="test", name="llm-finetune")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(provision.pk, owner="browser-test") == OperationState.SUCCEEDED
    node = Node.objects.get(reservation=r)
    assert node.state == NodeState.ACTIVE
    keys = _host_keys(tmp_path)
    host = known_hosts_name(ADDRESS, 22)
    Node.objects.filter(pk=node.pk).update(
        ssh_address=ADDRESS,
        known_hosts="".join(f"{host} {key}\n" for key in keys),
        host_key_fingerprints={key.split()[0]: parse_public_key(key).fingerprint for key in keys},
    )
    node.refresh_from_db()
    return r, node


def _eight_gpu_report(*, failing: bool) -> dict:
    """The report a real H100 host wrote (tests/data), widened to eight GPUs as on an 8x H100 server; with
    ``failing``, GPU 3 ran hot and GPU 5 cannot count its PCIe replays."""
    real = json.loads((DATA / "burnin_real_h100.json").read_text())
    report = copy.deepcopy(real)
    host_checks = [c for c in real["checks"] if c["gpu"] is None]
    gpu_checks = [c for c in real["checks"] if c["gpu"] == 0]
    checks = host_checks[:2]
    for gpu in range(8):
        for check in gpu_checks:
            one = copy.deepcopy(check)
            one["gpu"] = gpu
            one["message"] = one["message"].replace("GPU 0:", f"GPU {gpu}:")
            checks.append(one)
    checks += host_checks[2:]
    if failing:
        for c in checks:
            if c["name"] == "thermal.margin" and c["gpu"] == 3:
                c.update(
                    passed=False,
                    status="failed",
                    value={"max_temperature_c": 87, "slowdown_c": 89, "margin_c": 2},
                    message="GPU 3: peak 87 C under load, only 2 C below the slowdown threshold (need 5 C).",
                )
            if c["name"] == "pcie.replays" and c["gpu"] == 5:
                c.update(
                    status="not_supported", value=None, message="GPU 5: PCIe replay counter not supported."
                )
    failed = [c for c in checks if c["status"] == "failed"]
    report.update(checks=checks, passed=not failed)
    report["summary"] = (
        f"FAILED: {len(failed)} of {len(checks)} checks failed. " + " ".join(c["message"] for c in failed)
        if failed
        else f"PASSED: {len(checks)} checks on 8 GPUs, none failed."
    )
    return report


@pytest.fixture
def node_with_history(inventory, fake_hw_dir):
    """An idle server with a long lifecycle (maintenance cycles, each wiped) and two burn-in reports: a
    failed one, then a passed one."""
    node = Node.objects.get(name="node-a100-8x-01")
    opal = Actor(user=inventory.operator, label="opal")
    for i in range(8):
        node = node_services.set_maintenance(node, True, actor=opal, reason=f"replace fan {i + 1}")
        node = node_services.set_maintenance(node, False, actor=opal, reason="fan replaced, tested")
        clean = Operation.objects.filter(node=node, kind=OperationKind.CLEAN).latest("created_at")
        assert execute(clean.pk, owner="browser-test") == OperationState.SUCCEEDED
    for failing in (True, False):
        report = _eight_gpu_report(failing=failing)
        BurnInReport.objects.create(
            node=node,
            passed=report["passed"],
            summary=report["summary"],
            failed_checks=[
                {"name": c["name"], "gpu": c["gpu"], "message": c["message"]}
                for c in report["checks"]
                if not c["passed"]
            ],
            report=report,
        )
    node.refresh_from_db()
    assert node.state == NodeState.AVAILABLE
    return node


def _shot_part(page, selector: str, name: str, max_height: int = 1600) -> Path:
    """A screenshot of one element (the first match) of a long page, its first ``max_height`` px: a part
    that can be read at full size, next to the full-page screenshots."""
    path = ARTIFACTS / f"{name}.png"
    box = page.locator(selector).first.bounding_box()
    scroll = page.evaluate("[window.scrollX, window.scrollY]")
    clip = {
        "x": box["x"] + scroll[0],
        "y": box["y"] + scroll[1],
        "width": box["width"],
        "height": min(box["height"], max_height),
    }
    page.screenshot(path=str(path), full_page=True, clip=clip)
    return path


def _fits_the_width(page, where: str) -> None:
    found = page.evaluate(OVERFLOW_JS)
    width = page.viewport_size["width"]
    assert found["scroll"] <= width and not found["wide"], (where, found)


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_customer_pages_fit_the_screen_and_show_every_known_hosts_line_whole(
    browser_at, inventory, handed_over, width
):
    r, node = handed_over
    page = browser_at(WIDTHS[width])
    page.goto("/signup/")
    shot(page, f"pages-{width}-01-signup")
    _fits_the_width(page, "sign-up")
    username_help = page.locator("#id_username ~ .help")
    password_help = page.locator("#id_password1 ~ .help li").first  # Django's password rules, a list
    style = "(el) => [getComputedStyle(el).color, getComputedStyle(el).fontSize]"
    assert password_help.evaluate(style) == username_help.evaluate(style)

    sign_in(page, "olivia", "pw-olivia-123")
    page.goto("/")
    shot(page, f"pages-{width}-02-catalog")
    _fits_the_width(page, "catalog")
    nav = page.locator("nav.mainnav")
    for link in nav.locator("a").all():  # every page one tap away: no link cut off or scrolled away
        assert link.evaluate("(a) => a.getBoundingClientRect().right") <= WIDTHS[width]["width"]
    assert nav.evaluate("(n) => n.scrollWidth <= n.clientWidth")

    page.goto("/api-tokens/")
    page.fill("#id_name", "ci-pipeline")
    page.click("button:has-text('Create token')")
    page.wait_for_selector(".token-once")
    shot(page, f"pages-{width}-04-api-tokens")
    _fits_the_width(page, "API tokens")

    # the other customer pages with a table: rows become labelled blocks on a phone, nothing spills
    webhook, _ = webhooks.create_endpoint(
        inventory.acme,
        "https://hooks.example.com/neocloud/events/production-billing-pipeline",
        actor=Actor.system("test"),
        event_types=["node.transition", "reservation.created", "reservation.released"],
    )
    test = webhooks.send_test(webhook, actor=Actor.system("test"))
    test.attempt_log.create(
        at=test.created_at, outcome="unreachable", error="could not connect: " + "x" * 120, latency_ms=3.2
    )
    type(test).objects.filter(pk=test.pk).update(
        attempts=1, last_error="could not connect: " + "x" * 120, last_latency_ms=3.2
    )
    for path, name in [
        ("/reservations/", "04b-reservations"),
        ("/ssh-keys/", "04c-ssh-keys"),
        ("/audit/", "04d-audit"),
        ("/webhooks/", "04e-webhooks"),
        (f"/webhooks/{webhook.pk}/", "04f-webhook-log"),
        ("/usage/", "04g-usage"),
    ]:
        page.goto(path)
        shot(page, f"pages-{width}-{name}")
        _fits_the_width(page, path)

    page.goto("/api/docs/")
    shot(page, f"pages-{width}-05-api-docs")
    _fits_the_width(page, "API docs")
    _shot_part(page, "#getting-started", f"pages-{width}-05a-api-docs-getting-started")
    _shot_part(page, "#v1_admin_nodes_list", f"pages-{width}-05b-api-docs-enum-parameters")
    _shot_part(page, "#schema-Operation", f"pages-{width}-05c-api-docs-schema")
    assert "* `" not in page.inner_text("body")

    page.goto(f"/reservations/{r.pk}/")
    page.wait_for_selector(f"article.server[data-node='{node.name}'] .known-hosts")
    shot(page, f"pages-{width}-03-reservation")
    _fits_the_width(page, "reservation")
    lines = page.evaluate(KNOWN_HOSTS_JS, ".known-hosts .kh-line")
    assert [line["text"] for line in lines] == node.known_hosts.splitlines()
    assert all(line["ownLine"] and not line["hidden"] for line in lines), lines
    assert "these lines" in page.inner_text(f"article.server[data-node='{node.name}']")
    # selected by hand, and copied with the button, they are lines, as in a known_hosts file
    selected = page.evaluate(SELECT_JS, f"#kh-{node.name}")
    assert selected.strip().splitlines() == node.known_hosts.splitlines()
    page.click(f"button[data-copy='#kh-{node.name}']")
    assert page.evaluate("navigator.clipboard.readText()") == node.known_hosts
    command = page.locator(f"#ssh-{node.name}")
    assert command.inner_text() == f"ssh root@{ADDRESS}"
    assert command.evaluate(LOGIN_BOXES_JS) == 1  # "root@198.18.0.23" is never split over two lines


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_node_page_shows_a_verdict_per_report_and_stays_a_few_screens_tall(
    browser_at, inventory, node_with_history, width
):
    node = node_with_history
    page = browser_at(WIDTHS[width])
    sign_in(page, "opal", "pw-opal-12345")
    page.goto(f"/ops/nodes/{node.pk}/")
    page.wait_for_selector(".burnin-report")
    shot(page, f"pages-{width}-06-node")
    _shot_part(page, "#node-live .grid-3", f"pages-{width}-06a-node-status-and-timeline")
    _fits_the_width(page, "node detail")
    height = page.evaluate("document.documentElement.scrollHeight")
    if width == "desktop":
        assert height < NODE_PAGE_MAX_HEIGHT, height
    reports = page.locator(".burnin-report")
    assert reports.count() == 2
    newest, oldest = reports.nth(0), reports.nth(1)
    assert "passed" in newest.locator(".verdict").inner_text().lower()
    assert "failed" in oldest.locator(".verdict").inner_text().lower()
    # the failed check and the warning are shown without a click; the passed ones are folded away
    attention = oldest.locator(".attention")
    assert attention.is_visible()
    rows = attention.locator("tbody tr")
    assert rows.count() == 2  # failed first, then the one the GPU could not answer
    assert rows.nth(0).locator("td").nth(1).inner_text() == "3" and "peak 87 C" in rows.nth(0).inner_text()
    assert (
        rows.nth(1).locator("td").nth(1).inner_text() == "5" and "not supported" in rows.nth(1).inner_text()
    )
    folded = oldest.locator("details.all-checks")
    assert folded.get_attribute("open") is None
    assert not folded.locator("tbody tr").first.is_visible()
    text = page.inner_text("main")
    for python_repr in ("{'", "None", "True", "False", "[]"):
        assert python_repr not in text, python_repr
    folded.locator("summary").click()
    assert "79.65\u00a0GiB" in folded.inner_text() and "64\u00a0°C" in folded.inner_text()
    timeline = page.locator(".timeline")
    assert timeline.evaluate("(el) => el.scrollHeight > el.clientHeight")  # long history: it scrolls
    assert timeline.evaluate("(el) => getComputedStyle(el).overflowY") in ("auto", "scroll")
    assert "newest first; scroll for older" in page.inner_text(".timeline-count")
    _shot_part(page, ".burnin-report[data-verdict=failed]", f"pages-{width}-07-node-checks-unfolded", 1400)


def test_every_page_names_the_favicon_and_it_is_served(browser_at, live_server, inventory):
    page = browser_at(DESKTOP)
    page.goto("/login/")
    href = page.locator("head link[rel~=icon]").first.get_attribute("href")
    assert href
    for url in ("/favicon.ico", href):
        response = page.request.get(url)
        assert response.status == 200 and response.headers["content-type"].startswith("image/"), url
    # what it looks like: the ICO and the SVG at tab size and enlarged, on the page's own background
    page.evaluate(
        """(svg) => { document.body.innerHTML = '<div id="icons" style="display:inline-flex;gap:12px;'
        + 'align-items:end;padding:12px;background:#fff">'
        + [16, 32, 48, 128].map((s) => '<img src="/favicon.ico" width="' + s + '" height="' + s + '">').join("")
        + '<img src="' + svg + '" width="128" height="128"></div>'; }""",
        page.locator("head link[rel~=icon][type='image/svg+xml']").get_attribute("href"),
    )
    page.wait_for_function("Array.from(document.images).every((img) => img.complete && img.naturalWidth)")
    _shot_part(page, "#icons", "pages-favicon")


@pytest.mark.parametrize("width", ["desktop", "phone"])
def test_fleet_page_shows_the_last_netbox_sync_and_why_devices_were_skipped(browser_at, inventory, width):
    from django.utils import timezone

    from provisioner.models import InventorySync

    now = timezone.now()
    InventorySync.objects.create(
        started_at=now,
        finished_at=now,
        source="https://netbox.example.com",
        role="gpu-server",
        actor="netbox-sync",
        outcome="skipped",
        counts={"created": 1, "updated": 1, "unchanged": 40, "skipped": 1},
        results=[
            {"device": "ams1-gpu-07", "outcome": "created", "message": "h100-8x, ipmi 10.10.0.7:623"},
            {"device": "ams1-gpu-02", "outcome": "updated", "message": "switch_port swp1 -> swp2"},
            {
                "device": "ams1-gpu-09",
                "outcome": "skipped",
                "message": "device ams1-gpu-09: oob_ip (the BMC's address) is not set",
            },
        ],
        places=["rack ams1/r03 created"],
        notes=["NetBox has no inventory-item role 'gpu': GPU counts and models are not checked"],
    )
    page = browser_at(WIDTHS[width])
    sign_in(page, "opal", "pw-opal-12345")
    page.goto("/ops/")
    card = page.locator("#last-sync")
    assert "Last NetBox sync" in card.inner_text()
    assert card.locator("details").get_attribute("open") is not None  # something was skipped: open
    assert "oob_ip (the BMC's address) is not set" in card.inner_text()
    _shot_part(page, "#last-sync", f"pages-{width}-08-fleet-last-sync", 900)
    _fits_the_width(page, "fleet")
