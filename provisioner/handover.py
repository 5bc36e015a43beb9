"""SSH primitives of handover: strict host-key checking, running commands, removing our provisioning key.

Every connection checks the server's host key against the SHA256 fingerprints the deploy agent
generated and recorded (we know them before the first connection, so there is no trust-on-first-use):
a key whose fingerprint is not expected raises HostKeyMismatch before anything is sent.

Handover (``perform_handover``) removes the provisioning public key from the node's authorized_keys,
checks that the customer's keys are still there, and then proves that the provisioning key no longer
logs in. Private keys are never logged nor put in error messages.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import shlex
import socket
import time
from collections.abc import Callable, Iterable

import paramiko

from provisioner.errors import DriverError, InvalidRequest, StepTimeout
from provisioner.sshkeys import fingerprint_sha256, parse_public_key, ssh_command

AUTHORIZED_KEYS_ENV = "NEOCLOUD_AUTHORIZED_KEYS_FILE"  # set by the lab's sshd (lab.sshd)
DEFAULT_AUTHORIZED_KEYS = ".ssh/authorized_keys"  # relative to the user's home, like sshd's default
CONNECT_TIMEOUT = 10.0

Log = Callable[[str], None]

# paramiko's host-key algorithms in its order of preference (a private attribute: read once, here)
_PREFERRED_HOST_KEYS: tuple[str, ...] = tuple(paramiko.Transport._preferred_keys)  # type: ignore[attr-defined]


class SshUnreachable(DriverError):
    """The node's sshd did not answer or the connection broke: it may still be booting."""

    code = "ssh_unreachable"
    retryable = True


class SshAuthFailed(DriverError):
    """The node refused our key."""

    code = "ssh_auth_failed"
    retryable = False


class HostKeyMismatch(DriverError):
    """The node presented a host key we did not expect: a different machine, or an interception."""

    code = "host_key_mismatch"
    retryable = False


class HandoverFailed(DriverError):
    """Removing the provisioning key did not leave the node in the state the customer must get."""

    code = "handover_failed"
    retryable = False


@dataclasses.dataclass(frozen=True)
class HostKey:
    key_type: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    blob_b64: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class HandoverResult:
    host_key_fingerprints: dict[str, str]  # key type -> "SHA256:..."
    known_hosts_lines: list[str]  # "198.18.0.5 ssh-ed25519 AAAA...", one per host key
    ssh_command: str  # "ssh root@198.18.0.5"

    @property
    def known_hosts(self) -> str:
        """The lines as a known_hosts file the customer can append to theirs."""
        return "".join(line + "\n" for line in self.known_hosts_lines)


def known_hosts_name(address: str, port: int) -> str:
    """How a known_hosts line names a host: ``address``, or ``[address]:port`` when SSH is not on port 22
    (OpenSSH and paramiko look keys up by that form). Pure."""
    return address if port == 22 else f"[{address}]:{port}"


def _no_log(_message: str) -> None:
    return None


# --- host keys ------------------------------------------------------------------------------------

# Host key algorithms paramiko negotiates, per family of key.
_FAMILIES = {
    "ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ecdsa": ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
    "rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}


def _family(key_type: str) -> tuple[str, ...] | None:
    name = key_type.lower().removeprefix("ssh-")
    return _FAMILIES.get(name)


def _host_key_algorithm_sets(expected: dict[str, str]) -> list[tuple[str, ...] | None]:
    """One algorithm set per expected host key type; [None] (paramiko's default) when types are unknown."""
    sets: list[tuple[str, ...] | None] = []
    for key_type in expected:
        family = _family(key_type)
        if family is None:
            return [None]
        if family not in sets:
            sets.append(family)
    return sets or [None]


def _disabled_for(allowed: tuple[str, ...] | None) -> dict[str, list[str]] | None:
    if allowed is None:
        return None
    return {"keys": [alg for alg in _PREFERRED_HOST_KEYS if alg not in allowed]}


def _check_host_key(address: str, port: int, key: paramiko.PKey, expected: dict[str, str]) -> HostKey:
    blob = key.asbytes()
    fingerprint = fingerprint_sha256(blob)
    if fingerprint not in set(expected.values()):
        raise HostKeyMismatch(
            f"{address}:{port} presented host key {key.get_name()} {fingerprint}, which is not one of the "
            f"expected fingerprints ({', '.join(sorted(expected.values())) or 'none'}): the machine is "
            "not the one we deployed or the connection is intercepted; refusing to connect"
        )
    return HostKey(key.get_name(), base64.b64encode(blob).decode(), fingerprint)


class _ExpectedHostKeys(paramiko.MissingHostKeyPolicy):
    """Accepts a host key only when its SHA256 fingerprint is one of the expected ones."""

    def __init__(self, port: int, expected: dict[str, str]) -> None:
        self.port = port
        self.expected = expected
        self.accepted: HostKey | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.accepted = _check_host_key(hostname, self.port, key, self.expected)


def scan_host_keys(
    address: str, port: int, expected_fingerprints: dict[str, str], timeout: float = CONNECT_TIMEOUT
) -> list[HostKey]:
    """Fetch the node's host key of each expected type (like ssh-keyscan) and check every fingerprint.

    Read-only, idempotent. Raises HostKeyMismatch for an unexpected key, SshUnreachable when the
    node does not answer.
    """
    keys: list[HostKey] = []
    for allowed in _host_key_algorithm_sets(expected_fingerprints):
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except OSError as exc:
            raise SshUnreachable(f"cannot reach SSH on {address}:{port}: {exc.strerror or exc}")
        transport = paramiko.Transport(sock, disabled_algorithms=_disabled_for(allowed))
        try:
            transport.banner_timeout = timeout
            transport.start_client(timeout=timeout)
            key = transport.get_remote_server_key()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise SshUnreachable(f"SSH handshake with {address}:{port} failed: {exc}")
        finally:
            transport.close()
        host_key = _check_host_key(address, port, key, expected_fingerprints)
        if host_key not in keys:
            keys.append(host_key)
    return keys


# --- connections ----------------------------------------------------------------------------------


def load_private_key(private_key: str) -> paramiko.PKey:
    """Load an unencrypted private key (OpenSSH or PEM text). Raises InvalidRequest without its text."""
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key(io.StringIO(private_key))
        except (paramiko.SSHException, ValueError, TypeError):
            continue
    raise InvalidRequest("the provisioning private key could not be loaded (not an unencrypted SSH key)")


def connect(
    address: str,
    port: int,
    username: str,
    private_key: str | paramiko.PKey,
    expected_fingerprints: dict[str, str],
    timeout: float = CONNECT_TIMEOUT,
) -> paramiko.SSHClient:
    """Open an SSH session with strict host-key checking; the caller closes the returned client.

    Raises HostKeyMismatch, SshAuthFailed (key refused) or SshUnreachable (network, handshake).
    """
    pkey = private_key if isinstance(private_key, paramiko.PKey) else load_private_key(private_key)
    client = paramiko.SSHClient()
    policy = _ExpectedHostKeys(port, expected_fingerprints)
    client.set_missing_host_key_policy(policy)
    allowed = _host_key_algorithm_sets(expected_fingerprints)
    # Offer only the expected host key types, so the server cannot pick one we have no fingerprint for.
    disabled = None
    if None not in allowed:
        offered = {alg for family in allowed if family for alg in family}
        disabled = {"keys": [alg for alg in _PREFERRED_HOST_KEYS if alg not in offered]}
    try:
        client.connect(
            address,
            port=port,
            username=username,
            pkey=pkey,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
            disabled_algorithms=disabled,
        )
    except HostKeyMismatch:
        client.close()
        raise
    except paramiko.AuthenticationException:
        client.close()
        raise SshAuthFailed(
            f"{address}:{port} refused key {fingerprint_sha256(pkey.asbytes())} for user {username}"
        )
    except (paramiko.SSHException, OSError, EOFError) as exc:
        client.close()
        raise SshUnreachable(f"SSH connection to {username}@{address}:{port} failed: {exc}")
    return client


def _exec(
    client: paramiko.SSHClient, command: str, timeout: float, stdin: bytes = b""
) -> tuple[int, str, str]:
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise SshUnreachable("the SSH connection closed before the command could run")
    channel = transport.open_session(timeout=timeout)
    try:
        channel.settimeout(0.2)
        channel.exec_command(command)
        if stdin:
            channel.sendall(stdin)
        channel.shutdown_write()
        out, err = bytearray(), bytearray()
        deadline = time.monotonic() + timeout
        while True:
            while channel.recv_ready():
                out += channel.recv(65536)
            while channel.recv_stderr_ready():
                err += channel.recv_stderr(65536)
            if channel.exit_status_ready() and not channel.recv_ready() and not channel.recv_stderr_ready():
                break
            if time.monotonic() > deadline:
                raise StepTimeout(
                    f"command on {transport.getpeername()[0]} did not finish within {timeout:.0f} s"
                )
            time.sleep(0.02)
        return channel.recv_exit_status(), out.decode(errors="replace"), err.decode(errors="replace")
    finally:
        channel.close()


def run_command(
    address: str,
    port: int,
    username: str,
    private_key: str,
    expected_fingerprints: dict[str, str],
    command: str,
    timeout: float = 60.0,
) -> tuple[int, str, str]:
    """Run one shell command on the node; return (exit status, stdout, stderr).

    A non-zero exit status is returned, not raised. Raises HostKeyMismatch, SshAuthFailed,
    SshUnreachable, or StepTimeout when the command runs longer than ``timeout`` seconds.
    """
    client = connect(
        address, port, username, private_key, expected_fingerprints, timeout=min(timeout, CONNECT_TIMEOUT)
    )
    try:
        return _exec(client, command, timeout)
    finally:
        client.close()


def wait_for_ssh(address: str, port: int = 22, timeout: float = 300.0, interval: float = 1.0) -> str:
    """Poll until the node's SSH banner can be read; return it ("SSH-2.0-OpenSSH_9.2...").

    Read-only. Raises SshUnreachable when no banner came within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while True:
        try:
            with socket.create_connection((address, port), timeout=min(5.0, max(timeout, 0.1))) as sock:
                sock.settimeout(5.0)
                data = b""
                while b"\n" not in data and len(data) < 1024:
                    chunk = sock.recv(256)
                    if not chunk:
                        break
                    data += chunk
                banner = data.split(b"\n", 1)[0].strip().decode(errors="replace")
                if banner.startswith("SSH-"):
                    return banner
                last_error = f"unexpected banner {banner[:40]!r}"
        except OSError as exc:
            last_error = exc.strerror or str(exc)
        if time.monotonic() + interval > deadline:
            raise SshUnreachable(
                f"SSH on {address}:{port} did not answer within {timeout:.0f} s ({last_error})"
            )
        time.sleep(interval)


# --- handover -------------------------------------------------------------------------------------


def _key_blobs(line: str) -> set[str]:
    """The base64 key blobs in one authorized_keys line (after any options)."""
    return {tok for tok in line.split() if tok.startswith("AAAA") and len(tok) > 40}


def _authorized_keys_target(path: str | None) -> str:
    if path is None:
        return f'"${{{AUTHORIZED_KEYS_ENV}:-$HOME/{DEFAULT_AUTHORIZED_KEYS}}}"'
    return shlex.quote(path)


def remove_key_text(text: str, blob_b64: str) -> tuple[str, list[str]]:
    """authorized_keys text without the lines holding ``blob_b64``; also the remaining key lines."""
    kept, remaining = [], []
    for line in text.splitlines():
        stripped = line.strip()
        blobs = _key_blobs(stripped)
        if blob_b64 in blobs:
            continue
        kept.append(line)
        if blobs and not stripped.startswith("#"):
            remaining.append(stripped)
    return "".join(line + "\n" for line in kept), remaining


def perform_handover(
    address: str,
    port: int,
    username: str,
    provisioning_private_key: str,
    provisioning_public_key: str,
    expected_fingerprints: dict[str, str],
    log: Log = _no_log,
    authorized_keys_path: str | None = None,
    customer_public_keys: Iterable[str] = (),
    timeout: float = 30.0,
) -> HandoverResult:
    """Hand the node to the customer: remove our provisioning key and prove it no longer logs in.

    ``authorized_keys_path`` is the file the node's sshd reads; None means the path the node exports
    in NEOCLOUD_AUTHORIZED_KEYS_FILE (the lab does) or else ``~/.ssh/authorized_keys``. When
    ``customer_public_keys`` is given, each must still be in the file afterwards.

    Idempotent: when the key is already gone (an earlier handover got half-way) the first connection
    fails with SshAuthFailed, so callers retrying a handover should treat SshAuthFailed followed by a
    successful customer login as done. Raises HostKeyMismatch, SshAuthFailed, SshUnreachable,
    HandoverFailed (no customer key would remain, or the provisioning key still logs in).
    """
    provisioning = parse_public_key(provisioning_public_key)
    customer = [parse_public_key(k) for k in customer_public_keys]
    pkey = load_private_key(provisioning_private_key)
    if fingerprint_sha256(pkey.asbytes()) != provisioning.fingerprint:
        raise InvalidRequest("the provisioning private and public keys given to handover are not a pair")
    host_keys = scan_host_keys(address, port, expected_fingerprints, timeout=min(timeout, CONNECT_TIMEOUT))
    log(f"host keys of {address}: {', '.join(f'{k.key_type} {k.fingerprint}' for k in host_keys)}")

    target = _authorized_keys_target(authorized_keys_path)
    client = connect(
        address, port, username, pkey, expected_fingerprints, timeout=min(timeout, CONNECT_TIMEOUT)
    )
    try:
        status, text, err = _exec(client, f"cat -- {target}", timeout)
        if status != 0:
            raise HandoverFailed(f"cannot read the authorized_keys file on {address}: {err.strip()[:200]}")
        new_text, remaining = remove_key_text(text, provisioning.blob_b64)
        if not remaining:
            raise HandoverFailed(
                f"no customer key would remain in authorized_keys on {address}; "
                "refusing to lock the customer out"
            )
        missing = [k.fingerprint for k in customer if not any(k.blob_b64 in _key_blobs(r) for r in remaining)]
        if missing:
            raise HandoverFailed(
                f"customer keys {', '.join(missing)} are not in authorized_keys on {address}"
            )
        # Write a temporary file next to it and rename: sshd never sees a half-written file.
        write = (
            f'F={target}; T="$F.neocloud-$$"; umask 077; '
            f'cat > "$T" && chmod 600 "$T" && mv -f -- "$T" "$F" || {{ rm -f -- "$T"; exit 1; }}'
        )
        status, _out, err = _exec(client, write, timeout, stdin=new_text.encode())
        if status != 0:
            raise HandoverFailed(f"cannot rewrite the authorized_keys file on {address}: {err.strip()[:200]}")
        status, check_text, err = _exec(client, f"cat -- {target}", timeout)
        _after, after_remaining = remove_key_text(check_text, provisioning.blob_b64)
        if status != 0 or any(provisioning.blob_b64 in _key_blobs(line) for line in check_text.splitlines()):
            raise HandoverFailed(
                f"the provisioning key is still in authorized_keys on {address} after removal"
            )
        if after_remaining != remaining:
            raise HandoverFailed(f"authorized_keys on {address} changed unexpectedly during handover")
        log(f"removed provisioning key {provisioning.fingerprint}; {len(remaining)} customer key(s) remain")
    finally:
        client.close()

    try:
        still = connect(
            address, port, username, pkey, expected_fingerprints, timeout=min(timeout, CONNECT_TIMEOUT)
        )
    except SshAuthFailed:
        log(f"provisioning key {provisioning.fingerprint} is now refused by {address}")
    else:
        still.close()
        raise HandoverFailed(
            f"the provisioning key still logs in to {address} after removal: "
            "its sshd reads another authorized_keys file"
        )

    host = known_hosts_name(address, port)
    return HandoverResult(
        host_key_fingerprints={k.key_type: k.fingerprint for k in host_keys},
        known_hosts_lines=[f"{host} {k.key_type} {k.blob_b64}" for k in host_keys],
        ssh_command=ssh_command(username, address, port),
    )
