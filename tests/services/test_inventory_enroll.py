"""Enrolling an inventory file an operator wrote: every mistake is a clear sentence naming the node (never a
traceback, never the BMC password), and nothing of the file is enrolled when one node is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from provisioner.models import Node

SERVER_TYPE = (
    "server_types:\n"
    "  - {slug: t1, name: T1, cpu_model: x, cpu_cores: 1, ram_gib: 1, gpu_model: g, gpu_count: 1,\n"
    "     gpu_memory_gib: 1, pcie_gen: 4, pcie_width: 16, nvlink_links: 0, disk_gib: 1}\n"
    "nodes:\n"
)
BMC = "protocol: fake, address: 10.0.0.1, username: admin, password: hunter2-bmc"


def _enroll(tmp_path: Path, nodes: str) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(SERVER_TYPE + nodes)
    call_command("nodes", "enroll", str(path))


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        ("  - {name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01'}\n", "node n1: bmc is missing"),
        (
            "  - {name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {protocol: fake, username: a}}\n",
            "node n1: bmc: address is missing",
        ),
        (f"  - {{name: n1, server_type: t1, bmc: {{{BMC}}}}}\n", "node n1: boot_mac is missing"),
        (
            f"  - {{name: n1, server_type: t1, boot_mac: 12, bmc: {{{BMC}}}}}\n",
            "'12' is not a MAC address",
        ),
        (
            f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}, port: https}}}}\n",
            "node n1: bmc: port 'https' is not a TCP port",
        ),
        (
            f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', address: 10.0.0, bmc: {{{BMC}}}}}\n",
            "node n1: address '10.0.0' is not an IP address",
        ),
        (
            "  - {name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01',\n"
            "     bmc: {protocol: fake, address: x, username: a, password_file: /nonexistent/bmc-password}}\n",
            "node n1: cannot read bmc password_file /nonexistent/bmc-password",
        ),
        ("  n1: {server_type: t1}\n", "nodes entry 1: a node is a mapping with name"),
        (
            f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', switch: {{name: leaf1}}, bmc: {{{BMC}}}}}\n",
            "node n1: switch: give both the switch's name and its port",
        ),
        (
            f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', switch: leaf1, bmc: {{{BMC}}}}}\n",
            "node n1: switch: must be a mapping with name and port",
        ),
    ],
)
def test_a_node_with_missing_or_bad_fields_is_refused_with_a_sentence(
    db, tmp_path: Path, nodes: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        _enroll(tmp_path, nodes)
    assert not Node.objects.exists()


def test_two_nodes_with_one_boot_mac_are_refused(db, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="node n2: boot_mac aa:bb:cc:00:00:01 is already node n1's"):
        _enroll(
            tmp_path,
            f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n"
            f"  - {{name: n2, server_type: t1, boot_mac: 'AA-BB-CC-00-00-01', bmc: {{{BMC}}}}}\n",
        )
    assert not Node.objects.exists()


def test_two_nodes_with_one_serial_are_refused(db, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="node n2: serial SN-1 is already node n1's"):
        _enroll(
            tmp_path,
            f"  - {{name: n1, serial: SN-1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n"
            f"  - {{name: n2, serial: SN-1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:02', bmc: {{{BMC}}}}}\n",
        )
    assert not Node.objects.exists()


def test_a_mac_taken_from_an_enrolled_node_is_refused_and_that_node_kept(db, tmp_path: Path) -> None:
    _enroll(tmp_path, f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n")
    with pytest.raises(CommandError, match="node n2: boot_mac aa:bb:cc:00:00:01 is already node n1's"):
        _enroll(
            tmp_path, f"  - {{name: n2, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n"
        )
    assert list(Node.objects.values_list("name", "boot_mac")) == [("n1", "aa:bb:cc:00:00:01")]


def test_re_enrolling_a_node_keeps_its_own_mac_and_serial(db, tmp_path: Path) -> None:
    line = f"  - {{name: n1, serial: SN-1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n"
    _enroll(tmp_path, line)
    _enroll(tmp_path, line)
    assert Node.objects.get(name="n1").serial == "SN-1"


def test_a_yaml_error_names_the_line_without_quoting_the_bmc_password(db, tmp_path: Path) -> None:
    broken = "  - name: n1\n    bmc: {protocol: ipmi, password: hunter2-bmc}}\n"
    with pytest.raises(CommandError, match=r"not valid YAML: .* at line 6, column \d+") as err:
        _enroll(tmp_path, broken)
    assert "hunter2" not in str(err.value)


LEASED_NODE = "  - {{name: n1, server_type: {st}, boot_mac: '{mac}', address: {address}, bmc: {{{bmc}}}}}\n"


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"st": "t2"}, "server_type"),
        ({"mac": "aa:bb:cc:00:00:99"}, "boot_mac"),
        ({"address": "10.1.0.99"}, "primary_address"),
        ({"st": "t2", "address": "10.1.0.99"}, "server_type, primary_address"),
    ],
)
def test_re_enrolling_a_leased_node_with_another_server_type_mac_or_address_is_refused(
    db, tmp_path: Path, change: dict, fields: str
) -> None:
    """Re-enrolling overwrote a leased node's server type (moving a customer's server into another pool),
    its boot MAC and its address; such changes wait until the node is free. Nothing else is half-applied."""
    from provisioner.models import Organization
    from provisioner.states import NodeState

    two_types = SERVER_TYPE.replace("nodes:\n", "") + (
        "  - {slug: t2, name: T2, cpu_model: x, cpu_cores: 1, ram_gib: 1, gpu_model: g, gpu_count: 2,\n"
        "     gpu_memory_gib: 1, pcie_gen: 4, pcie_width: 16, nvlink_links: 0, disk_gib: 1}\n"
        "nodes:\n"
    )
    path = tmp_path / "inventory.yaml"
    wanted = {"st": "t1", "mac": "aa:bb:cc:00:00:01", "address": "10.1.0.1", "bmc": BMC}
    path.write_text(two_types + LEASED_NODE.format(**wanted))
    call_command("nodes", "enroll", str(path))
    org = Organization.objects.create(name="Acme", slug="acme")
    Node.objects.filter(name="n1").update(state=NodeState.ACTIVE, owner=org)
    before = Node.objects.select_related("server_type").get(name="n1")

    changed = dict(wanted, **change, bmc=BMC.replace("10.0.0.1", "10.0.0.2"))
    path.write_text(two_types + LEASED_NODE.format(**changed))
    with pytest.raises(CommandError, match=rf"node n1 is active \(leased\): .*{fields}.* not changed"):
        call_command("nodes", "enroll", str(path))
    after = Node.objects.select_related("server_type").get(name="n1")
    assert (after.server_type.slug, after.boot_mac, after.primary_address, after.bmc_address) == (
        "t1",
        "aa:bb:cc:00:00:01",
        "10.1.0.1",
        "10.0.0.1",
    )
    assert after.state == before.state == NodeState.ACTIVE

    # the same file once the node is back in the pool applies
    Node.objects.filter(name="n1").update(state=NodeState.AVAILABLE, owner=None)
    call_command("nodes", "enroll", str(path))
    assert Node.objects.get(name="n1").bmc_address == "10.0.0.2"


def test_re_enrolling_a_leased_node_unchanged_or_with_a_new_bmc_address_is_allowed(
    db, tmp_path: Path
) -> None:
    from provisioner.models import Organization
    from provisioner.states import NodeState

    node = f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', address: 10.1.0.1, bmc: {{{BMC}}}}}\n"
    _enroll(tmp_path, node)
    org = Organization.objects.create(name="Acme", slug="acme")
    Node.objects.filter(name="n1").update(state=NodeState.ACTIVE, owner=org)
    _enroll(tmp_path, node)
    _enroll(tmp_path, node.replace("10.0.0.1", "10.0.0.7"))  # a BMC moved to another address
    assert Node.objects.get(name="n1").bmc_address == "10.0.0.7"


def _node_with_driver_info(driver_info: str) -> str:
    return (
        f"  - name: n1\n    server_type: t1\n    boot_mac: 'aa:bb:cc:00:00:01'\n    bmc: {{{BMC}}}\n"
        f"    driver_info: {driver_info}\n"
    )


def test_driver_info_is_recorded_with_the_node_and_replaced_by_the_next_enrollment(
    db, tmp_path: Path
) -> None:
    _enroll(
        tmp_path,
        _node_with_driver_info(
            "{python: /opt/venv/bin/python3, burnin_backend: simulated, burnin_faults_file: /srv/lab/faults.json,"
            " burnin_load_seconds: 1, burnin_xid_wait_seconds: 0.2, burnin_sample_interval: 0.25}"
        ),
    )
    assert Node.objects.get(name="n1").driver_info == {
        "python": "/opt/venv/bin/python3",
        "burnin_backend": "simulated",
        "burnin_faults_file": "/srv/lab/faults.json",
        "burnin_load_seconds": 1.0,
        "burnin_xid_wait_seconds": 0.2,
        "burnin_sample_interval": 0.25,
    }
    # the inventory is the node's whole description: a key it no longer gives falls back to the default
    _enroll(tmp_path, _node_with_driver_info("{python: /usr/bin/python3.12}"))
    assert Node.objects.get(name="n1").driver_info == {"python": "/usr/bin/python3.12"}
    _enroll(tmp_path, f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n")
    assert Node.objects.get(name="n1").driver_info == {}


@pytest.mark.parametrize(
    ("driver_info", "message"),
    [
        ("{pyhton: /usr/bin/python3}", "node n1: driver_info pyhton is not a known key"),
        ("[python]", "node n1: driver_info must be a mapping"),
        ("{python: python3}", "node n1: driver_info python must be an absolute path"),
        ("{python: '/usr/bin/python3 -c evil'}", "node n1: driver_info python must be an absolute path"),
        ("{burnin_backend: dcgm}", "node n1: driver_info burnin_backend must be one of nvml, simulated"),
        (
            "{burnin_faults_file: /srv/faults.json}",
            "driver_info burnin_faults_file needs burnin_backend simulated",
        ),
        (
            "{burnin_backend: simulated, burnin_faults_file: faults.json}",
            "node n1: driver_info burnin_faults_file must be an absolute path",
        ),
        (
            "{burnin_load_seconds: soon}",
            "node n1: driver_info burnin_load_seconds must be a number of seconds",
        ),
        (
            "{burnin_load_seconds: true}",
            "node n1: driver_info burnin_load_seconds must be a number of seconds",
        ),
        ("{burnin_sample_interval: .nan}", "node n1: driver_info burnin_sample_interval must be a number"),
        ("{burnin_xid_wait_seconds: 0}", "node n1: driver_info burnin_xid_wait_seconds must be more than 0"),
        (
            "{burnin_load_seconds: 100000}",
            "burnin_load_seconds must be more than 0 and at most 86400 seconds",
        ),
    ],
)
def test_a_driver_info_with_an_unknown_key_or_a_bad_value_is_refused_naming_the_key(
    db, tmp_path: Path, driver_info: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        _enroll(tmp_path, _node_with_driver_info(driver_info))
    assert not Node.objects.exists()


def _redfish(bmc: str) -> str:
    return (
        "  - {name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01',\n"
        f"     bmc: {{protocol: redfish, {bmc}, username: admin, password: hunter2-bmc}}}}\n"
    )


@pytest.mark.parametrize(
    ("bmc", "recorded"),
    [
        # no scheme named: what the driver once guessed from the port, now written into the record
        ("address: 10.0.0.5", ("10.0.0.5", 443, "https")),
        ("address: 10.0.0.5, port: 8000", ("10.0.0.5", 8000, "http")),
        ("address: 10.0.0.5, port: 8080", ("10.0.0.5", 8080, "https")),
        # named: a plain-HTTP BMC on any port
        ("address: 10.0.0.5, port: 8080, scheme: http", ("10.0.0.5", 8080, "http")),
        ("address: 10.0.0.5, port: 80, scheme: HTTPS", ("10.0.0.5", 80, "https")),
        # a URL, as Ironic's redfish_address
        ("address: 'https://10.0.0.5:8443'", ("10.0.0.5", 8443, "https")),
        ("address: 'http://10.0.0.5:8001/'", ("10.0.0.5", 8001, "http")),
        ("address: 'http://bmc-7.example'", ("bmc-7.example", 80, "http")),
        ("address: 'https://10.0.0.5'", ("10.0.0.5", 443, "https")),
        (
            "address: 'https://[2001:db8::5]:8443', scheme: https, port: 8443",
            ("[2001:db8::5]", 8443, "https"),
        ),
    ],
)
def test_a_redfish_bmc_records_its_scheme_from_the_inventory(
    db, tmp_path: Path, bmc: str, recorded: tuple[str, int, str]
) -> None:
    _enroll(tmp_path, _redfish(bmc))
    node = Node.objects.get(name="n1")
    assert (node.bmc_address, node.bmc_port, node.bmc_scheme) == recorded
    access = node.bmc_access()
    assert (access.scheme, access.address, access.port) == (recorded[2], recorded[0], recorded[1])


def test_an_ipmi_bmc_records_no_scheme(db, tmp_path: Path) -> None:
    _enroll(tmp_path, f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}}}}}\n")
    assert Node.objects.get(name="n1").bmc_scheme == ""


@pytest.mark.parametrize(
    ("nodes", "message"),
    [
        (_redfish("address: 10.0.0.5, scheme: ftp"), "node n1: bmc: scheme 'ftp' is not http or https"),
        (
            _redfish("address: 'ftp://10.0.0.5'"),
            r"node n1: bmc: address 'ftp://10.0.0.5': scheme 'ftp' is not",
        ),
        (_redfish("address: 'https://10.0.0.5:99999'"), "node n1: bmc: address .* has no valid port"),
        (_redfish("address: 'https://10.0.0.5/redfish/v1'"), r"is not scheme://host\[:port\]"),
        (
            _redfish("address: 'https://root:hunter2-bmc@10.0.0.5'"),
            "node n1: bmc: the address URL holds a user name or password; give them as username and password",
        ),
        (
            _redfish("address: 'https://10.0.0.5:8443', scheme: http"),
            "node n1: bmc: scheme 'http' disagrees with address 'https://10.0.0.5:8443'",
        ),
        (
            _redfish("address: 'https://10.0.0.5:8443', port: 443"),
            "node n1: bmc: port 443 disagrees with address 'https://10.0.0.5:8443'",
        ),
        (
            f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', bmc: {{{BMC}, scheme: https}}}}\n",
            "node n1: bmc: scheme 'https' is for Redfish; fake has no URL scheme",
        ),
        (
            "  - {name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01',\n"
            "     bmc: {protocol: ipmi, address: 'https://10.0.0.5', username: a, password: hunter2-bmc}}\n",
            "node n1: bmc: address 'https://10.0.0.5' is a URL; only a Redfish BMC's address may be one",
        ),
    ],
)
def test_a_bad_bmc_scheme_or_url_is_refused_with_a_sentence(
    db, tmp_path: Path, nodes: str, message: str
) -> None:
    with pytest.raises(CommandError, match=message) as caught:
        _enroll(tmp_path, nodes)
    assert "hunter2-bmc" not in str(caught.value)
    assert not Node.objects.exists()


def test_the_switch_port_the_boot_nic_is_cabled_to_is_recorded(db, tmp_path: Path) -> None:
    _enroll(
        tmp_path,
        f"  - {{name: n1, server_type: t1, boot_mac: 'aa:bb:cc:00:00:01', switch: {{name: leaf1, port: swp7}},"
        f" bmc: {{{BMC}}}}}\n",
    )
    assert Node.objects.values_list("switch_name", "switch_port").get() == ("leaf1", "swp7")
