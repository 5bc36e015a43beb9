"""Metering through the API: statements in JSON and CSV that agree, scoped to their organization, the
reservation's spend, operators' prices, and the money quota's refusal in the API's error shape."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from provisioner.models import ServerTypePrice
from tests.api.test_api_flows import V1, api, reserve_body
from tests.services.test_metering import at, lease, price

pytestmark = pytest.mark.django_db


@pytest.fixture
def november(inventory):
    inv = inventory
    price(inv.h100, 1234, at(2026, 1, 1))
    price(inv.a100, 999, at(2026, 1, 1))
    on_demand = lease(inv, "node-h100-8x-01", at(2026, 10, 30), handed_over=at(2026, 10, 31, 23, 59, 59),
                      ended=at(2026, 11, 3, 4, 5, 6))  # fmt: skip
    window = lease(
        inv, "node-a100-8x-01", at(2026, 11, 29), window_end=at(2026, 12, 2), ended=at(2026, 11, 30)
    )
    return on_demand, window


def test_the_csv_statement_says_what_the_json_statement_says(inventory, november):
    client = api(inventory.owner)
    url = f"{V1}/organizations/{inventory.acme.pk}/statements/2026-11"
    body = client.get(url).json()
    assert body["complete"] is True and body["currency"] == "USD" and body["organization"] == "acme"
    assert body["total_cents"] == sum(r["amount_cents"] for r in body["records"]) > 0
    assert {r["kind"] for r in body["records"]} == {"on_demand", "reserved"}
    assert body["gpu_hours_per_day"][0]["date"] == "2026-11-01" and len(body["gpu_hours_per_day"]) == 30
    assert sum(t["amount_cents"] for t in body["by_server_type"]) == body["total_cents"]

    download = client.get(f"{url}/csv")
    assert download.status_code == 200 and download["Content-Type"].startswith("text/csv")
    assert "acme-2026-11.csv" in download["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(download.content.decode())))
    total = rows.pop()
    assert total["reservation"] == "total" and int(total["amount_cents"]) == body["total_cents"]
    assert int(total["seconds"]) == sum(r["seconds"] for r in body["records"])
    assert rows == [{k: str(v) for k, v in r.items()} for r in body["records"]]

    listed = client.get(f"{V1}/organizations/{inventory.acme.pk}/statements").json()
    assert {"month": "2026-11", "total_cents": body["total_cents"]}.items() <= next(
        s for s in listed if s["month"] == "2026-11"
    ).items()


def test_another_organization_cannot_read_a_statement(inventory, november):
    outsider = api(inventory.outsider)
    base = f"{V1}/organizations/{inventory.acme.pk}/statements"
    for path in (base, f"{base}/2026-11", f"{base}/2026-11/csv"):
        response = outsider.get(path)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    for month in ("2026-13", "9999-12", "0001-01"):
        assert api(inventory.owner).get(f"{base}/{month}").status_code == 404


def test_a_reservation_shows_its_spend_so_far(inventory, november):
    on_demand, window = november
    client = api(inventory.owner)
    # 1 s of October, then until 2026-11-03 04:05:06 at 12.34 USD an hour
    seconds = 1 + 2 * 86400 + 4 * 3600 + 5 * 60 + 6
    expected = (2 * 1 * 1234 + 3600) // 7200 + (2 * (seconds - 1) * 1234 + 3600) // 7200
    assert client.get(f"{V1}/reservations/{on_demand.pk}").json()["spend"] == {
        "amount_cents": expected,
        "currency": "USD",
    }
    # released a day into a three-day window: billed as booked
    spend = client.get(f"{V1}/reservations/{window.pk}").json()["spend"]
    assert spend["amount_cents"] == 3 * 24 * 999
    # a list reads every row's spend at once, and says the same
    listed = {r["id"]: r["spend"] for r in client.get(f"{V1}/reservations").json()["results"]}
    assert listed == {on_demand.pk: {"amount_cents": expected, "currency": "USD"}, window.pk: spend}
    admin = {
        r["id"]: r["spend"] for r in api(inventory.operator).get(f"{V1}/admin/reservations").json()["results"]
    }
    assert admin == listed


def test_a_list_of_reservations_reads_their_spend_in_two_queries(inventory, november):
    client = api(inventory.owner)
    client.get(f"{V1}/reservations")  # the token's "last used" write happens here
    with CaptureQueriesContext(connection) as two_rows:
        client.get(f"{V1}/reservations")
    for i in range(2, 5):
        lease(
            inventory,
            f"node-h100-8x-0{i}",
            at(2026, 11, i),
            handed_over=at(2026, 11, i),
            ended=at(2026, 11, 9),
        )
    with CaptureQueriesContext(connection) as five_rows:
        body = client.get(f"{V1}/reservations").json()
    assert len(body["results"]) == 5 and all(r["spend"]["amount_cents"] > 0 for r in body["results"])
    # one query more per row (the serializer's operations), none for the spend
    assert len(five_rows.captured_queries) - len(two_rows.captured_queries) <= 3


def test_operators_set_prices_that_start_now_or_later(inventory):
    operator, owner = api(inventory.operator), api(inventory.owner)
    created = operator.post(
        f"{V1}/admin/prices", {"server_type": "h100-8x", "cents_per_hour": 2500}, format="json"
    )
    assert created.status_code == 201, created.content
    assert created.json()["cents_per_hour"] == 2500 and created.json()["currency"] == "USD"
    past = operator.post(
        f"{V1}/admin/prices",
        {"server_type": "h100-8x", "cents_per_hour": 1, "effective_from": "2020-01-01T00:00:00Z"},
        format="json",
    )
    assert past.status_code == 400 and "past" in past.json()["error"]["message"]
    huge = operator.post(
        f"{V1}/admin/prices", {"server_type": "h100-8x", "cents_per_hour": 2**31}, format="json"
    )
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "invalid_request"
    euro = operator.post(
        f"{V1}/admin/prices", {"server_type": "h100-8x", "cents_per_hour": 1, "currency": "EUR"}
    )
    assert euro.status_code == 400
    assert [p["cents_per_hour"] for p in operator.get(f"{V1}/admin/prices").json()["results"]] == [2500]
    assert (
        owner.post(f"{V1}/admin/prices", {"server_type": "h100-8x", "cents_per_hour": 1}).status_code == 403
    )
    assert ServerTypePrice.objects.count() == 1


def test_a_reservation_over_the_monthly_spend_limit_is_refused_with_quota_exceeded(inventory, clock):
    inv = inventory
    clock.set(at(2026, 11, 30, 12))
    price(inv.h100, 10_000, at(2026, 11, 1))
    inv.acme.monthly_spend_limit_cents = 100_000
    inv.acme.save()
    client = api(inv.owner)
    ok = client.post(
        f"{V1}/reservations",
        reserve_body(ends_at=(clock.now + dt.timedelta(hours=10)).isoformat()),
        format="json",
    )
    assert ok.status_code == 201, ok.content
    refused = client.post(
        f"{V1}/reservations",
        reserve_body(ends_at=(clock.now + dt.timedelta(hours=1)).isoformat()),
        format="json",
    )
    assert refused.status_code == 403
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded" and "1,000.00 USD in November 2026" in error["message"]
