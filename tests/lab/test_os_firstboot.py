"""First boot of the lab OS image (lab.os_firstboot), run here against a file-backed disk: it
installs what the deploy agent wrote to the config drive, with the permissions sshd insists on."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from lab.os_firstboot import (
    NETPLAN_FILE,
    apply_config,
    first_boot_of_instance,
    main,
    network_config_commands,
    private_network_commands,
    write_network_config,
)
from provisioner.pxe.agent import generate_host_keys
from provisioner.pxe.configdrive import write_config_drive


def _disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(4 * 1024 * 1024)
    return disk


def test_first_boot_installs_hostname_authorized_keys_and_the_agents_host_keys(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    host_keys = generate_host_keys("root@gpu-box-3")
    write_config_drive(
        str(disk),
        {"hostname": "gpu-box-3", "authorized_keys": ["ssh-ed25519 AAAA customer"], "host_keys": host_keys},
    )
    root = tmp_path / "root"
    assert main(["--disk", str(disk), "--root", str(root)]) == 0
    assert (root / "etc/hostname").read_text() == "gpu-box-3\n"
    authorized = root / "root/.ssh/authorized_keys"
    assert authorized.read_text() == "ssh-ed25519 AAAA customer\n"
    assert stat.S_IMODE(authorized.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "root/.ssh").stat().st_mode) == 0o700
    private = root / "etc/ssh/ssh_host_ed25519_key"
    assert private.read_text() == host_keys["ssh-ed25519"]["private"]
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert (root / "etc/ssh/ssh_host_rsa_key.pub").read_text().strip() == host_keys["ssh-rsa"]["public"]
    assert (root / "etc/ssh/ssh_host_ecdsa_key").exists()


def test_first_boot_fails_without_a_config_drive_or_host_keys(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    assert main(["--disk", str(disk), "--root", str(tmp_path / "root")]) == 1
    write_config_drive(str(disk), {"hostname": "gpu-box-4", "authorized_keys": []})
    assert main(["--disk", str(disk), "--root", str(tmp_path / "root")]) == 1
    with pytest.raises(ValueError, match="hostname"):
        apply_config({"authorized_keys": []}, tmp_path / "root")


def test_private_network_becomes_the_boot_nics_address_and_default_route() -> None:
    from lab.os_firstboot import private_network_commands

    document = {"private_network": {"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.1"}}
    assert private_network_commands(document, "eth0") == [
        ["addr", "replace", "198.19.3.2/24", "dev", "eth0"],
        ["link", "set", "eth0", "up"],
        ["route", "replace", "default", "via", "198.19.3.1", "dev", "eth0", "src", "198.19.3.2"],
    ]
    assert private_network_commands({"hostname": "x"}, "eth0") == []


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"address": "198.19.3.2", "prefix": 24}, "needs an IPv4 address, a prefix and a gateway"),
        ({"address": "nowhere", "prefix": 24, "gateway": "198.19.3.1"}, "needs an IPv4 address"),
        (
            {"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.4.1"},
            "is not another host of 198.19.3.0/24",
        ),
        ({"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.2"}, "is not another host"),
        ("198.19.3.2/24", "is not an object"),
    ],
)
def test_a_malformed_private_network_is_one_sentence(network: object, message: str) -> None:
    from lab.os_firstboot import private_network_commands

    with pytest.raises(ValueError, match=message):
        private_network_commands({"private_network": network}, "eth0")


def test_a_reboot_keeps_what_the_os_holds_and_a_new_instance_applies_its_own(tmp_path: Path) -> None:
    """Once per instance, as cloud-init: the handover's removal of our key survives a reboot; the private
    network is kept as a netplan file whose commands bring it up at every boot; a new deploy starts over."""
    disk = _disk(tmp_path)
    document = {
        "hostname": "gpu-box-5",
        "authorized_keys": ["ssh-ed25519 AAAA customer", "ssh-ed25519 BBBB provisioning"],
        "host_keys": generate_host_keys("root@gpu-box-5"),
        "private_network": {"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.1"},
        "instance_id": "deploy-1",
    }
    write_config_drive(str(disk), document)
    root = tmp_path / "root"
    argv = ["--disk", str(disk), "--root", str(root)]
    assert main(argv) == 0
    authorized = root / "root/.ssh/authorized_keys"
    authorized.write_text("ssh-ed25519 AAAA customer\n")  # the handover removed ours
    assert main(argv) == 0  # a reboot
    assert authorized.read_text() == "ssh-ed25519 AAAA customer\n"
    assert not (root / "etc/netplan" / NETPLAN_FILE).exists()  # no --network-interface: not configured

    write_config_drive(str(disk), {**document, "instance_id": "deploy-2"})
    assert main(argv) == 0  # a new instance: its keys
    assert "BBBB provisioning" in authorized.read_text()

    netplan = root / "etc/netplan"
    write_network_config(document, "eth0", netplan)
    commands, private = network_config_commands((netplan / NETPLAN_FILE).read_text())
    assert private == "198.19.3.2"
    assert commands == private_network_commands(document, "eth0")
    assert not first_boot_of_instance(
        {**document, "instance_id": "deploy-2"}, root / "var/lib/neocloud/instance-id"
    )
    write_network_config({**document, "private_network": None}, "eth0", netplan)
    assert not (netplan / NETPLAN_FILE).exists()  # a new instance without one does not keep the last one's
