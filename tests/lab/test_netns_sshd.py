"""Lab node networking and OS: real network namespaces, real veth pairs, a real sshd per node.

Namespaces are named "nctest-<random>" and use addresses in 198.19.x.y, so these tests never clash
with a running lab (nclab-*, 198.18.x.y). Every fixture removes what it created, even on failure.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest

from lab import netns, sshd
from lab.spec import LabNodeSpec
from provisioner.handover import HostKeyMismatch, SshAuthFailed, run_command, scan_host_keys
from provisioner.sshkeys import generate_keypair, parse_public_key

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not sshd.sshd_available(), reason="openssh-server or iproute2 is not installed"),
]


def _random_address() -> str:
    return f"198.19.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}"


def _spec(tag: str, address: str | None = None) -> LabNodeSpec:
    return LabNodeSpec(
        name=f"node-{tag}",
        index=1,
        server_type="h100-8x",
        mac="02:00:00:00:00:01",
        bmc_protocol="ipmi",
        bmc_address="127.0.10.1",
        bmc_port=623,
        bmc_username="admin",
        bmc_password="unused",
        ssh_address=address or _random_address(),
        netns=f"nctest-{tag}",
    )


def _keygen(path: Path, kind: str) -> tuple[str, str]:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True, timeout=60
    )
    return path.read_text(), path.with_name(path.name + ".pub").read_text().strip()


def _keygen_fingerprint(pub_line: str, tmp: Path) -> str:
    path = tmp / f"fp-{secrets.token_hex(4)}.pub"
    path.write_text(pub_line + "\n")
    return subprocess.run(
        ["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Host keys made by the real ssh-keygen, a provisioning key pair and a customer key pair."""
    directory = tmp_path_factory.mktemp("nodekeys")
    host_ed25519 = _keygen(directory / "ssh_host_ed25519_key", "ed25519")
    host_ecdsa = _keygen(directory / "ssh_host_ecdsa_key", "ecdsa")
    customer = _keygen(directory / "customer", "ed25519")
    provisioning = generate_keypair()
    return {
        "document": {
            "hostname": "node",
            "host_keys": {
                "ed25519": {"private": host_ed25519[0], "public": host_ed25519[1]},
                "ecdsa": {"private": host_ecdsa[0], "public": host_ecdsa[1]},
            },
            "authorized_keys": [customer[1], provisioning[1]],
        },
        "fingerprints": {
            "ed25519": _keygen_fingerprint(host_ed25519[1], directory),
            "ecdsa": _keygen_fingerprint(host_ecdsa[1], directory),
        },
        "customer": customer,
        "provisioning": provisioning,
        "dir": directory,
    }


def _cleanup(spec: LabNodeSpec, lab_dir: Path) -> None:
    try:
        sshd.stop_node_os(spec, lab_dir)
    finally:
        netns.destroy_node_network(spec)


@pytest.fixture
def make_node(tmp_path: Path) -> Iterator[Any]:
    """Factory of lab node specs whose namespaces and sshd are removed at the end, whatever happens."""
    created: list[LabNodeSpec] = []

    def make(address: str | None = None) -> LabNodeSpec:
        spec = _spec(secrets.token_hex(4), address)
        created.append(spec)
        return spec

    try:
        yield make
    finally:
        errors = []
        for spec in created:
            try:
                _cleanup(spec, tmp_path)
            except Exception as exc:  # keep cleaning the others, report after
                errors.append(exc)
        assert not errors, errors
        for spec in created:
            assert not netns.namespace_exists(spec.netns)


def _host_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def _host_routes() -> str:
    return subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout


def test_namespace_create_is_idempotent_and_touches_only_its_own_route(make_node: Any) -> None:
    spec = make_node()
    before = _host_routes().splitlines()
    netns.create_node_network(spec)
    netns.create_node_network(spec)
    after = _host_routes().splitlines()
    added = [r for r in after if r not in before]
    assert added == [
        f"{spec.ssh_address} dev {spec.netns} scope link src {netns.GATEWAY_ADDRESS} "
    ] or added == [f"{spec.ssh_address} dev {spec.netns} scope link src {netns.GATEWAY_ADDRESS}"]
    assert all(r in after for r in before)  # the default route and the others are untouched
    inside = subprocess.run(
        ["ip", "-n", spec.netns, "-br", "addr"], capture_output=True, text=True, check=True
    ).stdout
    assert "lo               UNKNOWN        127.0.0.1/8" in inside
    assert f"{spec.ssh_address}/32" in inside
    netns.destroy_node_network(spec)
    netns.destroy_node_network(spec)
    assert not netns.namespace_exists(spec.netns)
    assert f" {spec.netns}@" not in _host_links()
    assert _host_routes().splitlines() == before


def test_addresses_outside_the_lab_range_are_refused(make_node: Any) -> None:
    spec = make_node("10.1.2.3")
    with pytest.raises(netns.LabNetworkError, match=r"outside 198\.18\.0\.0/15"):
        netns.create_node_network(spec)
    assert not netns.namespace_exists(spec.netns)
    with pytest.raises(netns.LabNetworkError, match="gateway"):
        netns.create_namespace(spec.netns, netns.GATEWAY_ADDRESS)


def test_teardown_all_removes_every_namespace_with_the_prefix_and_nothing_else(make_node: Any) -> None:
    batch = f"nctest-{secrets.token_hex(2)}-"
    other = make_node()
    netns.create_node_network(other)
    names = [f"{batch}{i}" for i in range(3)]
    try:
        for i, name in enumerate(names):
            netns.create_namespace(name, f"198.19.250.{10 + i}")
        removed = netns.teardown_all(prefix=batch)
        assert sorted(removed) == names
        assert not any(netns.namespace_exists(n) for n in names)
        assert not any(f" {n}@" in _host_links() for n in names)
        assert netns.namespace_exists(other.netns)
        assert netns.teardown_all(prefix=batch) == []
    finally:
        netns.teardown_all(prefix=batch)
    with pytest.raises(netns.LabNetworkError):
        netns.teardown_all(prefix="nc")


def test_sshd_config_passes_sshd_t(make_node: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    spec = make_node()
    config_path = sshd.write_node_os(spec, keys["document"], tmp_path)
    sshd.check_config(config_path)
    proc = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # Effective settings, as sshd itself reads them.
    effective = subprocess.run(
        ["/usr/sbin/sshd", "-T", "-f", str(config_path)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for expected in (
        f"listenaddress {spec.ssh_address}:22",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin without-password",
        "usepam no",
        f"authorizedkeysfile {sshd.authorized_keys_path(spec, tmp_path)}",
    ):
        assert expected in effective
    os_dir = sshd.os_dir(spec, tmp_path)
    assert (os_dir / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    assert (os_dir / "authorized_keys").stat().st_mode & 0o777 == 0o600
    assert (os_dir / "authorized_keys").read_text().splitlines() == keys["document"]["authorized_keys"]


def test_document_without_host_keys_is_refused(make_node: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    spec = make_node()
    with pytest.raises(sshd.NodeOsError, match="host_keys"):
        sshd.start_node_os(spec, {"authorized_keys": keys["document"]["authorized_keys"]}, tmp_path)


def test_started_node_presents_exactly_the_documents_host_keys(
    make_node: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    spec = make_node()
    sshd.start_node_os(spec, keys["document"], tmp_path)
    scanned = subprocess.run(
        ["ssh-keyscan", "-T", "5", "-t", "ed25519,ecdsa,rsa", spec.ssh_address],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    lines = [line for line in scanned.splitlines() if line and not line.startswith("#")]
    seen = sorted(_keygen_fingerprint(line.split(None, 1)[1], keys["dir"]) for line in lines)
    assert seen == sorted(keys["fingerprints"].values())  # no RSA key: only what the document holds
    via_paramiko = scan_host_keys(spec.ssh_address, 22, keys["fingerprints"])
    assert sorted(k.fingerprint for k in via_paramiko) == seen


def test_customer_logs_in_as_root_with_strict_host_key_checking(
    make_node: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    spec = make_node()
    sshd.start_node_os(spec, keys["document"], tmp_path)
    status, out, _err = run_command(
        spec.ssh_address, 22, sshd.SSH_USER, keys["customer"][0], keys["fingerprints"], "id -u", timeout=20
    )
    assert (status, out.strip()) == (0, "0")
    # The same login with a fingerprint we do not expect is refused before authenticating.
    wrong = {"ed25519": parse_public_key(keys["customer"][1]).fingerprint}
    with pytest.raises(HostKeyMismatch, match="not one of the expected"):
        run_command(spec.ssh_address, 22, "root", keys["customer"][0], wrong, "true", timeout=20)
    # A key that is not authorized is refused; passwords are not offered at all.
    stranger, _pub = generate_keypair()
    with pytest.raises(SshAuthFailed):
        run_command(spec.ssh_address, 22, "root", stranger, keys["fingerprints"], "true", timeout=20)
    transport = paramiko.Transport((spec.ssh_address, 22))
    try:
        transport.start_client(timeout=10)
        with pytest.raises(paramiko.BadAuthenticationType) as refused:
            transport.auth_password("root", "anything")
        assert refused.value.allowed_types == ["publickey"]
    finally:
        transport.close()


def test_stop_stops_only_that_nodes_sshd_and_teardown_removes_everything(
    make_node: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    first, second = make_node(), make_node()
    sshd.start_node_os(first, keys["document"], tmp_path)
    sshd.start_node_os(second, keys["document"], tmp_path)
    first_pid = sshd.node_sshd_pid(first, tmp_path)
    second_pid = sshd.node_sshd_pid(second, tmp_path)
    assert first_pid and second_pid and first_pid != second_pid
    assert first_pid in netns.namespace_pids(first.netns)

    sshd.stop_node_os(first, tmp_path)
    sshd.stop_node_os(first, tmp_path)  # idempotent
    assert sshd.node_sshd_pid(first, tmp_path) is None
    assert (
        not Path(f"/proc/{first_pid}").exists()
        or "sshd" not in Path(f"/proc/{first_pid}/cmdline").read_text()
    )
    assert netns.namespace_pids(first.netns) == []
    assert not sshd.wait_for_port(first.ssh_address, 22, 0.5)
    # The other node is untouched, even though both namespaces share the host-side gateway address.
    assert sshd.node_sshd_pid(second, tmp_path) == second_pid
    assert sshd.wait_for_port(second.ssh_address, 22, 2)

    netns.destroy_node_network(first)
    assert sshd.wait_for_port(second.ssh_address, 22, 2)
    sshd.start_node_os(second, keys["document"], tmp_path)  # a reboot: a new sshd, same address
    assert sshd.node_sshd_pid(second, tmp_path) not in (None, second_pid)

    sshd.stop_node_os(second, tmp_path)
    netns.destroy_node_network(second)
    assert not netns.namespace_exists(second.netns)
    assert f" {second.netns}@" not in _host_links()
    assert second.ssh_address not in _host_routes()
    assert sshd.node_sshd_pid(second, tmp_path) is None


def test_many_nodes_run_side_by_side(make_node: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    specs = [make_node(f"198.19.251.{10 + i}") for i in range(8)]
    for spec in specs:
        sshd.start_node_os(spec, keys["document"], tmp_path)
    for spec in specs:
        # Each login lands in that node's own namespace: its only non-loopback address is the node's.
        status, out, _err = run_command(
            spec.ssh_address, 22, "root", keys["customer"][0], keys["fingerprints"], "ip -o -4 addr show", 20
        )
        assert status == 0
        addresses = sorted(line.split()[3] for line in out.splitlines())
        assert addresses == sorted(["127.0.0.1/8", f"{spec.ssh_address}/32"])
    assert len({sshd.node_sshd_pid(s, tmp_path) for s in specs}) == len(specs)


def test_hostname_on_a_lab_server_prints_its_own_name_from_the_config_drive(
    make_node: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    """Each lab server's sshd runs in a UTS namespace of its own: a customer who logs in and types
    ``hostname`` sees the name the deploy gave the server, not the control host's (which stays as it was)."""
    control_host = socket.gethostname()
    first, second = make_node(), make_node()
    sshd.start_node_os(first, {**keys["document"], "hostname": first.name}, tmp_path)
    sshd.start_node_os(second, {**keys["document"], "hostname": second.name}, tmp_path)

    def hostname(spec: LabNodeSpec) -> tuple[int, str]:
        status, out, _err = run_command(
            spec.ssh_address, 22, "root", keys["customer"][0], keys["fingerprints"], "hostname", timeout=20
        )
        return status, out.strip()

    assert hostname(first) == (0, first.name)
    assert hostname(second) == (0, second.name)
    # redeployed under another name: the next boot brings it
    sshd.start_node_os(first, {**keys["document"], "hostname": "gpu-box-7.example"}, tmp_path)
    assert hostname(first) == (0, "gpu-box-7.example")
    assert socket.gethostname() == control_host not in (first.name, second.name, "gpu-box-7.example")


@pytest.mark.parametrize("bad", [None, "", "-n", "a" * 65, "two words"])
def test_a_document_without_a_usable_hostname_is_refused(
    make_node: Any, keys: dict[str, Any], tmp_path: Path, bad: str | None
) -> None:
    spec = make_node()
    with pytest.raises(sshd.NodeOsError, match="no usable hostname"):
        sshd.start_node_os(spec, {**keys["document"], "hostname": bad}, tmp_path)
    assert sshd.node_sshd_pid(spec, tmp_path) is None


@pytest.mark.skipif(shutil.which("ssh") is None, reason="the OpenSSH client is not installed")
def test_openssh_client_logs_in_with_the_documents_known_hosts(
    make_node: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    spec = make_node()
    sshd.start_node_os(spec, keys["document"], tmp_path)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        "".join(f"{spec.ssh_address} {pair['public']}\n" for pair in keys["document"]["host_keys"].values())
    )
    key_file = keys["dir"] / "customer"
    proc = subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-i", str(key_file), "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            "-o", "ConnectTimeout=5", f"root@{spec.ssh_address}", "echo", "ok",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_reboot_keeps_what_the_os_holds_and_a_new_instance_brings_its_own(
    make_node: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    """Per-instance data is applied once per instance, as cloud-init does: a reboot after the handover
    removed our provisioning key does not bring it back from the config drive; a new deploy (another
    instance) does bring its own keys."""
    spec = make_node()
    document = keys["document"]
    sshd.start_node_os(spec, document, tmp_path)
    path = sshd.authorized_keys_path(spec, tmp_path)
    path.write_text(keys["customer"][1] + "\n")  # what the handover leaves
    sshd.start_node_os(spec, document, tmp_path)  # a reboot of the same instance
    with pytest.raises(SshAuthFailed):
        run_command(spec.ssh_address, 22, "root", keys["provisioning"][0], keys["fingerprints"], "true", 20)
    status, _, _ = run_command(
        spec.ssh_address, 22, "root", keys["customer"][0], keys["fingerprints"], "true", timeout=20
    )
    assert status == 0
    sshd.start_node_os(spec, {**document, "instance_id": "another-deploy"}, tmp_path)
    status, _, _ = run_command(
        spec.ssh_address, 22, "root", keys["provisioning"][0], keys["fingerprints"], "true", timeout=20
    )
    assert status == 0
