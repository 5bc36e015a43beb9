"""``lab up --switch``: the lab's own switched topology (lab.switched) from the supervisor, its inventory and
its registered switch, and ``lab down`` taking the switch away. Uses the lab's fixed names and addresses
(nclab-*, 198.18.x.y, lab-leaf1): like every lab, it runs only when no other lab does."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import netns, supervisor, switched
from lab import switch as lab_switch

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(
        not lab_switch.tools_available() or not shutil.which("ping") or not os.path.exists(lab_switch.NFT),
        reason="openssh-server, iproute2, iputils-ping or nftables is not installed",
    ),
]


def _host(*argv: str) -> str:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=True, timeout=20).stdout


def _ping(address: str) -> bool:
    return (
        subprocess.run(["ping", "-c", "1", "-W", "1", address], capture_output=True, check=False).returncode
        == 0
    )


def test_lab_up_with_switch_cables_every_server_and_down_removes_the_switch(tmp_path: Path, db) -> None:
    from lab.management.commands.lab import lab_inventory, register_lab_switch
    from provisioner.hardware import switch_driver
    from provisioner.lifecycle import Actor
    from provisioner.models import Node, SiteNetwork, Switch
    from provisioner.services.inventory import enroll

    lab_dir = tmp_path / "lab"
    try:
        specs = supervisor.up(2, lab_dir, "http://127.0.0.1:1/boot", switch=True)
        assert [(s.switch_name, s.switch_port) for s in specs] == [
            ("lab-leaf1", "swp1"),
            ("lab-leaf1", "swp2"),
        ]
        switch = switched.running_switch(lab_dir)
        assert switch is not None and switch.address == "198.18.255.1"
        shown = lab_switch.bridge_link(switch)
        assert shown == {"swp1": "br100", "swp2": "br100", lab_switch.HOST_UPLINK: "br100"}
        assert "br4000" in _host("-n", switch.netns, "-o", "link", "show", "type", "bridge")
        # the host reaches each server over the provisioning VLAN, the public range over the public uplink
        uplink = lab_switch.host_link_name(switch, "prov")
        assert f"dev {uplink} src 198.18.0.1" in _host("route", "get", specs[1].ssh_address)
        assert _ping(specs[0].ssh_address) and _ping(specs[1].ssh_address)
        assert "via 198.18.254.2" in _host("route", "get", "198.19.254.9")
        # a second `up` keeps the switch and the servers' cabling (no new sshd login key, same ports)
        key = switch.private_key
        lab_switch.set_port_vlan(switch, "swp2", 1000)
        supervisor.up(2, lab_dir, "http://127.0.0.1:1/boot", switch=True)
        assert switched.running_switch(lab_dir).private_key == key  # type: ignore[union-attr]
        assert lab_switch.bridge_link(switch)["swp2"] == "br1000"

        inventory = lab_inventory(specs, {"slug": "demo", "name": "Demo", "url": "http://x/y", "sha256": "0" * 64,
                                          "size_bytes": 1, "format": "raw", "os_name": "Demo"}, lab_dir)  # fmt: skip
        assert inventory["nodes"][0]["switch"] == {"name": "lab-leaf1", "port": "swp1"}
        enroll(inventory, actor=Actor.system("test"))
        registered = register_lab_switch(lab_dir)
        assert registered.private_key == key and registered.address == "198.18.255.1"
        assert Switch.objects.get(name="lab-leaf1").site.slug == "lab"  # type: ignore[union-attr]
        assert (Node.objects.get(name=specs[0].name).switch_port) == "swp1"
        site_network = SiteNetwork.objects.get(site__slug="lab")
        assert (site_network.provisioning_vlan, site_network.quarantine_vlan) == (100, 4000)
        # the registered record logs in: the driver reads the switch the lab built
        assert switch_driver("lab-leaf1").port_state("swp1").vlan == 100
    finally:
        supervisor.down(lab_dir)
        netns.teardown_all("nclab-")
    assert not netns.namespace_exists(f"{lab_switch.NETNS_PREFIX}{switched.SWITCH_NAME}")
    links = _host("-o", "link", "show")
    for name in ("ncsw-lab-leaf1", "ncsw-lab-leaf1-prov", "ncsw-lab-leaf1-pub"):
        assert netns.host_interface_name(name) not in links
    assert "198.19.254.0/24" not in _host("route", "show")
