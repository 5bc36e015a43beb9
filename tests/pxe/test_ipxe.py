"""iPXE script rendering, input validation and the parser the lab firmware uses."""

from __future__ import annotations

import pytest

from provisioner.pxe.ipxe import (
    IpxeScriptError,
    normalize_mac,
    parse_ipxe_script,
    render_ipxe_script,
    render_local_boot_script,
)

TOKEN = "AbC-123_xyz.~0123456789"


def test_deploy_script_matches_the_contract():
    script = render_ipxe_script("http://10.0.0.2:8000/", TOKEN, "lab-node-01")
    assert script == (
        "#!ipxe\n"
        "kernel http://10.0.0.2:8000/boot/deploy/vmlinuz neocloud.api=http://10.0.0.2:8000/boot/api "
        f"neocloud.token={TOKEN} neocloud.node=lab-node-01 console=ttyS0\n"
        "initrd http://10.0.0.2:8000/boot/deploy/initrd.img\n"
        "boot\n"
    )


def test_parse_round_trips_the_deploy_script():
    parsed = parse_ipxe_script(render_ipxe_script("http://10.0.0.2:8000", TOKEN, "lab-node-01"))
    assert parsed.kernel_url == "http://10.0.0.2:8000/boot/deploy/vmlinuz"
    assert parsed.initrd_urls == ("http://10.0.0.2:8000/boot/deploy/initrd.img",)
    assert parsed.boots and not parsed.exits
    params = parsed.kernel_params()
    assert params["neocloud.api"] == "http://10.0.0.2:8000/boot/api"
    assert params["neocloud.token"] == TOKEN
    assert params["neocloud.node"] == "lab-node-01"


def test_local_boot_script_exits_to_the_next_boot_device():
    parsed = parse_ipxe_script(render_local_boot_script())
    assert parsed.exits and not parsed.boots and parsed.kernel_url is None


@pytest.mark.parametrize(
    ("base", "token", "node"),
    [
        ("http://10.0.0.2:8000 evil", TOKEN, "n1"),
        ("http://10.0.0.2:8000\nshell", TOKEN, "n1"),
        ("http://10.0.0.2/${ip}", TOKEN, "n1"),
        ("ftp://10.0.0.2", TOKEN, "n1"),
        ("http://10.0.0.2?x=1", TOKEN, "n1"),
        ("", TOKEN, "n1"),
        ("http://10.0.0.2", "short", "n1"),
        ("http://10.0.0.2", TOKEN + " console=tty0", "n1"),
        ("http://10.0.0.2", TOKEN + "\nshell", "n1"),
        ("http://10.0.0.2", TOKEN, "node one"),
        ("http://10.0.0.2", TOKEN, "n1\nshell"),
    ],
)
def test_unsafe_inputs_are_refused(base, token, node):
    with pytest.raises(IpxeScriptError) as info:
        render_ipxe_script(base, token, node)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize(("token", "node"), [(TOKEN, "n1\n"), (TOKEN + "\n", "n1")])
def test_a_trailing_newline_is_refused_not_let_through_to_split_the_kernel_line(token, node):
    """``$`` in a regular expression also matches before a final newline: a node name or token ending in
    one would end the ``kernel`` line early and leave ``console=ttyS0`` as a command iPXE does not know."""
    with pytest.raises(IpxeScriptError):
        render_ipxe_script("http://10.0.0.2", token, node)


@pytest.mark.parametrize("mac", ["52:54:00:AB:cd:01", "52-54-00-ab-cd-01", " 52:54:00:ab:cd:01 "])
def test_normalize_mac_accepts_colon_and_hyphen_forms(mac):
    assert normalize_mac(mac) == "52:54:00:ab:cd:01"


@pytest.mark.parametrize(
    "mac", ["52:54:00:ab:cd", "52:54-00:ab:cd:01", "5254.00ab.cd01", "zz:54:00:ab:cd:01"]
)
def test_normalize_mac_refuses_other_forms(mac):
    with pytest.raises(IpxeScriptError):
        normalize_mac(mac)


def test_parser_refuses_non_ipxe_and_unknown_commands():
    with pytest.raises(IpxeScriptError):
        parse_ipxe_script("kernel http://x/vmlinuz\nboot\n")
    with pytest.raises(IpxeScriptError):
        parse_ipxe_script("#!ipxe\nshell\n")
