"""Handover against a real sshd in a lab network namespace (198.19.x.y, "nctest-*" namespaces)."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import netns, sshd
from lab.spec import LabNodeSpec
from provisioner.handover import (
    HandoverFailed,
    HostKeyMismatch,
    SshAuthFailed,
    SshUnreachable,
    connect,
    perform_handover,
    run_command,
    wait_for_ssh,
)
from provisioner.sshkeys import generate_keypair, parse_public_key

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not sshd.sshd_available(), reason="openssh-server or iproute2 is not installed"),
]


@dataclass
class Node:
    spec: LabNodeSpec
    lab_dir: Path
    fingerprints: dict[str, str]
    host_public: dict[str, str]
    customer_private: str
    customer_public: str
    provisioning_private: str
    provisioning_public: str

    @property
    def address(self) -> str:
        return self.spec.ssh_address

    @property
    def authorized_keys(self) -> Path:
        return sshd.authorized_keys_path(self.spec, self.lab_dir)


def _keygen(path: Path, kind: str) -> tuple[str, str]:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], check=True, timeout=60
    )
    return path.read_text(), path.with_name(path.name + ".pub").read_text().strip()


def _ssh_keygen_fingerprint(pub_file: Path) -> str:
    return subprocess.run(
        ["ssh-keygen", "-lf", str(pub_file)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()[1]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("handover-keys")
    _keygen(directory / "host_ed25519", "ed25519")
    _keygen(directory / "host_ecdsa", "ecdsa")
    _keygen(directory / "customer", "ed25519")
    _keygen(directory / "other_host", "ed25519")
    return directory


def _start_node(tmp_path: Path, keydir: Path, authorized: list[str] | None = None) -> Node:
    tag = secrets.token_hex(4)
    spec = LabNodeSpec(
        name=f"handover-{tag}",
        index=1,
        server_type="h100-8x",
        mac="02:00:00:00:00:02",
        bmc_protocol="ipmi",
        bmc_address="127.0.10.2",
        bmc_port=623,
        bmc_username="admin",
        bmc_password="unused",
        ssh_address=f"198.19.{secrets.randbelow(254) + 1}.{secrets.randbelow(253) + 2}",
        netns=f"nctest-{tag}",
    )
    provisioning_private, provisioning_public = generate_keypair()
    customer_public = (keydir / "customer.pub").read_text().strip()
    host_keys = {
        kind: {
            "private": (keydir / f"host_{kind}").read_text(),
            "public": (keydir / f"host_{kind}.pub").read_text().strip(),
        }
        for kind in ("ed25519", "ecdsa")
    }
    document = {
        "hostname": spec.name,
        "host_keys": host_keys,
        "authorized_keys": authorized if authorized is not None else [customer_public, provisioning_public],
    }
    node = Node(
        spec=spec,
        lab_dir=tmp_path,
        fingerprints={kind: _ssh_keygen_fingerprint(keydir / f"host_{kind}.pub") for kind in host_keys},
        host_public={kind: pair["public"] for kind, pair in host_keys.items()},
        customer_private=(keydir / "customer").read_text(),
        customer_public=customer_public,
        provisioning_private=provisioning_private,
        provisioning_public=provisioning_public,
    )
    if authorized is not None:
        document["authorized_keys"] = [
            line.replace("{provisioning}", provisioning_public) for line in authorized
        ]
    sshd.start_node_os(spec, document, tmp_path)
    return node


@pytest.fixture
def node_factory(tmp_path: Path, keydir: Path) -> Iterator[object]:
    started: list[Node] = []

    def start(authorized: list[str] | None = None) -> Node:
        node = _start_node(tmp_path, keydir, authorized)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            try:
                sshd.stop_node_os(node.spec, tmp_path)
            finally:
                netns.destroy_node_network(node.spec)
            assert not netns.namespace_exists(node.spec.netns)


@pytest.fixture
def node(node_factory) -> Node:  # type: ignore[no-untyped-def]
    return node_factory()


def test_handover_removes_provisioning_key_and_customer_still_logs_in(node: Node, tmp_path: Path) -> None:
    messages: list[str] = []
    result = perform_handover(
        node.address,
        22,
        "root",
        node.provisioning_private,
        node.provisioning_public,
        node.fingerprints,
        log=messages.append,
        customer_public_keys=[node.customer_public],
    )
    assert result.ssh_command == f"ssh root@{node.address}"
    assert sorted(result.host_key_fingerprints.values()) == sorted(node.fingerprints.values())
    assert sorted(result.known_hosts_lines) == sorted(
        f"{node.address} {' '.join(pub.split()[:2])}" for pub in node.host_public.values()
    )
    # The file sshd reads holds the customer's key and no longer ours.
    lines = node.authorized_keys.read_text().splitlines()
    assert lines == [node.customer_public]
    # Our key is refused now; the customer's works, checked by the real OpenSSH client with the
    # known_hosts lines handover returned and strict host key checking.
    with pytest.raises(SshAuthFailed):
        connect(node.address, 22, "root", node.provisioning_private, node.fingerprints)
    status, out, _err = run_command(
        node.address, 22, "root", node.customer_private, node.fingerprints, "id -un"
    )
    assert (status, out.strip()) == (0, "root")
    if shutil.which("ssh"):
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(result.known_hosts)
        key_file = tmp_path / "customer_key"
        key_file.write_text(node.customer_private)
        key_file.chmod(0o600)
        proc = subprocess.run(
            [
                "ssh", "-F", "/dev/null", "-i", str(key_file), "-o", "BatchMode=yes",
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={known_hosts}",
                "-o", "ConnectTimeout=5", *result.ssh_command.split()[1:], "true",
            ],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    # Nothing secret in the log.
    assert not any("PRIVATE" in m or node.provisioning_private[40:80] in m for m in messages)
    assert any(parse_public_key(node.provisioning_public).fingerprint in m for m in messages)


def test_handover_refuses_a_host_key_it_does_not_expect(node: Node, keydir: Path) -> None:
    before = node.authorized_keys.read_text()
    wrong = {"ed25519": _ssh_keygen_fingerprint(keydir / "other_host.pub")}
    with pytest.raises(HostKeyMismatch, match="not one of the expected fingerprints") as err:
        perform_handover(node.address, 22, "root", node.provisioning_private, node.provisioning_public, wrong)
    assert err.value.retryable is False
    assert "PRIVATE" not in str(err.value)
    assert node.authorized_keys.read_text() == before  # nothing was changed on the impostor
    # Expecting only one of the two real keys is fine for a connection (only that type is offered) ...
    only_ecdsa = {"ecdsa": node.fingerprints["ecdsa"]}
    status, _out, _err = run_command(node.address, 22, "root", node.customer_private, only_ecdsa, "true")
    assert status == 0
    # ... but a fingerprint list without the node's key of that type is a mismatch.
    with pytest.raises(HostKeyMismatch):
        run_command(
            node.address, 22, "root", node.customer_private, {"ecdsa": node.fingerprints["ed25519"]}, "true"
        )


def test_handover_refuses_to_lock_the_customer_out(node_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(authorized=["{provisioning}"])
    before = node.authorized_keys.read_text()
    with pytest.raises(HandoverFailed, match="lock the customer out"):
        perform_handover(
            node.address, 22, "root", node.provisioning_private, node.provisioning_public, node.fingerprints
        )
    assert node.authorized_keys.read_text() == before


def test_handover_checks_named_customer_keys_are_present(node: Node) -> None:
    _priv, absent = generate_keypair(comment="absent")
    with pytest.raises(HandoverFailed, match="not in authorized_keys"):
        perform_handover(
            node.address,
            22,
            "root",
            node.provisioning_private,
            node.provisioning_public,
            node.fingerprints,
            customer_public_keys=[node.customer_public, absent],
        )


def test_second_handover_finds_the_provisioning_key_already_refused(node: Node) -> None:
    args = (node.address, 22, "root", node.provisioning_private, node.provisioning_public, node.fingerprints)
    perform_handover(*args)
    with pytest.raises(SshAuthFailed):
        perform_handover(*args)


def test_mismatched_private_and_public_provisioning_keys_are_refused(node: Node) -> None:
    other_private, _other_public = generate_keypair()
    with pytest.raises(Exception, match="not a pair"):
        perform_handover(node.address, 22, "root", other_private, node.provisioning_public, node.fingerprints)


def test_run_command_returns_status_and_both_streams(node: Node) -> None:
    status, out, err = run_command(
        node.address,
        22,
        "root",
        node.provisioning_private,
        node.fingerprints,
        "echo out; echo err >&2; exit 7",
    )
    assert (status, out, err) == (7, "out\n", "err\n")


def test_wait_for_ssh_reads_the_banner_and_gives_up_in_time(node: Node) -> None:
    assert wait_for_ssh(node.address, 22, timeout=5).startswith("SSH-2.0-OpenSSH")
    sshd.stop_node_os(node.spec, node.lab_dir)
    with pytest.raises(SshUnreachable, match="did not answer"):
        wait_for_ssh(node.address, 22, timeout=1, interval=0.2)
