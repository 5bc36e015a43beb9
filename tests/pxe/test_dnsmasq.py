"""The generated dnsmasq configuration, checked by the real dnsmasq (``--test``: no server started)."""

from __future__ import annotations

import os
import shutil

import pytest

from provisioner.pxe.dnsmasq import (
    DhcpHost,
    DnsmasqConfigError,
    DnsmasqSite,
    check_dnsmasq_config,
    render_dnsmasq_config,
    write_dnsmasq_config,
)

pytestmark = pytest.mark.skipif(
    shutil.which("dnsmasq") is None and not os.path.exists("/usr/sbin/dnsmasq"),
    reason="dnsmasq is not installed",
)

HOSTS = [
    DhcpHost("52:54:00:AA:BB:01", "lab-node-01", "192.0.2.21"),
    DhcpHost("52-54-00-aa-bb-02", "lab-node-02"),
]


def test_proxy_config_passes_dnsmasq_test_and_chainloads_our_boot_url(tmp_path):
    site = DnsmasqSite(subnet="192.0.2.0/24", boot_url="http://192.0.2.10:8000", hosts=HOSTS)
    path = write_dnsmasq_config(site, tmp_path / "neocloud.conf")
    check_dnsmasq_config(path)
    lines = path.read_text().splitlines()
    assert "dhcp-range=192.0.2.0,proxy,255.255.255.0" in lines
    assert "dhcp-userclass=set:ipxe,iPXE" in lines and "dhcp-match=set:ipxe,175" in lines
    assert "dhcp-boot=tag:ipxe,http://192.0.2.10:8000/boot/${mac:hexhyp}.ipxe" in lines
    assert "dhcp-boot=tag:!ipxe,tag:bios,undionly.kpxe" in lines
    assert "dhcp-boot=tag:!ipxe,tag:efi-x86_64,snponly.efi" in lines
    assert "dhcp-match=set:efi-x86_64,option:client-arch,7" in lines
    assert "dhcp-host=52:54:00:aa:bb:01,lab-node-01" in lines
    assert "dhcp-host=52:54:00:aa:bb:02,lab-node-02" in lines


def test_dhcp_mode_config_passes_dnsmasq_test(tmp_path):
    site = DnsmasqSite(
        subnet="192.0.2.0/24",
        boot_url="http://192.0.2.10:8000",
        mode="dhcp",
        interface="eth1",
        dhcp_range=("192.0.2.100", "192.0.2.200"),
        hosts=HOSTS,
        router="192.0.2.1",
    )
    path = write_dnsmasq_config(site, tmp_path / "neocloud.conf")
    check_dnsmasq_config(path)
    text = path.read_text()
    assert "dhcp-option=option:router,192.0.2.1" in text
    assert "dhcp-range=192.0.2.100,192.0.2.200,255.255.255.0,1h" in text
    assert "dhcp-host=52:54:00:aa:bb:01,192.0.2.21,lab-node-01" in text
    assert "interface=eth1" in text


def test_check_reports_what_dnsmasq_rejects(tmp_path):
    path = tmp_path / "broken.conf"
    path.write_text("dhcp-range=not-an-address,proxy\n")
    with pytest.raises(DnsmasqConfigError, match="rejected"):
        check_dnsmasq_config(path)


@pytest.mark.parametrize(
    "changes",
    [
        {"subnet": "192.0.2.1/24"},
        {"boot_url": "http://192.0.2.10/\nenable-ra"},
        {"boot_url": "ftp://192.0.2.10"},
        {"interface": "eth0 eth1"},
        {"tftp_root": "/srv/tftp\nport=53"},
        {"mode": "dhcp"},
        {"mode": "dhcp", "dhcp_range": ("192.0.2.10", "198.51.100.1")},
        {"hosts": [DhcpHost("52:54:00:aa:bb", "short-mac")]},
        {"hosts": [DhcpHost("52:54:00:aa:bb:01", "bad name")]},
        {"mode": "dhcp", "dhcp_range": ("192.0.2.10", "192.0.2.x")},
        {"mode": "dhcp", "dhcp_range": ("192.0.2.10", "192.0.2.20"), "router": "198.51.100.1"},
        {"hosts": [DhcpHost("52:54:00:aa:bb:01", "n1", "192.0.2.300")]},
        # one address twice: dnsmasq refuses the whole file; one MAC twice: it picks a line silently
        {
            "hosts": [
                DhcpHost("52:54:00:aa:bb:01", "n1", "192.0.2.5"),
                DhcpHost("52:54:00:aa:bb:02", "n2", "192.0.2.5"),
            ]
        },
        {"hosts": [DhcpHost("52:54:00:aa:bb:01", "n1"), DhcpHost("52-54-00-AA-BB-01", "n2")]},
    ],
)
def test_invalid_site_settings_are_refused(changes):
    settings = {"subnet": "192.0.2.0/24", "boot_url": "http://192.0.2.10:8000", **changes}
    with pytest.raises(DnsmasqConfigError):
        render_dnsmasq_config(DnsmasqSite(**settings))


@pytest.mark.parametrize("name", ["ignore", "infinite", "1234", "12h", "7D"])
def test_node_names_dnsmasq_would_read_as_a_lease_time_or_keyword_are_refused(tmp_path, name):
    """In ``dhcp-host=<mac>,<name>`` dnsmasq takes digits (with an optional s/m/h/d/w) as a lease time and
    ``ignore`` as "never answer this MAC": the node would silently lose its name, or never PXE boot, and
    ``dnsmasq --test`` says nothing."""
    path = tmp_path / "probe.conf"
    path.write_text(f"dhcp-host=52:54:00:aa:bb:01,{name}\n")
    check_dnsmasq_config(path)  # dnsmasq accepts the line: only we can catch it
    site = DnsmasqSite(
        subnet="192.0.2.0/24", boot_url="http://192.0.2.10:8000", hosts=[DhcpHost("52:54:00:aa:bb:01", name)]
    )
    with pytest.raises(DnsmasqConfigError, match="lease time or keyword"):
        render_dnsmasq_config(site)


def test_a_host_name_ending_in_a_newline_is_refused():
    site = DnsmasqSite(
        subnet="192.0.2.0/24",
        boot_url="http://192.0.2.10:8000",
        hosts=[DhcpHost("52:54:00:aa:bb:01", "n1\n")],
    )
    with pytest.raises(DnsmasqConfigError, match="DNS label"):
        render_dnsmasq_config(site)
