"""Rolling bulk reimage through the API with real worker processes and fake hardware: the concurrency cap
holds, the failure budget halts the rollout, and concurrent advancing never over-starts."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections
from rest_framework.test import APIClient

from provisioner.drivers.base import BmcAccess
from provisioner.drivers.fake import write_fake_bmc
from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, Node, Operation, Rollout
from provisioner.services.rollouts import (
    MAX_ROLLOUT_NODES,
    advance_rollout,
    advance_running_rollouts,
    start_rollout,
)
from provisioner.states import NodeState, OperationState
from tests.conftest import wait_for

V1 = "/api/v1"
H100 = ["node-h100-8x-01", "node-h100-8x-02", "node-h100-8x-03", "node-h100-8x-04"]


def operator_client(inv) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(inv.operator, 'ops')[1]}")
    return client


def rollout_done(client: APIClient, rollout_id: int):
    """One scheduler pass (what the scheduler loop calls), then the rollout if it has finished."""
    advance_running_rollouts()
    body = client.get(f"{V1}/admin/reimage-rollouts/{rollout_id}").json()
    return body if body["state"] != "running" else None


def max_overlap(ops: list[Operation]) -> int:
    """Most operations unfinished at the same instant, from creation to finish (stricter than start)."""
    events = sorted([(op.created_at, 1) for op in ops] + [(op.finished_at, -1) for op in ops])
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


@pytest.mark.slow
def test_rollout_never_runs_more_than_max_parallel(inventory, fake_hw_dir, workers):
    for _ in range(3):
        workers.worker()
    for name in H100:  # each wipe takes a moment, so a third node would overlap if the cap leaked
        node = Node.objects.get(name=name)
        write_fake_bmc(_access(node), fault="slow", slow_seconds=0.3)
    client = operator_client(inventory)
    created = client.post(
        f"{V1}/admin/reimage-rollouts", {"nodes": H100, "max_parallel": 2, "failure_budget": 0}, format="json"
    )
    assert created.status_code == 202, created.content
    body = created.json()
    assert body["counts"] == {
        "total": 4,
        "succeeded": 0,
        "failed": 0,
        "skipped": 0,
        "running": 2,
        "pending": 2,
    }
    assert [n["operation"] is not None for n in body["nodes"]] == [True, True, False, False]
    done = wait_for(
        lambda: rollout_done(client, body["id"]),
        90,
        interval=0.2,
        message="rollout finished",
        details=workers.logs,
    )
    assert done["state"] == "succeeded", done
    assert done["counts"] == {
        "total": 4,
        "succeeded": 4,
        "failed": 0,
        "skipped": 0,
        "running": 0,
        "pending": 0,
    }
    ops = list(Operation.objects.filter(rollout_id=body["id"]))
    assert len(ops) == 4 and all(op.state == OperationState.SUCCEEDED for op in ops)
    assert max_overlap(ops) == 2
    starts = sorted(op.started_at for op in ops)
    finishes = sorted(op.finished_at for op in ops)
    # the third node started only after one of the first two finished
    assert starts[2] >= finishes[0]
    assert all(Node.objects.get(name=n).state == NodeState.AVAILABLE for n in H100)


@pytest.mark.slow
def test_failure_budget_zero_halts_after_one_failure(inventory, fake_hw_dir, workers):
    workers.worker()
    broken = Node.objects.get(name="node-h100-8x-01")
    write_fake_bmc(_access(broken), fault="auth")  # its wipe fails for good: the BMC refuses our login
    client = operator_client(inventory)
    created = client.post(
        f"{V1}/admin/reimage-rollouts", {"nodes": H100, "max_parallel": 1, "failure_budget": 0}, format="json"
    ).json()
    done = wait_for(
        lambda: rollout_done(client, created["id"]),
        60,
        interval=0.2,
        message="rollout halted",
        details=workers.logs,
    )
    assert done["state"] == "halted"
    assert done["halted_reason"].startswith("halted: 1 node(s) failed, more than the failure budget of 0")
    assert done["counts"] == {
        "total": 4,
        "succeeded": 0,
        "failed": 1,
        "skipped": 0,
        "running": 0,
        "pending": 3,
    }
    assert (
        Operation.objects.filter(rollout_id=created["id"]).count() == 1
    )  # nothing started after the failure
    assert done["nodes"][0]["state"] == "failed" and "refused" in done["nodes"][0]["error"].lower()
    assert Node.objects.get(pk=broken.pk).state == NodeState.ERROR
    assert all(Node.objects.get(name=n).state == NodeState.AVAILABLE for n in H100[1:])


def test_rollout_with_a_leased_node_is_refused_without_force(inventory):
    from provisioner.services.reservations import book_servers

    book_servers(
        inventory.acme,
        inventory.h100,
        1,
        image=inventory.image,
        ssh_keys=[inventory.key],
        actor=Actor(user=inventory.owner, label="olivia"),
    )
    Node.objects.filter(name="node-h100-8x-01").update(state=NodeState.ACTIVE)  # deployed and handed over
    client = operator_client(inventory)
    refused = client.post(
        f"{V1}/admin/reimage-rollouts",
        {"filter": {"server_type": "h100-8x"}, "max_parallel": 2},
        format="json",
    )
    assert refused.status_code == 409
    assert "node-h100-8x-01" in refused.json()["error"]["message"]
    assert Rollout.objects.count() == 0
    neither = client.post(f"{V1}/admin/reimage-rollouts", {"max_parallel": 2}, format="json")
    assert neither.status_code == 400 and "nodes" in neither.json()["error"]["details"]


def test_a_filter_takes_only_servers_that_can_be_reimaged(inventory):
    """A quarantined, held or broken server matched by a filter is left out, not started and counted as a
    failure against the budget; asking for such a state by name is refused in words."""
    for name, state in zip(
        H100[:3], [NodeState.QUARANTINED, NodeState.MAINTENANCE, NodeState.ERROR], strict=True
    ):
        Node.objects.filter(name=name).update(state=state)
    client = operator_client(inventory)

    def start(**spec: str):
        body = {"filter": {"server_type": "h100-8x", **spec}, "max_parallel": 2, "failure_budget": 0}
        return client.post(f"{V1}/admin/reimage-rollouts", body, format="json")

    created = start()
    assert created.status_code == 202, created.json()
    rollout = Rollout.objects.get(pk=created.json()["id"])
    assert [Node.objects.get(pk=pk).name for pk in rollout.node_ids] == H100[3:]
    assert rollout.state == Rollout.State.RUNNING
    assert Operation.objects.filter(node__name=H100[3]).count() == 1
    assert not Operation.objects.filter(node__name__in=H100[:3]).exists()

    refused = start(state="quarantined")
    assert refused.status_code == 400
    assert "quarantined servers cannot be reimaged; use available or active" in str(refused.json())
    none = start(state="available")
    assert none.status_code == 400
    assert "no available node matches this filter" in str(none.json())
    assert Rollout.objects.count() == 1


def test_concurrent_advances_never_exceed_the_cap(inventory, transactional_db):
    nodes = [Node.objects.get(name=n) for n in H100]
    rollout = start_rollout(nodes, actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    Rollout.objects.filter(pk=rollout.pk).update(max_parallel=3)  # three slots now, eight racing advancers
    barrier = threading.Barrier(8)
    failures: list[BaseException] = []

    def advance() -> None:
        try:
            barrier.wait(timeout=10)
            advance_rollout(rollout.pk)
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=advance) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    ops = Operation.objects.filter(rollout=rollout)
    assert ops.count() == 3
    assert len(set(ops.values_list("node_id", flat=True))) == 3


def test_rollout_node_ids_are_json_numbers_and_names_are_strings(inventory):
    """NetBox allows a node named "1234": a number is an id, a string is a name, whatever its characters."""
    target = Node.objects.get(name="node-h100-8x-01")
    numbered = Node.objects.get(name="node-a100-8x-02")
    Node.objects.filter(pk=numbered.pk).update(name=str(target.pk))  # its name is the other node's id
    client = operator_client(inventory)

    by_id = client.post(
        f"{V1}/admin/reimage-rollouts", {"nodes": [target.pk], "max_parallel": 1}, format="json"
    )
    assert by_id.status_code == 202, by_id.content
    assert [n["node_id"] for n in by_id.json()["nodes"]] == [target.pk]

    by_name = client.post(
        f"{V1}/admin/reimage-rollouts", {"nodes": [str(target.pk)], "max_parallel": 1}, format="json"
    )
    assert by_name.status_code == 202, by_name.content
    assert [n["node_id"] for n in by_name.json()["nodes"]] == [numbered.pk]


def test_rollout_refuses_references_that_match_no_node_and_names_each(inventory):
    idle = Node.objects.get(name="node-h100-8x-02")
    client = operator_client(inventory)
    refused = client.post(
        f"{V1}/admin/reimage-rollouts",
        {"nodes": ["node-h100-8x-01", "no-such-node", 987654, str(idle.pk)], "max_parallel": 1},
        format="json",
    )
    assert refused.status_code == 400, refused.content
    problems = refused.json()["error"]["details"]["nodes"]
    assert any("no node named 'no-such-node'" in p for p in problems)
    assert any("no node with id 987654" in p for p in problems)
    # an id sent as a string names no node: the answer says how to send it, and nothing starts
    assert any(f"no node named '{idle.pk}'" in p and f"send it as a number: {idle.pk}" in p for p in problems)
    assert Rollout.objects.count() == 0
    for wrong in ([True], [1.5], [None], [{"id": 1}], [""]):
        bad = client.post(f"{V1}/admin/reimage-rollouts", {"nodes": wrong, "max_parallel": 1}, format="json")
        assert bad.status_code == 400, (wrong, bad.content)
    assert Rollout.objects.count() == 0


def test_a_failure_budget_beyond_any_rollout_is_a_clear_400_not_a_500(inventory):
    """A rollout covers at most MAX_ROLLOUT_NODES nodes, so a larger budget means nothing; a huge one
    overflowed the database column (OverflowError on SQLite, out of range on PostgreSQL): a 500."""
    client = operator_client(inventory)
    for budget in (MAX_ROLLOUT_NODES + 1, 3_000_000_000, 10**20):
        refused = client.post(
            f"{V1}/admin/reimage-rollouts",
            {"nodes": ["node-h100-8x-01"], "max_parallel": 1, "failure_budget": budget},
            format="json",
        )
        assert refused.status_code == 400, (budget, refused.content)
        assert "failure_budget" in refused.json()["error"]["details"]
    assert Rollout.objects.count() == 0
    most = client.post(
        f"{V1}/admin/reimage-rollouts",
        {"nodes": ["node-h100-8x-01"], "max_parallel": 1, "failure_budget": MAX_ROLLOUT_NODES},
        format="json",
    )
    assert most.status_code == 202, most.content


def test_rollout_schema_documents_node_ids_as_integers_and_names_as_strings(inventory):
    client = operator_client(inventory)
    schema = client.get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    nodes = schema.json()["components"]["schemas"]["RolloutCreateRequest"]["properties"]["nodes"]
    assert sorted(v["type"] for v in nodes["items"]["oneOf"]) == ["integer", "string"]


def test_a_reimage_cancelled_by_a_release_is_skipped_not_a_failure(inventory, fake_hw_dir, transactional_db):
    """The customer released the server while the rollout's reimage waited: no server failed, so the
    rollout carries on (failure budget 0) and says the node was skipped."""
    from provisioner.engine.runner import execute
    from provisioner.services.reservations import book_servers, release_reservation

    reservation = book_servers(
        inventory.acme,
        inventory.h100,
        1,
        image=inventory.image,
        ssh_keys=[inventory.key],
        actor=Actor(user=inventory.owner, label="olivia"),
    ).reservation
    provision = Operation.objects.get(reservation=reservation)
    assert execute(provision.pk) == OperationState.SUCCEEDED
    leased = Node.objects.get(pk=provision.node_id)
    assert leased.state == NodeState.ACTIVE
    idle = Node.objects.get(name="node-h100-8x-04")
    rollout = start_rollout(
        [leased, idle], actor=Actor.system("test"), max_parallel=1, failure_budget=0, force=True
    )
    reimage = Operation.objects.get(rollout=rollout)
    release_reservation(reservation, actor=Actor(user=inventory.owner, label="olivia"))

    assert execute(reimage.pk) == OperationState.CANCELLED
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.RUNNING, rollout.message
    client = operator_client(inventory)
    body = client.get(f"{V1}/admin/reimage-rollouts/{rollout.pk}").json()
    assert body["counts"] == {
        "total": 2,
        "succeeded": 0,
        "failed": 0,
        "skipped": 1,
        "running": 1,
        "pending": 0,
    }
    assert body["nodes"][0]["state"] == "cancelled"
    assert body["nodes"][0]["error"]

    clean = Operation.objects.get(rollout=rollout, node=idle)
    assert execute(clean.pk) == OperationState.SUCCEEDED
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.SUCCEEDED
    assert "1 of 2 node(s) reimaged" in rollout.message and "1 skipped" in rollout.message
    assert "failed" not in rollout.message

    # the portal's rollout page counts the skipped node as done, and not as failed
    from django.test import Client

    portal = Client()
    portal.force_login(inventory.operator)
    page = portal.get(f"/ops/rollouts/{rollout.pk}/").content.decode()
    assert '<strong id="rollout-done">2</strong> / 2' in page
    assert '<span id="rollout-skipped">1</span>' in page
    assert '<span class="label">Failed</span> <span class="">0</span>' in page


def _access(node: Node) -> BmcAccess:
    return BmcAccess(
        protocol="fake", address=node.bmc_address, port=node.bmc_port, username="admin", password=""
    )
