"""The "operating system" of a lab node: a real OpenSSH sshd in the node's network namespace.

When the lab firmware boots a node from its disk it calls ``start_node_os`` with the config-drive
document the deploy agent wrote (see provisioner.pxe.configdrive); on power-off it calls
``stop_node_os``. Per node, everything lives in ``<lab_dir>/nodes/<name>/os/``:

  ssh_host_<type>_key[.pub]   the host keys from the document (private keys mode 0600)
  authorized_keys             the document's keys: the customer's plus, until handover, ours
  netplan/60-neocloud-private.yaml   a switched server's private network (lab.os_firstboot.NETPLAN_FILE)
  instance-id                 the instance whose per-instance data the files above hold
  sshd_config, sshd.pid, sshd.log

The directory is the node's root file system: it outlives a power cycle. As cloud-init, the OS applies the
document's per-instance data (host keys, authorized keys, the private network's netplan file) at the first
boot of an instance only (the document's ``instance_id``, lab.os_firstboot.instance_id); a reboot keeps what
the server holds since: the handover removed our provisioning key, a warm server's personalize generated new
host keys, added its customer's keys and wrote its private network's netplan file.

The SSH user of a lab node is ``root``: sshd runs as root on the host's file system (only its network
and its host name are separate), so a root session can edit ``authorized_keys`` in place, which is what
handover does. Each node's sshd runs in a UTS namespace of its own whose host name is the document's, so
``hostname`` on a lab server prints that server's name, as on a deployed server, not this host's.
The path of that file is exported to sessions as ``NEOCLOUD_AUTHORIZED_KEYS_FILE`` (sshd ``SetEnv``)
because it is not ``~/.ssh/authorized_keys``; provisioner.handover uses it when set.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import netns
from lab import os_firstboot as firstboot
from lab.spec import LabNodeSpec
from provisioner.errors import DriverError

SSHD = "/usr/sbin/sshd"
SSH_USER = "root"
SSH_PORT = 22
AUTHORIZED_KEYS_ENV = "NEOCLOUD_AUTHORIZED_KEYS_FILE"
SSHD_CONFIG_ENV = "NEOCLOUD_SSHD_CONFIG"
# where a session finds the directory a real server's netplan files live in (/etc/netplan)
NETPLAN_DIR_ENV = "NEOCLOUD_NETPLAN_DIR"
# sshd refuses to start without its privilege-separation directory (Debian creates it at boot only).
PRIVSEP_DIR = Path("/run/sshd")
_KEY_TYPE = re.compile(r"^[a-z0-9-]{1,32}$")
# A host name the kernel takes (at most 64 bytes) and `hostname` never reads as an option.
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,63}$")
# Run by `unshare --uts` inside the node's network namespace: name the new UTS namespace, then become sshd
# (exec all the way down: the pid `ip netns exec` started is sshd's).
_SET_HOSTNAME_THEN_EXEC = 'hostname "$1" || exit 1; shift; exec "$@"'
# sshd processes started by this process, kept so they are reaped (no zombies, no ResourceWarning).
_launched: dict[int, subprocess.Popen[bytes]] = {}


class NodeOsError(DriverError):
    """The lab node's sshd could not be configured or did not come up."""

    code = "lab_node_os_error"
    retryable = False


def os_dir(spec: LabNodeSpec, lab_dir: Path) -> Path:
    return Path(lab_dir) / "nodes" / spec.name / "os"


def authorized_keys_path(spec: LabNodeSpec, lab_dir: Path) -> Path:
    """The authorized_keys file the node's sshd reads (root's keys on that node)."""
    return os_dir(spec, lab_dir) / "authorized_keys"


def _write(path: Path, text: str, mode: int) -> None:
    # Write to a temporary name then rename, so sshd never reads a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text if text.endswith("\n") else text + "\n")
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _host_key_files(config: dict[str, Any], directory: Path) -> list[Path]:
    host_keys = config.get("host_keys")
    if not isinstance(host_keys, dict) or not host_keys:
        raise NodeOsError("the config-drive document has no host_keys: the node cannot start sshd")
    paths = []
    for key_type, pair in sorted(host_keys.items()):
        name = str(key_type).removeprefix("ssh-")
        if not _KEY_TYPE.match(name):
            raise NodeOsError(f"host key type {key_type!r} in the config-drive document is not usable")
        if not isinstance(pair, dict) or not pair.get("private") or not pair.get("public"):
            raise NodeOsError(
                f"host key {key_type!r} in the config-drive document lacks its private or public part"
            )
        path = directory / f"ssh_host_{name}_key"
        _write(path, pair["private"], 0o600)
        _write(path.with_name(path.name + ".pub"), pair["public"], 0o644)
        paths.append(path)
    return paths


def render_sshd_config(spec: LabNodeSpec, host_keys: list[Path], directory: Path) -> str:
    """The sshd_config of a lab node: key-only root login on the node's address (a switched node: every
    address of its namespace, its private address on a tenant network included), state in ``directory``."""
    # A switched server's sshd listens on every address of its own namespace, as a real OS's does: a warm
    # server gets its tenant address while sshd runs (the warm pool's personalize step).
    listen = (
        [f"ListenAddress 0.0.0.0:{SSH_PORT}"]
        if spec.switch_name
        else [f"ListenAddress {spec.ssh_address}:{SSH_PORT}"]
    )
    lines = [
        *listen,
        *(f"HostKey {path}" for path in host_keys),
        f"AuthorizedKeysFile {directory / 'authorized_keys'}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        # The files live in the lab directory, whose owners and modes sshd's checks do not expect.
        "StrictModes no",
        f"PidFile {directory / 'sshd.pid'}",
        # where sessions find the files a real server keeps in /etc/ssh (a warm server's new host keys)
        f"SetEnv {AUTHORIZED_KEYS_ENV}={directory / 'authorized_keys'} "
        f"{SSHD_CONFIG_ENV}={directory / 'sshd_config'} {NETPLAN_DIR_ENV}={netplan_dir(directory)}",
        "PrintMotd no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        # Many nodes share one host: no DNS lookups of clients, and a bounded number of handshakes.
        "UseDNS no",
        "MaxStartups 20:50:100",
        "LoginGraceTime 30",
        "Subsystem sftp internal-sftp",
    ]
    return "\n".join(lines) + "\n"


def node_hostname(config: dict[str, Any]) -> str:
    """The host name the config-drive document gives the node. Raises NodeOsError when it has none."""
    hostname = config.get("hostname")
    if not isinstance(hostname, str) or not _HOSTNAME.match(hostname):
        raise NodeOsError(f"the config-drive document has no usable hostname ({hostname!r})")
    return hostname


def netplan_dir(directory: Path) -> Path:
    """Where the node's OS (``directory``, its os_dir) keeps its netplan files."""
    return directory / "netplan"


def write_node_os(spec: LabNodeSpec, config: dict[str, Any], lab_dir: Path) -> Path:
    """At the first boot of the document's instance: host keys, authorized_keys and the private network's
    netplan file (a switched node) from the document; at every boot: sshd_config. Return the sshd_config path.

    Idempotent. Raises NodeOsError when the document lacks a host name, or (at an instance's first boot) host
    keys, authorized keys or a usable private network, or when a later boot finds no host keys.
    """
    if not spec.ssh_address or not spec.netns:
        raise NodeOsError(f"lab node {spec.name} has no SSH address or network namespace in its spec")
    directory = os_dir(spec, lab_dir)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    marker = directory / firstboot.INSTANCE_ID_FILE
    if firstboot.first_boot_of_instance(config, marker):
        for old in directory.glob("ssh_host_*"):  # a new instance does not keep the last one's host keys
            old.unlink()
        host_keys = _host_key_files(config, directory)
        keys = config.get("authorized_keys")
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or not keys:
            raise NodeOsError("the config-drive document has no authorized_keys: nobody could log in")
        node_hostname(config)
        _write(directory / "authorized_keys", "\n".join(k.strip() for k in keys), 0o600)
        if spec.switch_port:
            try:
                firstboot.write_network_config(config, netns.NODE_INTERFACE, netplan_dir(directory))
            except ValueError as exc:
                raise NodeOsError(f"lab node {spec.name}: {exc}") from None
        firstboot.mark_instance(config, marker)
    else:
        node_hostname(config)
        host_keys = sorted(directory.glob("ssh_host_*_key"))
        if not host_keys:
            raise NodeOsError(f"lab node {spec.name}'s OS has no SSH host keys left: sshd cannot start")
    config_path = directory / "sshd_config"
    _write(config_path, render_sshd_config(spec, host_keys, directory), 0o600)
    return config_path


def check_config(config_path: Path) -> None:
    """Run ``sshd -t`` on the config. Raises NodeOsError with sshd's complaint when it is invalid."""
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.run(
        [SSHD, "-t", "-f", str(config_path)], capture_output=True, text=True, timeout=20, check=False
    )
    if proc.returncode != 0:
        raise NodeOsError(f"sshd rejected {config_path}: {proc.stderr.strip()}")


def _read_pid(directory: Path) -> int | None:
    try:
        return int((directory / "sshd.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _is_our_sshd(pid: int, netns_name: str) -> bool:
    # The pid file may be stale and its number reused: only a live sshd inside this node's network
    # namespace is ours to signal. (sshd rewrites its command line, so the executable is compared.)
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1][:1]
        same_netns = os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns.NETNS_DIR / netns_name).st_ino
    except OSError:
        return False
    return state != "Z" and exe == SSHD and same_netns


def node_sshd_pid(spec: LabNodeSpec, lab_dir: Path) -> int | None:
    """The pid of the node's running sshd, or None."""
    directory = os_dir(spec, lab_dir)
    pid = _read_pid(directory)
    if pid is not None and spec.netns and _is_our_sshd(pid, spec.netns):
        return pid
    return None


def wait_for_port(address: str, port: int, timeout: float) -> bool:
    """Poll until a TCP connection to address:port succeeds; return False after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, port), timeout=1.0):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_node_os(spec: LabNodeSpec, config: dict[str, Any], lab_dir: Path, timeout: float = 15.0) -> None:
    """Boot the node's "OS": its namespace, then its sshd on ``spec.ssh_address:22`` under the document's
    host name (a UTS namespace of its own); wait until it answers.

    Idempotent: a running sshd is stopped and started again (a reboot after a redeploy brings the new
    instance's host keys; a reboot of the same instance keeps the keys and network its OS holds). Raises
    NodeOsError when the document is unusable or sshd does not come up within ``timeout`` seconds (the
    message carries the tail of sshd's log), and lab.netns.LabNetworkError when the namespace cannot be
    created.
    """
    stop_node_os(spec, lab_dir)
    config_path = write_node_os(spec, config, lab_dir)
    netns.boot_node_network(spec)
    if spec.switch_port:
        # the switched lab: a boot starts from a bare NIC, then brings up the private network the OS keeps
        try:
            firstboot.apply_network_config(netplan_dir(config_path.parent), spec.netns)
        except ValueError as exc:
            raise NodeOsError(f"lab node {spec.name}: {exc}") from None
    check_config(config_path)
    directory = config_path.parent
    log_path = directory / "sshd.log"
    log_path.write_text("")
    in_netns = ["ip", "netns", "exec", spec.netns]
    own_hostname = ["unshare", "--uts", "sh", "-c", _SET_HOSTNAME_THEN_EXEC, "sh", node_hostname(config)]
    # `ip netns exec` enters the namespace and execs unshare, which execs the shell, which execs sshd: the
    # child's pid is sshd's pid.
    proc = subprocess.Popen(
        [*in_netns, *own_hostname, SSHD, "-D", "-f", str(config_path), "-E", str(log_path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # detached: a Ctrl-C of the lab command does not reach the node
        close_fds=True,
    )
    # sshd writes the same pid there itself once it runs; written now so a stop racing the start finds it.
    (directory / "sshd.pid").write_text(f"{proc.pid}\n")
    _launched[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NodeOsError(
                f"sshd of lab node {spec.name} exited with status {proc.returncode}: {_log_tail(log_path)}"
            )
        if wait_for_port(spec.ssh_address, SSH_PORT, 0.2):
            return
    stop_node_os(spec, lab_dir)
    raise NodeOsError(
        f"sshd of lab node {spec.name} did not answer on {spec.ssh_address}:{SSH_PORT} within "
        f"{timeout:.0f} s: {_log_tail(log_path)}"
    )


def stop_node_os(spec: LabNodeSpec, lab_dir: Path, timeout: float = 5.0) -> None:
    """Stop the node's sshd (only it: its own sessions die with it). Idempotent: no sshd, no error.

    The namespace stays (the node is powered off, its network cable is still plugged in); the lab's
    teardown removes namespaces with lab.netns.
    """
    directory = os_dir(spec, lab_dir)
    pid = node_sshd_pid(spec, lab_dir)
    if pid is not None:
        # sshd -D runs in its own session (start_new_session): the process group holds it and its
        # per-connection children, and nothing else.
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                # Not a group leader (started some other way): signal the process alone.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            if _wait_gone(pid, wait):
                break
        else:
            raise NodeOsError(f"sshd of lab node {spec.name} (pid {pid}) did not stop")
    # Session processes (a customer's shell) are separate sessions of their own: end those still in
    # the namespace so a powered-off node has nothing running.
    if spec.netns:
        netns.kill_namespace_processes(spec.netns)
    (directory / "sshd.pid").unlink(missing_ok=True)
    for launched_pid, launched in list(_launched.items()):
        if launched.poll() is not None:
            del _launched[launched_pid]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        launched = _launched.get(pid)
        if launched is not None and launched.poll() is not None:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[-1][:1]
        except OSError:
            return True
        if state == "Z":  # exited; its parent (another lab process) reaps it
            return True
        time.sleep(0.05)
    return False


def sshd_available() -> bool:
    return Path(SSHD).exists() and shutil.which("ip") is not None
