"""The portal's usage page: the current organization's statement with its chart, its CSV, and the spend so far
in the header of each reservation page."""

from __future__ import annotations

import pytest

from provisioner.services import metering
from tests.services.test_metering import at, lease, price

pytestmark = pytest.mark.django_db


@pytest.fixture
def used(inventory):
    price(inventory.h100, 1500, at(2026, 1, 1))
    return lease(inventory, "node-h100-8x-01", at(2026, 11, 2), handed_over=at(2026, 11, 2, 1),
                 ended=at(2026, 11, 3, 1))  # fmt: skip


def test_the_usage_page_shows_the_statement_with_a_chart_of_gpu_hours(client, inventory, used):
    client.force_login(inventory.owner)
    page = client.get("/usage/2026-11/")
    assert page.status_code == 200
    html = page.content.decode()
    stmt = metering.statement(inventory.acme, 2026, 11)
    assert stmt.total_cents == 24 * 1500
    assert "360.00 USD" in html and 'href="/usage/2026-11/csv/"' in html
    assert (
        '<svg class="chart"' in html and "h100-8x: 184" in html
    )  # 8 GPUs x 23 h on the 2nd (1 h on the 3rd)
    assert 'href="/usage/"' in html  # the nav links the page
    csv = client.get("/usage/2026-11/csv/")
    assert csv.status_code == 200 and csv.content.decode() == metering.statement_csv(stmt)
    assert client.get("/usage/2026-99/").status_code == 404


def test_another_organization_sees_only_its_own_usage(client, inventory, used):
    client.force_login(inventory.outsider)
    html = client.get("/usage/2026-11/").content.decode()
    assert "Other Labs" in html and "node-h100-8x-01" not in html and "0.00 USD" in html
    assert client.get(f"/reservations/{used.pk}/").status_code == 404


def test_a_reservation_page_shows_what_it_has_cost_so_far(client, inventory, used):
    client.force_login(inventory.member)
    html = client.get(f"/reservations/{used.pk}/").content.decode()
    assert 'id="reservation-spend"' in html and "360.00 USD" in html


def test_the_chart_escapes_its_texts_and_labels_small_figures():
    from webapp.portal.charts import stacked_bars

    svg = stacked_bars(["01", "02"], {"<b>x</b>": [0.004, 0.0]}, title="t & u", unit="GPU-hours")
    assert "<b>" not in svg and "&lt;b&gt;x&lt;/b&gt;" in svg and "t &amp; u" in svg
    assert ">0.005<" in svg and svg.count("<rect") == 2  # one bar (the zero draws nothing), one legend key


def test_the_organization_page_shows_the_monthly_spend_limit(client, inventory):
    client.force_login(inventory.owner)
    assert 'id="spend-limit"' not in client.get("/org/").content.decode()
    inventory.acme.monthly_spend_limit_cents = 1_234_500
    inventory.acme.save()
    assert "12,345.00 USD" in client.get("/org/").content.decode()
