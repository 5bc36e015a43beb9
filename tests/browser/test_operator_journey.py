"""An operator in a real browser: the fleet grid, a node's detail, reimage one node and watch it live,
then a bulk rolling reimage with a concurrency cap. Real worker processes run the operations."""

from __future__ import annotations

import itertools
import re

import pytest

from provisioner.models import Node, Operation, Rollout
from provisioner.states import OperationState
from tests.browser.conftest import shot, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_customer_is_refused_operator_pages_in_the_browser(page, inventory):
    sign_in(page, "olivia", "pw-olivia-123")
    assert "Fleet" not in page.inner_text("nav.mainnav")
    response = page.goto("/ops/")
    assert response.status == 403


def test_operator_filters_the_fleet_and_reimages_one_node_live(page, inventory, fake_hw_dir, workers):
    workers.worker()
    workers.scheduler()
    sign_in(page, "opal", "pw-opal-12345")
    page.goto("/ops/")
    page.wait_for_selector("table.node-table")
    assert page.locator("table.node-table tbody tr").count() == 6
    shot(page, "operator-01-fleet")

    page.select_option("select[name=server_type]", "a100-8x")
    page.wait_for_function("document.querySelectorAll('table.node-table tbody tr').length === 2")
    assert "node-h100-8x-01" not in page.inner_text("#fleet-table")

    page.click("text=node-a100-8x-01")
    page.wait_for_url(re.compile(r"/ops/nodes/\d+/$"))
    shot(page, "operator-02-node-detail")

    page.evaluate("window.__noReload = true")
    page.click("#reimage-button")
    page.wait_for_selector("text=node-a100-8x-01 is idle: it is wiped and returns to the pool")
    page.evaluate("window.__noReload = true")
    node = Node.objects.get(name="node-a100-8x-01")
    op = Operation.objects.filter(node=node).latest("created_at")
    page.wait_for_selector(f"#node-live [data-op='{op.pk}'][data-op-state=succeeded]", timeout=60_000)
    assert page.evaluate("window.__noReload") is True  # the operation finished on screen without a reload
    page.wait_for_selector("#node-live .log")
    assert "Available" in page.inner_text("#node-live .card")  # status card updated live as well
    assert "checked never" not in page.inner_text("#node-live .card")  # the wipe powered it off via its BMC
    shot(page, "operator-03-node-reimaged")


def test_operator_bulk_rolling_reimage_respects_the_cap_and_finishes(page, inventory, fake_hw_dir, workers):
    workers.worker()
    workers.scheduler()
    sign_in(page, "opal", "pw-opal-12345")
    page.goto("/ops/?server_type=h100-8x")
    for name in ["node-h100-8x-01", "node-h100-8x-02", "node-h100-8x-03"]:
        page.check(f"tr[data-node='{name}'] input[name=nodes]")
    page.fill("#id_max_parallel", "1")
    page.fill("#id_failure_budget", "0")
    shot(page, "operator-04-rollout-selection")
    page.click("#start-rollout")
    page.wait_for_url(re.compile(r"/ops/rollouts/\d+/$"))
    rollout = Rollout.objects.get()
    assert rollout.max_parallel == 1 and len(rollout.node_ids) == 3
    page.wait_for_selector("#rollout-live >> text=waiting for a slot")
    shot(page, "operator-05-rollout-running")
    page.wait_for_selector("#rollout-live[data-state=succeeded]", timeout=90_000)
    assert page.inner_text("#rollout-done") == "3"
    ops = Operation.objects.filter(rollout=rollout)
    assert ops.count() == 3 and all(o.state == OperationState.SUCCEEDED for o in ops)
    # The cap held: no two of the rollout's operations overlapped in time.
    spans = sorted((o.started_at, o.finished_at) for o in ops)
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    shot(page, "operator-06-rollout-done")
