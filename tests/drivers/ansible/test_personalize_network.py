"""A warm server's tenant address goes onto its running OS in the personalize step's script: the values are
checked before anything is sent, and the script really configures a Linux network namespace as the first
boot would (the address, the default route via the gateway, the old gateway kept on link), and keeps it in the
OS's netplan file, which the lab OS brings up again at its next boot."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from lab import os_firstboot
from provisioner.drivers.ansible.drivers import PRIVATE_NETPLAN_FILE, _private_network_script
from provisioner.drivers.base import PersonalizeRequest
from provisioner.errors import DriverError


def _request(network, address="198.18.0.7"):
    return PersonalizeRequest(
        node_name="gpu-7",
        address=address,
        port=22,
        username="root",
        expected_fingerprints={},
        provisioning_private_key="",
        customer_keys=[],
        private_network=network,
    )


def test_the_product_names_the_netplan_file_the_lab_os_reads():
    assert PRIVATE_NETPLAN_FILE == os_firstboot.NETPLAN_FILE


def test_no_private_network_adds_nothing():
    assert _private_network_script(_request(None)) == ""


@pytest.mark.parametrize(
    "network",
    [
        {"address": "198.19.3.2", "prefix": 24},  # no gateway
        {"address": "198.19.3.2; reboot", "prefix": 24, "gateway": "198.19.3.1"},
        {"address": "198.19.3.2", "prefix": "x", "gateway": "198.19.3.1"},
    ],
)
def test_a_malformed_network_is_refused_before_anything_is_sent(network):
    with pytest.raises(DriverError, match="gpu-7's private network is malformed"):
        _private_network_script(_request(network))


@pytest.mark.lab
def test_the_script_configures_a_running_linux_network_as_the_first_boot_would(tmp_path):
    netns = f"ncpn-{uuid.uuid4().hex[:8]}"
    run = lambda *argv: subprocess.run(  # noqa: E731
        ["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, check=False, timeout=20
    )
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")  # no dummy devices here
        run("ip", "link", "set", "eth0p", "up")
        run("ip", "link", "set", "eth0", "up")
        run("ip", "addr", "add", "198.18.0.7/32", "dev", "eth0")
        run("ip", "route", "add", "default", "via", "198.18.0.1", "dev", "eth0", "onlink")
        script = _private_network_script(
            _request({"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.1"})
        )
        netplan = tmp_path / "netplan"  # a real server's /etc/netplan
        done = run("env", f"NEOCLOUD_NETPLAN_DIR={netplan}", "sh", "-c", "set -eu\n" + script)
        assert done.returncode == 0, done.stderr
        addresses = run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert "198.18.0.7/32" in addresses and "198.19.3.2/24" in addresses
        routes = run("ip", "-4", "route", "show").stdout.splitlines()
        assert any(r.startswith("default via 198.19.3.1 dev eth0 src 198.19.3.2") for r in routes), routes
        assert any(r.startswith("198.18.0.1 dev eth0") for r in routes), routes
        # kept as a cold-deployed server's first boot keeps it: a reboot (a bare NIC again) brings it back
        first_boot = tmp_path / "first-boot"
        document = {"private_network": {"address": "198.19.3.2", "prefix": 24, "gateway": "198.19.3.1"}}
        os_firstboot.write_network_config(document, "eth0", first_boot)
        kept = (netplan / os_firstboot.NETPLAN_FILE).read_text()
        assert json.loads(kept) == json.loads((first_boot / os_firstboot.NETPLAN_FILE).read_text())
        assert (netplan / os_firstboot.NETPLAN_FILE).stat().st_mode & 0o777 == 0o600
        run("ip", "addr", "flush", "dev", "eth0")
        run("ip", "addr", "add", "198.18.0.7/32", "dev", "eth0")
        assert "198.19.3.2" not in run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert os_firstboot.apply_network_config(netplan, netns) == "198.19.3.2"
        assert "198.19.3.2/24" in run("ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert "default via 198.19.3.1 dev eth0" in run("ip", "-4", "route", "show").stdout
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
