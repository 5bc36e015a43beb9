"""Bad node data through the API: operators get a 400 (invalid_node_data) naming the node and the field when
they ask for work on it, and see in the node's detail why it is not offered; customers only see fewer
servers available, never the node's problem."""

from __future__ import annotations

from rest_framework.test import APIClient

from provisioner.models import ApiToken, BmcCredential, Node, Operation, Rollout

V1 = "/api/v1"


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'test')[1]}")
    return client


def test_reimage_of_a_node_with_a_bad_record_is_a_400_naming_the_node_and_the_field(inventory):
    node = Node.objects.get(name="node-a100-8x-01")
    BmcCredential.objects.filter(node=node).delete()
    refused = api(inventory.operator).post(
        f"{V1}/admin/nodes/{node.pk}/reimage", {"reason": "x"}, format="json"
    )
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "invalid_node_data"
    assert error["message"].startswith("node-a100-8x-01: bmc_credential: no BMC credential is stored")
    assert error["details"] == [
        {"node": "node-a100-8x-01", "field": "bmc_credential", "reason": error["message"].split(": ", 2)[2]}
    ]
    assert not Operation.objects.filter(node=node).exists()


def test_a_rollout_naming_nodes_with_bad_records_is_a_400_and_a_filter_refuses_them_one_by_one(inventory):
    Node.objects.filter(name="node-a100-8x-02").update(boot_mac="")
    operator = api(inventory.operator)
    named = operator.post(
        f"{V1}/admin/reimage-rollouts",
        {"nodes": ["node-a100-8x-01", "node-a100-8x-02"], "max_parallel": 1, "failure_budget": 2},
        format="json",
    )
    assert named.status_code == 400
    error = named.json()["error"]
    assert error["code"] == "invalid_node_data"
    assert [(d["node"], d["field"]) for d in error["details"]] == [("node-a100-8x-02", "boot_mac")]
    assert not Rollout.objects.exists()

    by_filter = operator.post(
        f"{V1}/admin/reimage-rollouts",
        {"filter": {"server_type": "a100-8x"}, "max_parallel": 2, "failure_budget": 2},
        format="json",
    )
    assert by_filter.status_code == 202
    rows = {n["node"]: n for n in by_filter.json()["nodes"]}
    assert rows["node-a100-8x-02"]["state"] == "refused"
    assert "node-a100-8x-02: boot_mac: " in rows["node-a100-8x-02"]["error"]
    assert rows["node-a100-8x-01"]["state"] == "pending"


def test_operators_see_why_a_node_is_not_offered_and_customers_see_only_fewer_servers(inventory):
    Node.objects.filter(name="node-h100-8x-02").update(bmc_address="")
    inventory.h100.burnin_thresholds = {"max_bogus": 1}
    inventory.h100.save()
    broken = Node.objects.get(name="node-h100-8x-02")
    detail = api(inventory.operator).get(f"{V1}/admin/nodes/{broken.pk}").json()
    assert [(p["interface"], p["field"]) for p in detail["driver_problems"]] == [
        ("power", "bmc_address"),
        ("burnin", "server_type.burnin_thresholds"),
    ]
    assert "max_bogus" in detail["driver_problems"][1]["reason"]

    inventory.h100.burnin_thresholds = {}
    inventory.h100.save()
    healthy = Node.objects.get(name="node-h100-8x-01")
    assert api(inventory.operator).get(f"{V1}/admin/nodes/{healthy.pk}").json()["driver_problems"] == []

    types = api(inventory.owner).get(f"{V1}/server-types")
    available = {t["slug"]: t["available"] for t in types.json()["results"]}
    assert available == {"h100-8x": 3, "a100-8x": 2}
    assert "bmc" not in types.content.decode().lower()
