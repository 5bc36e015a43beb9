"""One node filter (provisioner.filtersets.NodeFilterSet) serves the operator API, the portal's fleet page
and rollout filters: the same filter picks the same nodes in each, and each refuses a bad value in its own
words."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from provisioner.filtersets import NodeFilterSet
from provisioner.models import ApiToken, Node, Rack, Rollout, Site
from provisioner.states import NodeState

pytestmark = pytest.mark.django_db
V1 = "/api/v1"


@pytest.fixture
def fleet(inventory):
    """The inventory's lab nodes, one h100 moved to a second site and one put on maintenance."""
    edge = Rack.objects.create(site=Site.objects.create(slug="edge", name="Edge"), name="e1")
    Node.objects.filter(name="node-h100-8x-02").update(rack=edge)
    Node.objects.filter(name="node-h100-8x-03").update(state=NodeState.MAINTENANCE)
    return inventory


def _operator_api(inv) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(inv.operator, 'filters')[1]}")
    return client


def _api_names(inv, query: dict[str, str]) -> list[str]:
    response = _operator_api(inv).get(f"{V1}/admin/nodes", query)
    assert response.status_code == 200, response.content
    return sorted(n["name"] for n in response.json()["results"])


def _portal_names(inv, query: dict[str, str]) -> tuple[list[str], str]:
    client = Client()
    client.force_login(inv.operator)
    body = client.get(reverse("portal:ops_fleet"), query).content.decode()
    return sorted(re.findall(r'data-node="([^"]+)"', body)), body


def test_the_api_the_portal_and_a_rollout_pick_the_same_nodes_for_one_filter(fleet):
    spec = {"state": "available", "site": "lab", "server_type": "h100-8x"}
    expected = ["node-h100-8x-01", "node-h100-8x-04"]
    assert _api_names(fleet, spec) == expected
    assert _portal_names(fleet, spec)[0] == expected
    assert sorted(NodeFilterSet(spec, queryset=Node.objects.all()).qs.values_list("name", flat=True)) == (
        expected
    )
    started = _operator_api(fleet).post(
        f"{V1}/admin/reimage-rollouts", {"filter": spec, "max_parallel": 1}, format="json"
    )
    assert started.status_code == 202, started.content
    rollout = Rollout.objects.get(pk=started.json()["id"])
    assert [Node.objects.get(pk=pk).name for pk in rollout.node_ids] == expected


def test_site_and_name_filters_narrow_the_api_and_the_portal_alike(fleet):
    assert _api_names(fleet, {"site": "edge"}) == ["node-h100-8x-02"]
    assert _portal_names(fleet, {"site": "edge"})[0] == ["node-h100-8x-02"]
    a100 = ["node-a100-8x-01", "node-a100-8x-02"]
    assert _api_names(fleet, {"q": "A100"}) == a100
    assert _portal_names(fleet, {"q": "A100"})[0] == a100


def test_a_bad_value_is_refused_by_the_api_flagged_by_the_portal_and_named_by_a_rollout(fleet):
    refused = _operator_api(fleet).get(f"{V1}/admin/nodes", {"state": "bogus", "power": "sideways"})
    assert refused.status_code == 400
    assert set(refused.json()["error"]["details"]) == {"state", "power"}

    names, body = _portal_names(fleet, {"power": "sideways", "server_type": "a100-8x"})
    assert 'id="fleet-filter-errors"' in body and "power &#x27;sideways&#x27;" in body, body
    assert names == ["node-a100-8x-01", "node-a100-8x-02"]  # the valid filter still applies

    rollout = _operator_api(fleet).post(
        f"{V1}/admin/reimage-rollouts", {"filter": {"state": "bogus"}, "max_parallel": 1}, format="json"
    )
    assert rollout.status_code == 400
    assert rollout.json()["error"]["details"] == {"filter": {"state": ["unknown state 'bogus'"]}}
    assert not Rollout.objects.exists()
