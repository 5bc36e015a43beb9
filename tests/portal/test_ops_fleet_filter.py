"""The operator fleet page with a filter value it does not know (?state=bogus, a stale bookmark or a
hand-edited link): it said nothing and dropped every filter, showing the whole fleet."""

from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("htmx", [False, True])
def test_an_unknown_state_is_shown_as_an_error_and_the_other_filters_still_apply(client, inventory, htmx):
    client.force_login(inventory.operator)
    headers = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    response = client.get(
        reverse("portal:ops_fleet"), {"state": "bogus", "server_type": "a100-8x"}, **headers
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="fleet-filter-errors"' in body and "bogus" in body, body
    assert 'data-node="node-a100-8x-01"' in body
    assert 'data-node="node-h100-8x-01"' not in body  # the server type filter still narrows the table


def test_valid_filters_show_no_error(client, inventory):
    client.force_login(inventory.operator)
    body = client.get(reverse("portal:ops_fleet"), {"state": "available"}).content.decode()
    assert 'id="fleet-filter-errors"' not in body
