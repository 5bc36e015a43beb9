"""One notion of a node being held (engine.locks.held_by), and preconditions checked in code: a function
that needs its caller's transaction refuses to run outside one."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import transaction
from django.utils import timezone

from provisioner.engine.locks import held_by
from provisioner.engine.queue import create_operation
from provisioner.lifecycle import Actor
from provisioner.models import Node, Operation
from provisioner.services import nodes, reservations
from provisioner.states import OperationKind, OperationState
from provisioner.transactions import NotInTransaction
from tests.conftest import reserve


@pytest.mark.django_db
def test_a_node_is_held_by_an_open_operation_waiting_included_or_by_a_live_lease(inventory):
    node = Node.objects.filter(server_type=inventory.h100).first()
    assert held_by(node) == "" and not nodes.busy(node)
    op = create_operation(OperationKind.POWER, node, params={"action": "on"})
    Operation.objects.filter(pk=op.pk).update(state=OperationState.WAITING)
    assert held_by(node) == f"operation {op.pk} (power, waiting)" and nodes.busy(node)
    Operation.objects.filter(pk=op.pk).update(state=OperationState.SUCCEEDED)
    Node.objects.filter(pk=node.pk).update(
        lease_owner="w1", lease_expires_at=timezone.now() + dt.timedelta(seconds=9)
    )
    assert held_by(node) == "a lease held by w1"
    Node.objects.filter(pk=node.pk).update(lease_expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert held_by(node) == ""  # an expired lease holds nothing: the next operation takes it


@pytest.mark.django_db(transaction=True)
def test_functions_that_need_the_callers_transaction_refuse_to_run_without_one(inventory):
    r = reserve(inventory, 1)
    node = Node.objects.get(reservation=r)
    with pytest.raises(NotInTransaction, match="take_node_out must be called inside a transaction"):
        reservations.take_node_out(r, node, Actor.system("test"), "test")
    with pytest.raises(NotInTransaction, match="lock_server_type"):
        reservations.lock_server_type(inventory.h100)
    assert Node.objects.get(pk=node.pk).reservation_id == r.pk  # nothing was done
    with transaction.atomic():
        reservations.take_node_out(r, node, Actor.system("test"), "test")
    assert Node.objects.get(pk=node.pk).reservation_id is None
