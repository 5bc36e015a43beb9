"""Cancelling a rolling reimage: nothing not yet started starts afterwards, the reimages already started run
to completion (a started reimage has already taken its node out of the pool; stopping it half-way would
strand the node), and the rollout ends cancelled once the last of them finishes, with counts that add up.
A cancel and an advance take the same row lock, so no node starts after a cancel has committed."""

from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections
from rest_framework.test import APIClient

from provisioner.engine.runner import execute
from provisioner.errors import IllegalTransition, InvalidRequest
from provisioner.lifecycle import Actor
from provisioner.models import ApiToken, AuditEvent, Node, Operation, Rollout
from provisioner.services import nodes as node_service
from provisioner.services.rollouts import (
    advance_rollout,
    advance_running_rollouts,
    cancel_rollout,
    progress,
    start_rollout,
)
from provisioner.states import NodeState, OperationState

V1 = "/api/v1"
H100 = ["node-h100-8x-01", "node-h100-8x-02", "node-h100-8x-03", "node-h100-8x-04"]


def _nodes() -> list[Node]:
    return [Node.objects.get(name=n) for n in H100]


def _operator(inv) -> Actor:
    return Actor(user=inv.operator, label="opal")


def _client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {ApiToken.issue(user, 'ops')[1]}")
    return client


def _counts_add_up(rollout: Rollout) -> None:
    p = progress(rollout)
    assert p.succeeded + p.failed + p.skipped + p.running + p.pending == p.total


# --- service ------------------------------------------------------------------------------------------


def test_cancel_stops_further_starts_and_lets_running_reimages_finish(
    inventory, fake_hw_dir, transactional_db
):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=2, failure_budget=0)
    started = list(Operation.objects.filter(rollout=rollout).order_by("id"))
    assert len(started) == 2

    cancelled = cancel_rollout(rollout, actor=_operator(inventory), reason="wrong image picked")
    assert cancelled.state == Rollout.State.CANCELLING
    assert "2 running reimage(s) finish" in cancelled.message and "2 node(s) not started" in cancelled.message
    assert cancelled.finished_at is None

    # the first reimage finishes: its hook advances the rollout, which starts nothing more
    assert execute(started[0].pk) == OperationState.SUCCEEDED
    assert Operation.objects.filter(rollout=rollout).count() == 2
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.CANCELLING
    # the scheduler's pass starts nothing either
    advance_running_rollouts()
    assert Operation.objects.filter(rollout=rollout).count() == 2

    # the last one finishes: the rollout ends cancelled, its counts adding up
    assert execute(started[1].pk) == OperationState.SUCCEEDED
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.CANCELLED
    assert rollout.finished_at is not None
    p = progress(rollout)
    assert (p.succeeded, p.failed, p.skipped, p.running, p.pending) == (2, 0, 0, 0, 2)
    _counts_add_up(rollout)
    assert "2 of 4 node(s) reimaged" in rollout.message and "2 not started" in rollout.message
    assert "wrong image picked" in rollout.message
    # the reimaged nodes are back in the pool, the others were never touched
    states = {n.name: n.state for n in Node.objects.filter(name__in=H100)}
    assert set(states.values()) == {NodeState.AVAILABLE}
    assert not Operation.objects.filter(node__name__in=H100[2:]).exists()


def test_a_failure_after_cancel_is_counted_and_the_rollout_still_ends_cancelled(
    inventory, fake_hw_dir, transactional_db
):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=2, failure_budget=0)
    first, second = Operation.objects.filter(rollout=rollout).order_by("id")
    cancel_rollout(rollout, actor=_operator(inventory), reason="maintenance window over")
    Operation.objects.filter(pk=first.pk).update(state=OperationState.FAILED, error="BMC refused login")
    advance_rollout(rollout.pk)  # a failure past the budget does not turn a cancelled rollout halted
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.CANCELLING
    assert execute(second.pk) == OperationState.SUCCEEDED
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.CANCELLED
    p = progress(rollout)
    assert (p.succeeded, p.failed, p.skipped, p.pending) == (1, 1, 0, 2)
    assert "1 failed" in rollout.message and "2 not started" in rollout.message


def test_cancel_with_nothing_running_ends_cancelled_at_once(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=3)
    Operation.objects.filter(rollout=rollout).update(state=OperationState.SUCCEEDED)
    cancelled = cancel_rollout(rollout.pk, actor=_operator(inventory), reason="enough for today")
    assert cancelled.state == Rollout.State.CANCELLED
    assert cancelled.finished_at is not None
    p = progress(cancelled)
    assert (p.succeeded, p.running, p.pending) == (1, 0, 3)
    assert Operation.objects.filter(rollout=rollout).count() == 1


def test_cancel_is_audited_with_the_actor_and_the_reason(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    cancel_rollout(rollout, actor=_operator(inventory), reason="wrong image picked")
    event = AuditEvent.objects.get(action="rollout_cancel")
    assert event.actor == inventory.operator
    assert event.reason.endswith("wrong image picked")
    assert event.data["rollout"] == rollout.pk


def test_cancel_needs_a_reason(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    with pytest.raises(InvalidRequest):
        cancel_rollout(rollout, actor=_operator(inventory), reason="  ")
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.RUNNING


def test_cancelling_twice_is_idempotent_and_audited_once(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    first = cancel_rollout(rollout, actor=_operator(inventory), reason="stop")
    again = cancel_rollout(rollout, actor=_operator(inventory), reason="stop!")
    assert again.state == first.state == Rollout.State.CANCELLING
    assert AuditEvent.objects.filter(action="rollout_cancel").count() == 1


@pytest.mark.parametrize("final", [Rollout.State.SUCCEEDED, Rollout.State.HALTED])
def test_a_finished_rollout_cannot_be_cancelled(inventory, final):
    rollout = start_rollout(_nodes()[:1], actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    Rollout.objects.filter(pk=rollout.pk).update(state=final)
    with pytest.raises(IllegalTransition, match=f"already {final}"):
        cancel_rollout(rollout, actor=_operator(inventory), reason="too late")
    assert Rollout.objects.get(pk=rollout.pk).state == final
    assert not AuditEvent.objects.filter(action="rollout_cancel").exists()


def test_an_advance_after_the_cancel_committed_starts_nothing(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    cancel_rollout(rollout, actor=_operator(inventory), reason="stop")
    Rollout.objects.filter(pk=rollout.pk).update(max_parallel=4)  # slots free: only the cancel holds it
    advance_rollout(rollout.pk)
    assert Operation.objects.filter(rollout=rollout).count() == 1


def test_a_cancel_waits_for_an_advance_holding_the_lock_and_counts_what_it_started(
    inventory, transactional_db, monkeypatch
):
    """An advance starting nodes holds the rollout's lock: the cancel waits for it, then sees what it
    started as running (to finish), and nothing starts after the cancel commits."""
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    Rollout.objects.filter(pk=rollout.pk).update(max_parallel=3)
    in_advance = threading.Event()
    cancel_done = threading.Event()
    real_reimage = node_service.reimage

    def slow_reimage(*args, **kwargs):
        op = real_reimage(*args, **kwargs)
        in_advance.set()
        # the cancel must not get through while this advance holds the lock
        assert not cancel_done.wait(timeout=0.5)
        return op

    monkeypatch.setattr(node_service, "reimage", slow_reimage)
    results: dict[str, object] = {}

    def advance() -> None:
        try:
            advance_rollout(rollout.pk)
        except BaseException as exc:  # reported below
            results["advance"] = exc
        finally:
            close_old_connections()

    def cancel() -> None:
        try:
            in_advance.wait(timeout=10)
            results["cancel"] = cancel_rollout(rollout.pk, actor=_operator(inventory), reason="stop")
        except BaseException as exc:  # reported below
            results["cancel"] = exc
        finally:
            cancel_done.set()
            close_old_connections()

    threads = [threading.Thread(target=advance), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert "advance" not in results, results
    cancelled = results["cancel"]
    assert isinstance(cancelled, Rollout), cancelled
    assert Operation.objects.filter(rollout=rollout).count() == 3  # the advance's two starts stood
    assert cancelled.state == Rollout.State.CANCELLING
    assert "3 running reimage(s) finish" in cancelled.message and "1 node(s) not started" in cancelled.message
    cancel_event = AuditEvent.objects.get(action="rollout_cancel")
    assert all(op.created_at <= cancel_event.created_at for op in Operation.objects.filter(rollout=rollout))
    monkeypatch.setattr(node_service, "reimage", real_reimage)
    advance_running_rollouts()
    assert Operation.objects.filter(rollout=rollout).count() == 3


def test_concurrent_cancels_and_advances_never_start_after_the_cancel(inventory, transactional_db):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    Rollout.objects.filter(pk=rollout.pk).update(max_parallel=4)
    barrier = threading.Barrier(7)
    failures: list[BaseException] = []

    def run(fn) -> None:
        try:
            barrier.wait(timeout=10)
            fn()
        except BaseException as exc:  # reported by the assertion below
            failures.append(exc)
        finally:
            close_old_connections()

    jobs = [lambda: advance_rollout(rollout.pk)] * 5 + [
        lambda: cancel_rollout(rollout.pk, actor=_operator(inventory), reason="stop")
    ] * 2
    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert failures == []
    cancel_event = AuditEvent.objects.get(action="rollout_cancel")
    ops = Operation.objects.filter(rollout=rollout)
    assert all(op.created_at <= cancel_event.created_at for op in ops)
    rollout.refresh_from_db()
    assert rollout.state == Rollout.State.CANCELLING
    assert progress(rollout).running == ops.count()
    _counts_add_up(rollout)


# --- API ----------------------------------------------------------------------------------------------


def test_api_cancel_returns_the_rollout_cancelling_then_idempotent(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    client = _client(inventory.operator)
    url = f"{V1}/admin/reimage-rollouts/{rollout.pk}/cancel"
    response = client.post(url, {"reason": "wrong image"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["state"] == "cancelling"
    assert body["counts"] == {
        "total": 4,
        "succeeded": 0,
        "failed": 0,
        "skipped": 0,
        "running": 1,
        "pending": 3,
    }
    assert body["cancel_reason"] == "wrong image"
    assert body["cancelled_by"] == inventory.operator.username
    again = client.post(url, {"reason": "wrong image"}, format="json")
    assert again.status_code == 200 and again.json()["state"] == "cancelling"
    event = AuditEvent.objects.get(action="rollout_cancel")
    assert event.actor == inventory.operator and event.request_id


def test_api_cancel_of_a_finished_rollout_is_a_409(inventory):
    rollout = start_rollout(_nodes()[:1], actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    Rollout.objects.filter(pk=rollout.pk).update(state=Rollout.State.SUCCEEDED)
    response = _client(inventory.operator).post(
        f"{V1}/admin/reimage-rollouts/{rollout.pk}/cancel", {"reason": "late"}, format="json"
    )
    assert response.status_code == 409
    assert "already succeeded" in response.json()["error"]["message"]


def test_api_cancel_needs_a_reason_and_staff(inventory):
    rollout = start_rollout(_nodes(), actor=Actor.system("test"), max_parallel=1, failure_budget=0)
    url = f"{V1}/admin/reimage-rollouts/{rollout.pk}/cancel"
    assert _client(inventory.operator).post(url, {}, format="json").status_code == 400
    assert _client(inventory.owner).post(url, {"reason": "x"}, format="json").status_code == 403
    assert (
        _client(inventory.operator)
        .post(f"{V1}/admin/reimage-rollouts/999999/cancel", {"reason": "x"}, format="json")
        .status_code
        == 404
    )
    assert Rollout.objects.get(pk=rollout.pk).state == Rollout.State.RUNNING


def test_api_schema_types_the_cancel_action(inventory):
    schema = _client(inventory.operator).get("/api/schema/", {"format": "json"}).json()
    post = schema["paths"]["/api/v1/admin/reimage-rollouts/{id}/cancel/"]["post"]
    request_ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert request_ref.endswith("/RolloutCancelRequest")
    assert schema["components"]["schemas"]["RolloutCancelRequest"]["required"] == ["reason"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/Rollout")
    assert {"400", "401", "403", "404", "409"} <= set(post["responses"])
    states = schema["components"]["schemas"]["RolloutStateEnum"]["enum"]
    assert {"cancelling", "cancelled"} <= set(states)
