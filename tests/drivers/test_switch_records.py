"""Switch records without a switch: the registry, the Switch model's secrets, a node's cabling checked with
no I/O (the lab switch tests, tests/lab/test_switch.py, talk to a real one)."""

from __future__ import annotations

import pytest

from provisioner.drivers.registry import switch_driver_class, switch_driver_for
from provisioner.drivers.switch import LinuxSwitchDriver, SwitchAccess
from provisioner.errors import InvalidNodeData, InvalidRequest, UnsupportedOperation

ACCESS = SwitchAccess(
    name="leaf1", driver="linux", address="10.0.0.2", port=22, username="admin", password="s3cret-pw"
)


def test_switch_access_never_shows_its_secrets() -> None:
    shown = repr(SwitchAccess(**{**ACCESS.__dict__, "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----"}))
    assert "s3cret-pw" not in shown and "BEGIN" not in shown
    assert ACCESS.label == "switch leaf1 (10.0.0.2:22)"


def test_registry_names_the_linux_driver_and_refuses_others() -> None:
    assert switch_driver_class("linux") is LinuxSwitchDriver
    with pytest.raises(
        UnsupportedOperation, match="unknown switch driver 'eos' \\(expected one of linux, fake\\)"
    ):
        switch_driver_class("eos")
    with pytest.raises(InvalidRequest, match="switch leaf1: neither a password nor a private key"):
        switch_driver_for(SwitchAccess(**{**ACCESS.__dict__, "password": ""}))
    with pytest.raises(InvalidRequest, match="is not a host name or IP address"):
        switch_driver_for(SwitchAccess(**{**ACCESS.__dict__, "address": "ssh://10.0.0.2"}))


def test_node_cabling_is_checked_without_touching_the_switch(inventory) -> None:
    from provisioner.hardware import node_switch_port
    from provisioner.models import Node, Switch

    node = Node.objects.order_by("name").first()
    assert node is not None
    with pytest.raises(InvalidNodeData) as caught:
        node_switch_port(node)
    assert caught.value.field == "switch_name"

    node.switch_name, node.switch_port = "leaf1", "swp3"
    with pytest.raises(InvalidNodeData, match="switch 'leaf1' is not registered") as caught:
        node_switch_port(node)
    assert caught.value.field == "switch_name"

    switch = Switch(name="leaf1", address="10.0.0.2", username="admin")
    switch.password = "s3cret-pw"
    switch.save()
    assert "s3cret-pw" not in switch.password_encrypted and "s3cret-pw" not in repr(switch)
    driver, port = node_switch_port(node)
    assert isinstance(driver, LinuxSwitchDriver) and port == "swp3"
    assert driver.access.password == "s3cret-pw"

    node.switch_port = "Ethernet1/3"
    with pytest.raises(InvalidNodeData, match="switch leaf1 has no port 'Ethernet1/3'") as caught:
        node_switch_port(node)
    assert caught.value.field == "switch_port"
