"""The deploy agent: runs in the deploy ramdisk, writes the image and the node's config to its disk.

    python -m provisioner.pxe.agent --api URL --token T --disk /dev/sda
    python -m provisioner.pxe.agent --cmdline /proc/cmdline --disk /dev/sda

``--cmdline`` reads ``neocloud.api=`` and ``neocloud.token=`` from a kernel command line (what the
iPXE script of provisioner.pxe.ipxe passes); ``--token-file`` or the ``NEOCLOUD_TOKEN`` environment
variable keep the token out of the process list. The token is never printed.

Steps (each reported to ``<api>/progress``; the outcome to ``<api>/result``):
0. At start, listen for LLDP on the boot NIC on a thread of its own (provisioner.pxe.lldp): what the switch
   port it is cabled to announces. ``neocloud.lldp_timeout=`` (seconds, default 35: a switch announces every
   30 s; 0 turns listening off) and ``neocloud.lldp_interface=`` on the kernel command line, else
   ``--lldp-timeout`` / ``--lldp-interface``; without an interface named, the one whose MAC ``BOOTIF=`` gives,
   else the one the kernel routes the boot service's address through.
1. ``GET <api>/instructions`` (one-time token: a second GET is refused with 409, an unknown token 403).
   When they say ``cabling_check`` (the node's cabling is recorded), wait for the LLDP listener and post
   what it heard (``stage: cabling`` with ``lldp``) before anything touches the disk: the boot service
   compares it with the recorded switch and port and answers 409 on a mismatch, and the agent stops there.
   Otherwise the deploy goes on at once and what was heard by the end rides along in the result.
2. Invalidate the old config drive, then stream the image over HTTP to the disk in big chunks,
   hashing while writing (never the whole image in memory); check ``Content-Length`` against the
   announced size and the disk's room; fsync; compare the sha256.
3. Write the config drive (provisioner.pxe.configdrive) with hostname, keys, fresh SSH host keys
   (ed25519, ecdsa P-256, rsa 3072 made by ssh-keygen), network, image and deployed_at.
4. Post the result with the public host keys and their ``ssh-keygen -lf`` fingerprints.

On failure (checksum mismatch, write error, image too large...) the agent zeroes the first MiB of the
disk and the config-drive area, posts ``status: failed`` with an ``error_code``, and exits 1, so a
half-written node never looks deployed.

Fault injection for the lab (never set in production): ``NEOCLOUD_FAULT_CORRUPT_OFFSET=N`` flips the
byte at offset N of the received stream before it is hashed and written, as a bad network would;
``NEOCLOUD_FAULT_CRASH_AFTER_BYTES=N`` kills the agent (SIGKILL) once N bytes are on the disk, as a
ramdisk crash would: nothing is reported and the disk is left half-written.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import errno
import functools
import hashlib
import http.client
import ipaddress
import json
import logging
import mmap
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from provisioner.pxe import lldp
from provisioner.pxe.configdrive import CONFIG_DRIVE_SIZE, ConfigDriveError, write_config_drive

log = logging.getLogger("provisioner.pxe.agent")

CHUNK_SIZE = 4 * 1024 * 1024
# Received and hashed at once when the receiving thread hashes: small enough to be hashed from the CPU's
# cache right after the kernel copied it there (a 4 MiB chunk is not, on a 2 MiB L2).
RECV_PIECE = 256 * 1024
PIPELINE_DEPTH = 6
# From this many usable CPUs on, a thread of its own hashes each chunk while the next one is received.
HASH_THREAD_MIN_CPUS = 4
# Writes in flight at once: O_DIRECT writes wait for the disk, so one at a time would leave it idle.
WRITES_IN_FLIGHT = 3
# O_DIRECT needs buffers, lengths and offsets aligned to the disk's logical block (4096 covers 512e too).
DIRECT_ALIGN = 4096
WIPE_SIZE = 1024 * 1024
HOST_KEY_TYPES: tuple[tuple[str, list[str]], ...] = (
    ("ed25519", []),
    ("ecdsa", ["-b", "256"]),
    ("rsa", ["-b", "3072"]),
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# The config drive's hostname and key lines end up in files read line by line (/etc/hostname,
# authorized_keys): one line each, no control characters (a newline in a key would add another key).
_HOSTNAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# A switch announces every 30 s by default (802.1AB msgTxInterval): wait a little longer than one interval.
LLDP_TIMEOUT = 35.0
# The boot service's refusals of a cabling report: it recorded the failed result itself.
CABLING_REFUSALS = ("cabling_mismatch", "cabling_unconfirmed")

EXIT_OK = 0
EXIT_DEPLOY_FAILED = 1
EXIT_NO_INSTRUCTIONS = 2
EXIT_REPORT_FAILED = 3


class AgentError(Exception):
    """A deploy failure with the ``error_code`` the agent reports to the boot service."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- talking to the boot service ------------------------------------------------------------------


class AgentApi:
    """The boot service's agent API, authenticated with the one-time bearer token."""

    def __init__(self, base_url: str, token: str, timeout: float = 30.0) -> None:
        if urlsplit(base_url).scheme not in ("http", "https"):
            raise AgentError("bad_arguments", "the agent API URL must be http(s)://...")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"AgentApi({self.base_url!r}, token='***')"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}/{path}", data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self._token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (OSError, http.client.HTTPException) as exc:
            raise AgentError("boot_service_unreachable", f"{method} {self.base_url}/{path} failed: {exc}")

    def get_instructions(self) -> dict[str, Any]:
        """Fetch this node's instructions. Not idempotent: the token is spent by the first call.

        :raises AgentError: ``token_already_used`` (409), ``token_refused`` (401/403), other HTTP errors.
        """
        status, body = self._request("GET", "instructions")
        if status == 409:
            raise AgentError(
                "token_already_used",
                "the boot service refused the instructions: this one-time token was already used "
                "(another agent or a replayed boot); power-cycle the node through a new deploy",
            )
        if status in (401, 403):
            raise AgentError(
                "token_refused", "the boot service does not know this token (expired or revoked)"
            )
        if status != 200:
            raise AgentError("instructions_failed", f"GET instructions answered HTTP {status}")
        try:
            document = json.loads(body)
        except ValueError:
            raise AgentError("bad_instructions", "the instructions are not JSON")
        return validate_instructions(document)

    def post_progress(self, stage: str, percent: int, message: str) -> None:
        """Report progress. Best effort: a lost progress report does not fail the deploy. Idempotent."""
        try:
            status, _ = self._request(
                "POST", "progress", {"stage": stage, "percent": percent, "message": message}
            )
        except AgentError as exc:
            log.warning("progress report lost: %s", exc)
            return
        if status >= 300:
            log.warning("progress report answered HTTP %d", status)

    def report_cabling(self, heard: dict[str, Any], attempts: int = 5) -> None:
        """Post what LLDP heard on the boot NIC (``stage: cabling``) and wait for the boot service's verdict:
        it compares it with the node's recorded cabling. Retries transient failures; idempotent.

        :raises AgentError: ``cabling_mismatch`` / ``cabling_unconfirmed`` with the boot service's sentence
            (the deploy must stop: the boot service has recorded the failure), ``cabling_report_refused``
            (another 4xx), ``boot_service_unreachable`` after all attempts.
        """
        body = {"stage": "cabling", "percent": 100, "message": describe_lldp(heard), "lldp": heard}
        last = ""
        for attempt in range(attempts):
            try:
                status, answer = self._request("POST", "progress", body)
            except AgentError as exc:
                last = str(exc)
            else:
                if status < 300:
                    return
                code, message = _error_of(answer)
                if status == 409 and code in CABLING_REFUSALS:
                    raise AgentError(code, message)
                if 400 <= status < 500:
                    raise AgentError(
                        "cabling_report_refused", f"the boot service refused the cabling report: {message}"
                    )
                last = f"HTTP {status}"
            time.sleep(min(0.5 * 2**attempt, 5))
        raise AgentError("boot_service_unreachable", f"the cabling report was not answered: {last}")

    def heartbeat(self) -> dict[str, Any] | None:
        """A fast-tracked agent's heartbeat: the boot service's answer (``wait`` with an interval, or ``run``
        with the token of a new ticket), or None when it ended the fast-track (the agent stops). Idempotent.

        :raises AgentError: ``boot_service_unreachable``, ``heartbeat_failed`` (an unexpected answer).
        """
        status, body = self._request("POST", "heartbeat", {})
        if status in (401, 403, 404, 410):
            return None
        if status != 200:
            raise AgentError("heartbeat_failed", f"POST heartbeat answered HTTP {status}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise AgentError("heartbeat_failed", "the heartbeat answer is not JSON")
        if not isinstance(answer, dict):
            raise AgentError("heartbeat_failed", "the heartbeat answer is not a JSON object")
        return answer

    def post_result(self, result: dict[str, Any], attempts: int = 5) -> None:
        """Report the outcome, retrying transient failures. Idempotent on the server side.

        :raises AgentError: ``result_not_accepted`` after all attempts.
        """
        last = ""
        for attempt in range(attempts):
            try:
                status, _ = self._request("POST", "result", result)
            except AgentError as exc:
                last = str(exc)
            else:
                if status < 300:
                    return
                last = f"HTTP {status}"
                if 400 <= status < 500:
                    break  # the server will not change its mind
            time.sleep(min(0.5 * 2**attempt, 5))
        raise AgentError("result_not_accepted", f"the boot service did not accept the result: {last}")


def _error_of(body: bytes) -> tuple[str, str]:
    """(code, message) of the boot service's error body ``{"error": {"code", "message"}}``; never raises."""
    try:
        error = json.loads(body).get("error") or {}
        return str(error.get("code") or ""), str(error.get("message") or body[:200].decode(errors="replace"))
    except (ValueError, AttributeError):
        return "", body[:200].decode(errors="replace")


def validate_instructions(document: Any) -> dict[str, Any]:
    """Check the shape of the instructions document. Pure.

    :raises AgentError: ``bad_instructions`` naming the field at fault.
    """

    def bad(field: str) -> AgentError:
        return AgentError("bad_instructions", f"the instructions have a missing or invalid {field}")

    if not isinstance(document, dict):
        raise bad("document")
    if document.get("action") == "erase":
        return document  # a wipe needs nothing but the disk
    image, config = document.get("image"), document.get("config")
    if not isinstance(image, dict) or not isinstance(config, dict):
        raise bad("image or config")
    if urlsplit(str(image.get("url", ""))).scheme not in ("http", "https"):
        raise bad("image.url")
    if not isinstance(image.get("sha256"), str) or not _SHA256.fullmatch(image["sha256"].lower()):
        raise bad("image.sha256")
    if image.get("format", "raw") != "raw":
        raise AgentError("unsupported_image_format", f"image format {image.get('format')!r} is not raw")
    if not isinstance(image.get("size"), int) or image["size"] <= 0:
        raise bad("image.size")
    if not isinstance(config.get("hostname"), str) or not _HOSTNAME.fullmatch(config["hostname"]):
        raise bad("config.hostname")
    keys = config.get("authorized_keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) and not _CONTROL.search(k) for k in keys):
        raise bad("config.authorized_keys")
    if not isinstance(config.get("network", {}), dict):
        raise bad("config.network")
    private = config.get("private_network")
    if private is not None and not (
        isinstance(private, dict)
        and isinstance(private.get("address"), str)
        and isinstance(private.get("prefix"), int)
        and isinstance(private.get("gateway"), str)
    ):
        raise bad("config.private_network")
    return document


# --- the kernel command line ------------------------------------------------------------------------


def parse_kernel_cmdline(text: str) -> dict[str, str]:
    """Parse ``key=value`` words of a kernel command line (``/proc/cmdline``). Pure."""
    params: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        params[key] = value
    return params


# --- LLDP: where the boot NIC is cabled -----------------------------------------------------------


def describe_lldp(heard: dict[str, Any]) -> str:
    """One line for a log: what LLDP heard on which interface. Pure."""
    where = f"on {heard.get('interface')}" if heard.get("interface") else "(no boot interface)"
    if heard.get("heard"):
        return f"LLDP {where}: switch {heard.get('switch')} port {heard.get('port')}"
    return f"LLDP {where}: nothing heard ({heard.get('reason') or 'no announcement'})"


def _interface_with_mac(mac: str, sys_class_net: Path) -> str | None:
    try:
        names = sorted(p.name for p in sys_class_net.iterdir())
    except OSError:
        return None
    for name in names:
        try:
            if (sys_class_net / name / "address").read_text().strip().lower() == mac:
                return name
        except OSError:
            continue
    return None


def _routed_interface(address: str, proc_net_route: Path) -> str | None:
    """The interface of the most specific IPv4 route to ``address`` in /proc/net/route (little-endian hex)."""
    target = int(ipaddress.IPv4Address(address))
    best: tuple[int, str] | None = None
    try:
        lines = proc_net_route.read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            destination = int.from_bytes(bytes.fromhex(fields[1]), "little")
            mask = int.from_bytes(bytes.fromhex(fields[7]), "little")
        except ValueError:
            continue
        if target & mask == destination and (best is None or mask > best[0]):
            best = (mask, fields[0])
    return best[1] if best else None


def boot_interface(
    params: dict[str, str],
    api_url: str,
    *,
    sys_class_net: Path = Path("/sys/class/net"),
    proc_net_route: Path = Path("/proc/net/route"),
) -> tuple[str | None, str]:
    """The boot NIC to listen for LLDP on, and how it was found (or, when None, why there is none).

    ``neocloud.lldp_interface=`` names it; else ``BOOTIF=01-aa-bb-cc-dd-ee-ff`` (pxelinux's and Ironic's
    convention) gives its MAC; else it is the interface the kernel routes the boot service's IPv4 address
    through. A boot service on this machine's own address (the lab's simulated servers run the agent on the
    host) means there is no boot NIC to listen on.
    """
    if params.get("neocloud.lldp_interface"):
        return params["neocloud.lldp_interface"], "named on the command line"
    bootif = params.get("BOOTIF", "").lower()
    if re.fullmatch(r"01-([0-9a-f]{2}-){5}[0-9a-f]{2}", bootif):
        mac = bootif[3:].replace("-", ":")
        name = _interface_with_mac(mac, sys_class_net)
        if name:
            return name, f"BOOTIF {mac}"
    host = urlsplit(api_url).hostname or ""
    try:
        address = str(socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0])
    except (OSError, IndexError):
        return None, f"the boot service's host {host!r} has no IPv4 address to find the boot NIC by"
    if ipaddress.IPv4Address(address).is_loopback or _is_own_address(address):
        return None, f"the boot service ({address}) is on this machine: no boot NIC to listen on"
    name = _routed_interface(address, proc_net_route)
    if name is None:
        return None, f"no route to the boot service ({address}) names an interface"
    return name, f"the route to the boot service ({address})"


def _is_own_address(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


class CablingProbe:
    """Listens for LLDP on the boot NIC from the agent's start, on a thread of its own, so that nothing waits
    for it unless the boot service asks for the cabling check. ``report(wait)`` is what the agent posts:
    ``{"heard": true, "switch", "port", "interface", "waited"}`` or ``{"heard": false, ..., "reason"}``."""

    def __init__(self, interface: str | None, timeout: float, reason: str = "") -> None:
        self.interface, self.timeout = interface, timeout
        self._reason = reason
        self._heard: lldp.LldpNeighbour | None = None
        self._started = time.monotonic()
        self._waited: float | None = None
        self._done = threading.Event()
        if interface is None or timeout <= 0:
            self._reason = reason if interface is None else "LLDP listening is off (neocloud.lldp_timeout=0)"
            self._finish()
            return
        try:
            sock = lldp.open_socket(interface)
        except OSError as exc:
            self._reason = f"cannot listen for LLDP on {interface}: {exc.strerror or exc}"
            self._finish()
            return
        log.info("listening for LLDP on %s for up to %.0f s (%s)", interface, timeout, reason)
        threading.Thread(target=self._listen, args=(sock,), name="agent-lldp", daemon=True).start()

    def _finish(self) -> None:
        self._waited = time.monotonic() - self._started
        self._done.set()

    def _listen(self, sock: Any) -> None:
        try:
            with sock:
                self._heard = lldp.receive(sock, self.timeout)
            if self._heard is None:
                self._reason = f"no LLDP announcement arrived on {self.interface} within {self.timeout:.0f} s"
        except OSError as exc:
            self._reason = f"listening for LLDP on {self.interface} failed: {exc.strerror or exc}"
        finally:
            self._finish()

    def report(self, wait: bool) -> dict[str, Any]:
        """What was heard. With ``wait``, once the listener heard a frame or gave up (at most its timeout)."""
        if wait:
            self._done.wait(self.timeout + 5)
        waited = self._waited if self._done.is_set() else time.monotonic() - self._started
        if self._heard is not None:
            return {**self._heard.as_report(), "interface": self.interface, "waited": round(waited or 0, 1)}
        reason = self._reason if self._done.is_set() else f"still listening on {self.interface}"
        return {
            "heard": False,
            "switch": None,
            "port": None,
            "interface": self.interface,
            "waited": round(waited or 0, 1),
            "reason": reason,
        }


# --- writing the image ------------------------------------------------------------------------------


def disk_size(disk_path: str) -> int:
    """Size in bytes of a disk (block device or file). Idempotent.

    :raises AgentError: ``disk_unavailable``.
    """
    try:
        fd = os.open(disk_path, os.O_RDONLY)
    except OSError as exc:
        raise AgentError("disk_unavailable", f"cannot open the disk {disk_path}: {exc.strerror}")
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def wipe_disk_markers(disk_path: str) -> None:
    """Zero the first MiB (partition table, file system superblock) and the config-drive area, fsync.
    Idempotent. Errors are logged, not raised: this runs on the failure path.
    """
    try:
        fd = os.open(disk_path, os.O_WRONLY)
    except OSError as exc:
        log.error("cannot open %s to wipe it: %s", disk_path, exc.strerror)
        return
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        os.pwrite(fd, bytes(min(WIPE_SIZE, size)), 0)
        if size >= CONFIG_DRIVE_SIZE * 2:
            os.pwrite(fd, bytes(CONFIG_DRIVE_SIZE), size - CONFIG_DRIVE_SIZE)
        os.fsync(fd)
    except OSError as exc:
        log.error("wiping %s failed: %s", disk_path, exc.strerror)
    finally:
        os.close(fd)


def _open_image(url: str, timeout: float) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.netloc, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    conn.request("GET", path, headers={"Accept-Encoding": "identity"})
    return conn, conn.getresponse()


@dataclasses.dataclass
class WriteOutcome:
    sha256: str
    bytes_written: int


def hash_on_its_own_thread() -> bool:
    """Whether a second thread should hash while this one receives: only where a core is free for it.

    A real deploy ramdisk has the server's many cores to itself, and hashing on a second thread streams
    a third faster than hashing and receiving on one (one agent on a 2-core VM: 1080-1180 vs 710-800 MiB/s).
    Where there are only a few CPUs for everything (the lab: ten simulated servers' agents on a 2-core
    machine), the hand-off between the two threads costs more than it overlaps, and a 4 MiB chunk has left
    the CPU's cache by the time the other thread hashes it: there hashing each piece on the receiving
    thread right after it arrived streamed 10-17 % more with 15 % less CPU (ten agents, 2 cores, measured).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus >= HASH_THREAD_MIN_CPUS


def stream_image_to_disk(
    url: str,
    disk_path: str,
    expected_size: int,
    progress: Callable[[int], None] | None = None,
    *,
    chunk_size: int = CHUNK_SIZE,
    timeout: float = 60.0,
    corrupt_offset: int | None = None,
    hash_thread: bool | None = None,
) -> WriteOutcome:
    """Stream ``url`` onto the disk from offset 0, hashing while writing; fsync; return the sha256.

    ``PIPELINE_DEPTH`` buffers of ``chunk_size`` are in flight: this thread receives, ``WRITES_IN_FLIGHT``
    threads write whole chunks (sha256, recv and write release the GIL). Who hashes depends on
    ``hash_thread`` (default: ``hash_on_its_own_thread()``): a thread of its own, a chunk behind the
    receiving one, or this thread, each ``RECV_PIECE`` as it arrives.
    Idempotent (rewrites from the start). ``progress`` gets the bytes written so far.

    :raises AgentError: ``image_too_large`` (does not fit before the config-drive area),
        ``image_size_mismatch`` (Content-Length or received bytes differ from ``expected_size``),
        ``image_download_failed``, ``disk_write_failed``.
    """
    room = disk_size(disk_path) - CONFIG_DRIVE_SIZE
    if expected_size > room:
        raise AgentError(
            "image_too_large",
            f"the image ({expected_size} bytes) does not fit on the disk "
            f"({room} bytes before the config drive)",
        )
    try:
        conn, response = _open_image(url, timeout)
    except (OSError, http.client.HTTPException) as exc:
        raise AgentError("image_download_failed", f"cannot fetch the image from {url}: {exc}")
    try:
        if response.status != 200:
            raise AgentError(
                "image_download_failed", f"the image server answered HTTP {response.status} for {url}"
            )
        length = response.getheader("Content-Length")
        if length is None or not length.isdigit() or int(length) != expected_size:
            raise AgentError(
                "image_size_mismatch",
                f"the image server announced {length} bytes, the instructions {expected_size}",
            )
        if hash_thread is None:
            hash_thread = hash_on_its_own_thread()
        return _pipeline(
            response, disk_path, expected_size, progress, chunk_size, corrupt_offset, hash_thread
        )
    finally:
        conn.close()


class _DiskWriter:
    """Writes to the target disk at given offsets, with O_DIRECT where the disk takes it.

    O_DIRECT (what ironic-python-agent's and MAAS's image writers use too) skips the page cache: no second
    copy of every byte in memory and no writeback storm at the final fsync. Whole aligned chunks go direct;
    the image's unaligned tail, and everything on a file system without O_DIRECT (tmpfs), go through the
    page cache. Thread-safe: pwrite at explicit offsets.
    """

    def __init__(self, disk_path: str, chunk_size: int) -> None:
        self.direct_fd: int | None = None
        if chunk_size % DIRECT_ALIGN == 0 and hasattr(os, "O_DIRECT"):
            try:
                self.direct_fd = os.open(disk_path, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                self.direct_fd = None  # not supported by this file system: buffered
        # O_WRONLY without O_TRUNC: a file-backed disk must keep its size (and a block device cannot).
        self.buffered_fd = os.open(disk_path, os.O_WRONLY)

    def pwrite(self, view: memoryview, offset: int) -> None:
        fd = self.buffered_fd
        direct = self.direct_fd
        if direct is not None and len(view) % DIRECT_ALIGN == 0 and offset % DIRECT_ALIGN == 0:
            fd = direct
        done = 0
        while done < len(view):
            try:
                done += os.pwrite(fd, view[done:], offset + done)
            except OSError as exc:
                if fd != direct or exc.errno != errno.EINVAL:
                    raise
                fd = self.buffered_fd  # O_DIRECT refused at write time after all: this chunk buffered

    def fsync(self) -> None:
        for fd in (self.direct_fd, self.buffered_fd):
            if fd is not None:
                os.fsync(fd)

    def close(self) -> None:
        for fd in (self.direct_fd, self.buffered_fd):
            if fd is not None:
                os.close(fd)


def _pipeline(
    response: http.client.HTTPResponse,
    disk_path: str,
    expected_size: int,
    progress: Callable[[int], None] | None,
    chunk_size: int,
    corrupt_offset: int | None,
    hash_thread: bool,
) -> WriteOutcome:
    try:
        disk = _DiskWriter(disk_path, chunk_size)
    except OSError as exc:
        raise AgentError("disk_write_failed", f"cannot open the disk {disk_path} for writing: {exc.strerror}")
    digest = hashlib.sha256()
    free: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(PIPELINE_DEPTH):
        free.put(mmap.mmap(-1, chunk_size))  # anonymous mmap: page-aligned, as O_DIRECT needs
    written = 0
    written_lock = threading.Lock()
    write_error: list[OSError] = []
    disks = ThreadPoolExecutor(WRITES_IN_FLIGHT, thread_name_prefix="agent-disk")

    def write_chunk(buf: mmap.mmap, n: int, offset: int) -> None:
        nonlocal written
        view = memoryview(buf)[:n]
        try:
            if not write_error:
                disk.pwrite(view, offset)
                with written_lock:
                    written += n
                    if progress is not None:
                        progress(written)
        except OSError as exc:
            write_error.append(exc)
        finally:
            view.release()
            free.put(buf)

    # With a hash thread, received chunks go to it and it hands them on to the disks.
    received_chunks: queue.Queue[tuple[mmap.mmap, int, int] | None] = queue.Queue()

    def hasher() -> None:
        while (item := received_chunks.get()) is not None:
            buf, n, offset = item
            if write_error:
                free.put(buf)
                continue
            with memoryview(buf) as view:
                digest.update(view[:n])
            disks.submit(write_chunk, buf, n, offset)

    thread = threading.Thread(target=hasher, name="agent-hasher", daemon=True)
    if hash_thread:
        thread.start()
    piece = chunk_size if hash_thread else RECV_PIECE
    received = 0
    try:
        while received < expected_size and not write_error:
            buf = free.get()
            limit = min(chunk_size, expected_size - received)
            view = memoryview(buf)
            n = 0
            try:
                while n < limit:
                    got = response.readinto(view[n : min(limit, n + piece)])
                    if not got:
                        break
                    if corrupt_offset is not None and received + n <= corrupt_offset < received + n + got:
                        buf[corrupt_offset - received] ^= 0xFF
                    if not hash_thread:
                        digest.update(view[n : n + got])
                    n += got
            except (OSError, http.client.HTTPException) as exc:
                free.put(buf)
                raise AgentError(
                    "image_download_failed", f"the image download broke after {received + n} bytes: {exc}"
                )
            finally:
                view.release()
            if n == 0:
                free.put(buf)
                break
            if hash_thread:
                received_chunks.put((buf, n, received))
            else:
                disks.submit(write_chunk, buf, n, received)
            received += n
    finally:
        if hash_thread:
            received_chunks.put(None)
            thread.join()
        disks.shutdown(wait=True)
        try:
            if not write_error:
                disk.fsync()
        except OSError as exc:
            write_error.append(exc)
        disk.close()
    if write_error:
        raise AgentError(
            "disk_write_failed",
            f"writing the image to {disk_path} failed after {written} bytes: {write_error[0]}",
        )
    if received != expected_size:
        raise AgentError(
            "image_size_mismatch", f"the image stream ended after {received} of {expected_size} bytes"
        )
    return WriteOutcome(digest.hexdigest(), written)


# --- SSH host keys ----------------------------------------------------------------------------------


def fingerprint(public_line: str) -> str:
    """The ``ssh-keygen -lf`` fingerprint of a public key line: ``SHA256:`` + unpadded base64. Pure.

    :raises ValueError: the line has no base64 key blob.
    """
    parts = public_line.split()
    if len(parts) < 2:
        raise ValueError("a public key line is '<type> <base64> [comment]'")
    blob = base64.b64decode(parts[1], validate=True)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def generate_host_keys(comment: str) -> dict[str, dict[str, str]]:
    """Fresh SSH host keys, one per type in ``HOST_KEY_TYPES``, keyed by the public key type
    (``ssh-ed25519``, ``ecdsa-sha2-nistp256``, ``ssh-rsa``): ``{"private": ..., "public": ...}``.
    Not idempotent (new keys each call). The keys are generated concurrently.

    :raises AgentError: ``host_key_generation_failed`` (ssh-keygen missing or failed).
    """
    keys: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="neocloud-hostkeys-") as tmp:
        procs = []
        for kind, extra in HOST_KEY_TYPES:
            path = Path(tmp) / f"ssh_host_{kind}_key"
            cmd = ["ssh-keygen", "-q", "-N", "", "-t", kind, *extra, "-C", comment, "-f", str(path)]
            try:
                procs.append(
                    (kind, path, subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE))
                )
            except OSError as exc:
                raise AgentError("host_key_generation_failed", f"cannot run ssh-keygen: {exc.strerror}")
        for kind, path, proc in procs:
            _, stderr = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise AgentError(
                    "host_key_generation_failed",
                    f"ssh-keygen -t {kind} failed: {stderr.decode().strip()[:200]}",
                )
            public = path.with_suffix(".pub").read_text().strip()
            keys[public.split()[0]] = {"private": path.read_text(), "public": public}
    return keys


# --- the deploy -----------------------------------------------------------------------------------


class ProgressReporter:
    """Reports progress of one stage from its own thread, at most every 5 % or 2 s.

    The writer only records the byte count (``reporter(written)``) and never waits: each report is an HTTP
    round trip to the boot service, and when that was done on the write path the agents of a busy control
    plane wrote at 18 MiB/s instead of 500 (measured; a slow control plane must not slow the disks). Reports
    that fall due while one is in flight collapse into the newest, and at most one goes out per
    ``min_interval`` seconds (ten agents reporting every 5% of a fast write cost the boot service ~200
    requests in a few seconds, CPU the agents then missed). ``close()`` sends the last one.
    """

    def __init__(
        self, api: AgentApi, stage: str, total: int, every_percent: int = 5, min_interval: float = 1.0
    ) -> None:
        self.api, self.stage, self.total, self.every = api, stage, max(total, 1), every_percent
        self.min_interval = min_interval
        self._written = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"agent-progress-{stage}", daemon=True)
        self._thread.start()

    def __call__(self, written: int) -> None:
        with self._cond:
            self._written = written
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=self.api.timeout + 5)

    def _percent(self) -> int:
        return min(100, self._written * 100 // self.total)

    def _ready(self, threshold: int) -> bool:
        return self._closed or self._percent() >= threshold

    def _closing(self) -> bool:
        return self._closed

    def _run(self) -> None:
        last_percent, last_time = 0, time.monotonic()
        while True:
            with self._cond:
                self._cond.wait_for(functools.partial(self._ready, last_percent + self.every), timeout=2.0)
                rest = self.min_interval - (time.monotonic() - last_time)
                if rest > 0:
                    self._cond.wait_for(self._closing, timeout=rest)
                closed, written, percent = self._closed, self._written, self._percent()
            due = percent >= last_percent + self.every or (
                time.monotonic() - last_time >= 2 and percent != last_percent
            )
            if due or (closed and percent != last_percent):
                last_percent, last_time = percent, time.monotonic()
                log.info("stage=%s percent=%d bytes=%d", self.stage, percent, written)
                self.api.post_progress(self.stage, percent, f"{written} of {self.total} bytes")
            if closed:
                return


class _CrashAfter:
    """Fault injection: SIGKILL this process once ``limit`` bytes are written (see the module doc)."""

    def __init__(self, inner: Callable[[int], None], limit: int) -> None:
        self.inner, self.limit = inner, limit

    def __call__(self, written: int) -> None:
        self.inner(written)
        if written >= self.limit:
            log.error("fault injection: the agent crashes after %d bytes", written)
            logging.shutdown()
            os.kill(os.getpid(), signal.SIGKILL)


def deploy(
    api: AgentApi,
    disk_path: str,
    *,
    corrupt_offset: int | None = None,
    crash_after: int | None = None,
    cabling: CablingProbe | None = None,
) -> int:
    """Run the whole deploy against the boot service and return the process exit code.

    Not idempotent: it spends the one-time token. Never raises for deploy failures: they are
    reported to the boot service (``status: failed``) and give exit code 1. ``cabling`` is the LLDP
    listener started with the agent (none: nothing is listened for, and a cabling check hears nothing).
    """
    if cabling is None:
        cabling = CablingProbe(None, 0, "the agent was started without an LLDP listener")
    try:
        instructions = api.get_instructions()
    except AgentError as exc:
        log.error("no instructions (%s): %s", exc.code, exc)
        if exc.code in ("bad_instructions", "unsupported_image_format"):
            # The token was good: say why, so the engine fails now instead of at its timeout. Disk untouched.
            try:
                api.post_result(
                    {"status": "failed", "error_code": exc.code, "message": str(exc), "bytes_written": 0}
                )
            except AgentError as report:
                log.error("%s", report)
        return EXIT_NO_INSTRUCTIONS
    if instructions.get("action") == "erase":
        code = erase(api, disk_path)
        fast_track = instructions.get("fast_track")
        if code == EXIT_OK and isinstance(fast_track, dict):
            return stay_up(
                api,
                disk_path,
                float(fast_track.get("heartbeat_seconds") or 10.0),
                corrupt_offset=corrupt_offset,
                crash_after=crash_after,
                cabling=cabling,
            )
        return code
    if instructions.get("cabling_check") is True:
        # Before anything touches the disk or the image is fetched: a server cabled to another port than
        # the one recorded must not be deployed (its port's VLAN moves would put another server on it).
        heard = cabling.report(wait=True)
        log.info("%s; asking the boot service to check the cabling", describe_lldp(heard))
        try:
            api.report_cabling(heard)
        except AgentError as exc:
            log.error("deploy stopped before the image (%s): %s", exc.code, exc)
            if exc.code not in CABLING_REFUSALS:  # the boot service did not record it: say why
                try:
                    api.post_result(
                        {"status": "failed", "error_code": exc.code, "message": str(exc), "lldp": heard}
                    )
                except AgentError as report:
                    log.error("%s", report)
            return EXIT_DEPLOY_FAILED
    image, config = instructions["image"], instructions["config"]
    expected_sha = image["sha256"].lower()
    log.info("deploying %s (%d bytes, sha256 %s) to %s", image["url"], image["size"], expected_sha, disk_path)
    outcome = WriteOutcome("", 0)
    try:
        api.post_progress("download", 0, f"streaming {image['size']} bytes from {image['url']}")
        # A reimage must never leave the previous deploy's config drive behind a half-written image.
        wipe_disk_markers(disk_path)
        started = time.monotonic()
        reporter = ProgressReporter(api, "write", image["size"])
        progress: Callable[[int], None] = reporter
        if crash_after is not None:
            progress = _CrashAfter(progress, crash_after)
        try:
            outcome = stream_image_to_disk(
                image["url"], disk_path, image["size"], progress, corrupt_offset=corrupt_offset
            )
            # The image is on the disk (fsynced): the write stage ends here, before close() waits for the
            # last progress report's round trip to the boot service (about 0.1 s on a busy one, measured).
            log.info(
                "stage=write done bytes=%d seconds=%.3f", outcome.bytes_written, time.monotonic() - started
            )
        finally:
            reporter.close()
        api.post_progress("verify", 100, "checking the sha256 of the written image")
        if outcome.sha256 != expected_sha:
            raise AgentError(
                "image_checksum_mismatch",
                f"the image's sha256 is {outcome.sha256}, expected {expected_sha}: the image or its transfer "
                "is corrupt; the disk was wiped",
            )
        api.post_progress("configdrive", 0, "generating host keys and writing the config drive")
        host_keys = generate_host_keys(f"root@{config['hostname']}")
        document = {
            "hostname": config["hostname"],
            "authorized_keys": list(config.get("authorized_keys", [])),
            "host_keys": host_keys,
            "network": dict(config.get("network", {})),
            **({"private_network": dict(config["private_network"])} if config.get("private_network") else {}),
            "image": {"url": image["url"], "sha256": expected_sha, "size": image["size"]},
            "node": instructions.get("node"),
            "deployed_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            # the deployed OS applies its per-instance data (keys, network) at this instance's first boot only
            "instance_id": uuid.uuid4().hex,
        }
        try:
            write_config_drive(disk_path, document)
        except (OSError, ConfigDriveError) as exc:
            raise AgentError("configdrive_failed", f"writing the config drive failed: {exc}")
        api.post_progress("configdrive", 100, "config drive written")
    except Exception as raised:  # whatever it was, the boot service hears it now
        if isinstance(raised, AgentError):
            failure = raised
        else:  # a bug or a failure nobody foresaw: without a report the engine would wait out its timeout
            log.exception("deploy failed unexpectedly")
            failure = AgentError(
                "agent_failed", f"the deploy agent failed: {type(raised).__name__}: {raised}"
            )
        log.error("deploy failed (%s): %s", failure.code, failure)
        try:
            wipe_disk_markers(disk_path)
        except OSError as wipe_error:  # the disk itself may be what failed: report anyway
            log.error("could not wipe the disk's first MiB and config drive: %s", wipe_error)
        try:
            api.post_result(
                {
                    "status": "failed",
                    "error_code": failure.code,
                    "message": str(failure),
                    "sha256": outcome.sha256,
                    "bytes_written": outcome.bytes_written,
                    "host_keys": {},
                    "host_key_fingerprints": {},
                    "lldp": cabling.report(wait=False),
                }
            )
        except AgentError as report:
            log.error("%s", report)
        return EXIT_DEPLOY_FAILED
    publics = {kind: pair["public"] for kind, pair in host_keys.items()}
    result = {
        "status": "ok",
        "error_code": None,
        "message": f"image written ({outcome.bytes_written} bytes) and config drive written",
        "sha256": outcome.sha256,
        "bytes_written": outcome.bytes_written,
        "host_keys": publics,
        "host_key_fingerprints": {kind: fingerprint(line) for kind, line in publics.items()},
        "lldp": cabling.report(wait=False),
    }
    try:
        api.post_result(result)
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_REPORT_FAILED
    log.info("deploy done")
    return EXIT_OK


ERASE_CHUNK = 4 * 1024 * 1024


def erase(api: AgentApi, disk_path: str) -> int:
    """Overwrite the whole disk with zeros (config drive included), fsync, and report. Idempotent.

    A real site would add the drive's own secure erase (NVMe format/sanitize) here; zeros written
    through the block layer are what every drive supports.
    """
    try:
        size = disk_size(disk_path)
        api.post_progress("erase", 0, f"overwriting {size} bytes with zeros")
        zeros = bytes(ERASE_CHUNK)
        fd = os.open(disk_path, os.O_WRONLY)
        reporter = ProgressReporter(api, "erase", size, every_percent=25)
        try:
            written = 0
            while written < size:
                written += os.pwrite(fd, zeros[: min(ERASE_CHUNK, size - written)], written)
                reporter(written)
            os.fsync(fd)
        finally:
            os.close(fd)
            reporter.close()
    except (OSError, AgentError) as exc:
        code = exc.code if isinstance(exc, AgentError) else "disk_write_failed"
        log.error("erase failed: %s", exc)
        # The overwrite stopped part way: the config drive at the disk's end (the last tenant's keys, its
        # host private keys) must not outlive a failed wipe.
        wipe_disk_markers(disk_path)
        try:
            api.post_result(
                {"status": "failed", "error_code": code, "message": f"erasing the disk failed: {exc}"}
            )
        except AgentError as report:
            log.error("%s", report)
        return EXIT_DEPLOY_FAILED
    try:
        api.post_result(
            {
                "status": "ok",
                "error_code": None,
                "message": f"disk overwritten ({written} bytes)",
                "bytes_written": written,
            }
        )
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_REPORT_FAILED
    log.info("erase done (%d bytes)", written)
    return EXIT_OK


def lldp_timeout(params: dict[str, str], given: float | None) -> float:
    """``neocloud.lldp_timeout=`` (seconds) from the kernel command line, else ``given``, else
    ``LLDP_TIMEOUT``. A value that is not a number of seconds from 0 to 600 is logged and ignored: a typo on
    the command line must not stop the deploy."""
    text = params.get("neocloud.lldp_timeout")
    if text is None:
        return LLDP_TIMEOUT if given is None else given
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 600:
        log.warning(
            "neocloud.lldp_timeout=%s is not a number of seconds from 0 to 600; using %s", text, LLDP_TIMEOUT
        )
        return LLDP_TIMEOUT
    return value


def stay_up(
    api: AgentApi,
    disk_path: str,
    interval: float,
    *,
    corrupt_offset: int | None = None,
    crash_after: int | None = None,
    cabling: CablingProbe | None = None,
) -> int:
    """Fast-track: after a wipe, stay up in the ramdisk and heartbeat until the boot service hands over the
    next ticket (then run it: a deploy streams at once, no power cycle) or ends the fast-track (exit 0, the
    control plane powers the server off). A boot service that does not answer is asked again at the next
    heartbeat: the control plane, not the agent, decides when waiting has lasted too long."""
    log.info("fast-track: staying up, heartbeating every %.1f s", interval)
    while True:
        try:
            answer = api.heartbeat()
        except AgentError as exc:
            log.warning("heartbeat failed: %s", exc)
            time.sleep(interval)
            continue
        if answer is None:
            log.info("fast-track ended by the boot service")
            return EXIT_OK
        if answer.get("action") == "run" and isinstance(answer.get("token"), str):
            log.info("fast-track: a new ticket; running it without a reboot")
            return deploy(
                AgentApi(api.base_url, answer["token"], api.timeout),
                disk_path,
                corrupt_offset=corrupt_offset,
                crash_after=crash_after,
                cabling=cabling,  # what LLDP heard on this NIC since the agent started
            )
        try:
            pause = float(answer.get("interval") or interval)
        except (TypeError, ValueError):
            pause = interval
        time.sleep(min(max(pause, 0.1), 300.0))


def _resolve_arguments(args: argparse.Namespace) -> tuple[str, str, dict[str, str]]:
    params = parse_kernel_cmdline(Path(args.cmdline).read_text()) if args.cmdline else {}
    api = args.api or params.get("neocloud.api", "")
    token = args.token or ""
    if not token and args.token_file:
        token = Path(args.token_file).read_text().strip()
    token = token or os.environ.get("NEOCLOUD_TOKEN", "") or params.get("neocloud.token", "")
    if not api or not token:
        raise SystemExit(
            "the agent needs --api and a token (--token, --token-file, NEOCLOUD_TOKEN or --cmdline)"
        )
    return api, token, params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Neocloud deploy agent")
    parser.add_argument("--api", help="agent API base URL (neocloud.api= on the kernel command line)")
    parser.add_argument("--token", help="one-time token (prefer --token-file or NEOCLOUD_TOKEN)")
    parser.add_argument("--token-file")
    parser.add_argument("--cmdline", help="a kernel command line file such as /proc/cmdline")
    parser.add_argument("--disk", required=True, help="the target disk (block device or file)")
    parser.add_argument("--lldp-interface", help="listen for LLDP here (neocloud.lldp_interface=)")
    parser.add_argument(
        "--lldp-timeout",
        type=float,
        help=f"seconds to listen for LLDP (neocloud.lldp_timeout=, default {LLDP_TIMEOUT:.0f})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s agent %(levelname)s %(message)s", stream=sys.stderr
    )
    api_url, token, params = _resolve_arguments(args)
    if args.lldp_interface:
        params = {**params, "neocloud.lldp_interface": args.lldp_interface}
    # Listening starts now, while the instructions are fetched: a switch may take its full interval to speak.
    interface, found_by = boot_interface(params, api_url)
    cabling = CablingProbe(interface, lldp_timeout(params, args.lldp_timeout), found_by)
    try:
        api = AgentApi(api_url, token)
    except AgentError as exc:
        log.error("%s", exc)
        return EXIT_NO_INSTRUCTIONS
    corrupt = os.environ.get("NEOCLOUD_FAULT_CORRUPT_OFFSET")
    crash = os.environ.get("NEOCLOUD_FAULT_CRASH_AFTER_BYTES")
    return deploy(
        api,
        args.disk,
        corrupt_offset=int(corrupt) if corrupt else None,
        crash_after=int(crash) if crash else None,
        cabling=cabling,
    )


if __name__ == "__main__":
    sys.exit(main())
