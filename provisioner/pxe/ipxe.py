"""iPXE scripts for network boot: render what ``GET /boot/<mac>.ipxe`` answers, and parse it back.

The boot service answers a node that has a deployment pending with a script that loads the deploy
ramdisk and passes it the agent API and a one-time token on the kernel command line::

    #!ipxe
    kernel <base>/boot/deploy/vmlinuz neocloud.api=<base>/boot/api neocloud.token=<TOKEN> \
        neocloud.node=<NAME> console=ttyS0      (one line)
    initrd <base>/boot/deploy/initrd.img
    boot

A node with nothing pending gets a script that ``exit``s, so the firmware goes on to its next boot
device (the local disk). The lab firmware (lab.firmware) parses these scripts with
``parse_ipxe_script`` exactly as far as iPXE would for these commands.

MAC addresses in boot URLs: our canonical form is lower-case colon-separated (``52:54:00:12:34:56``).
iPXE's ``${mac:hexhyp}`` gives the hyphen form (``52-54-00-12-34-56``), which is what the generated
dnsmasq configuration chain-loads (no ``:`` in a URL path, so nothing for iPXE to percent-encode);
``normalize_mac`` accepts both (and ``%3A``-free upper case), so the boot view calls it on the URL part.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from urllib.parse import urlsplit

KERNEL_PATH = "/boot/deploy/vmlinuz"
INITRD_PATH = "/boot/deploy/initrd.img"
API_PATH = "/boot/api"

# Checked with ``fullmatch``: ``$`` alone also matches before a final newline, which would end a line early.
# A token travels on a kernel command line and in an HTTP header: URL-safe characters only.
_TOKEN = re.compile(r"^[A-Za-z0-9._~-]{16,256}$")
# A node name is a hostname label-ish slug; it ends up on the kernel command line.
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
# Characters that would break out of an iPXE command line or a kernel argument, or start an iPXE
# setting expansion (${...}) in a URL we did not mean to expand.
_URL_FORBIDDEN = re.compile(r"[\s\"'\\${}<>`|;#]")
_MAC = re.compile(r"^[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}$")
_CONSOLE = re.compile(r"^[A-Za-z0-9,]{1,32}$")


class IpxeScriptError(ValueError):
    """An input to an iPXE script is unsafe or malformed, or a script could not be understood."""


@dataclasses.dataclass(frozen=True)
class IpxeScript:
    """What a parsed boot script asks the firmware to do."""

    kernel_url: str | None
    kernel_args: tuple[str, ...]
    initrd_urls: tuple[str, ...]
    boots: bool  # the script ends with ``boot`` (load and run the kernel)
    exits: bool  # the script ``exit``s: the firmware tries its next boot device

    def kernel_params(self) -> dict[str, str]:
        """The ``key=value`` kernel arguments as a dict (flags without ``=`` map to "")."""
        params: dict[str, str] = {}
        for arg in self.kernel_args:
            key, _, value = arg.partition("=")
            params[key] = value
        return params


def normalize_mac(mac: str) -> str:
    """Return the canonical lower-case colon form of a MAC given with ``:`` or ``-``. Pure.

    :raises IpxeScriptError: not a 48-bit MAC address in one of those forms.
    """
    candidate = mac.strip().lower()
    if not _MAC.fullmatch(candidate):
        raise IpxeScriptError(
            f"{mac!r} is not a MAC address (expected six hex pairs separated by ':' or '-')"
        )
    return candidate.replace("-", ":")


def validate_base_url(base_url: str) -> str:
    """Check an http(s) base URL (no query, no fragment) and return it without a trailing slash. Pure.

    :raises IpxeScriptError: unsafe characters (spaces, newlines, quotes, ``$``) or not an http(s) URL.
    """
    if not base_url or _URL_FORBIDDEN.search(base_url):
        raise IpxeScriptError("the boot base URL is empty or contains spaces, newlines or shell/iPXE syntax")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise IpxeScriptError(
            "the boot base URL must be http(s)://host[:port][/path] without query or fragment"
        )
    return base_url.rstrip("/")


def validate_token(token: str) -> str:
    """Check a one-time boot token (16-256 URL-safe characters). Pure. The message never echoes it.

    :raises IpxeScriptError:
    """
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise IpxeScriptError("the boot token must be 16-256 characters from [A-Za-z0-9._~-]")
    return token


def validate_node_name(name: str) -> str:
    """Check a node name for the kernel command line. Pure.

    :raises IpxeScriptError:
    """
    if not _NODE_NAME.fullmatch(name or ""):
        raise IpxeScriptError(f"node name {name!r} must be 1-63 characters from [A-Za-z0-9._-]")
    return name


def render_ipxe_script(base_url: str, token: str, node_name: str, *, console: str = "ttyS0") -> str:
    """The iPXE script that boots the deploy ramdisk for one pending deployment. Pure.

    ``base_url`` is how the node reaches the boot service (e.g. ``http://10.0.0.1:8000``); the kernel,
    initrd and agent API URLs are derived from it.

    :raises IpxeScriptError: an input is unsafe (whitespace, newline, quotes, ``$``...) or malformed.
    """
    base = validate_base_url(base_url)
    validate_token(token)
    validate_node_name(node_name)
    if not _CONSOLE.fullmatch(console):
        raise IpxeScriptError(
            f"console {console!r} must be a plain device name such as ttyS0 or ttyS0,115200"
        )
    kernel_args = [
        f"neocloud.api={base}{API_PATH}",
        f"neocloud.token={token}",
        f"neocloud.node={node_name}",
        f"console={console}",
    ]
    return f"#!ipxe\nkernel {base}{KERNEL_PATH} {' '.join(kernel_args)}\ninitrd {base}{INITRD_PATH}\nboot\n"


def render_local_boot_script() -> str:
    """The iPXE script for a node with no deployment pending: exit so the firmware boots the disk. Pure."""
    return "#!ipxe\necho Neocloud: no deployment pending, booting from local disk\nexit\n"


BOOT_RETRY_SECONDS = 5


def render_retry_script(script_url: str, why: str) -> str:
    """The iPXE script for a boot service that cannot answer now (its database restarting): wait and fetch
    the same script again, instead of a failure that sends the firmware on to its next boot device (a disk
    with nothing to boot, where the node would sit until the engine's wait gives up). Pure."""
    return f"#!ipxe\necho Neocloud: {why}; trying again in {BOOT_RETRY_SECONDS} s\nsleep {BOOT_RETRY_SECONDS}\nchain --replace --autofree {script_url}\n"


def is_chained_script(url: str) -> bool:
    """Whether a ``chain`` target is another iPXE script of the boot service (a retry), not a kernel. Pure."""
    return url.split("?", 1)[0].endswith(".ipxe")


def parse_ipxe_script(text: str) -> IpxeScript:
    """Parse the subset of iPXE script we render: ``kernel``/``chain``, ``initrd``, ``boot``, ``exit``,
    ``echo`` and comments. Pure.

    :raises IpxeScriptError: not an iPXE script, or a command outside that subset.
    """
    lines = text.splitlines()
    if not lines or not lines[0].strip().startswith("#!ipxe"):
        raise IpxeScriptError("not an iPXE script (the first line must be #!ipxe)")
    kernel_url: str | None = None
    kernel_args: tuple[str, ...] = ()
    initrds: list[str] = []
    boots = exits = False
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith(":"):
            continue
        try:
            words = shlex.split(line, comments=False, posix=True)
        except ValueError as exc:
            raise IpxeScriptError(f"line {number}: {exc}") from exc
        command, args = words[0], words[1:]
        # Options such as --name come before the URL in iPXE's image commands.
        positional = [a for a in args if not a.startswith("--")]
        if command in ("kernel", "chain", "imgexec"):
            if not positional:
                raise IpxeScriptError(f"line {number}: {command} needs a URL")
            kernel_url, kernel_args = positional[0], tuple(positional[1:])
            if command in ("chain", "imgexec"):
                boots = True
        elif command in ("initrd", "module"):
            if not positional:
                raise IpxeScriptError(f"line {number}: initrd needs a URL")
            initrds.append(positional[0])
        elif command == "boot":
            boots = True
        elif command in ("exit", "sanboot"):
            # ``sanboot`` with no device is another common way of saying "boot the local disk".
            exits = True
            break
        elif command in ("echo", "sleep", "prompt"):
            continue
        else:
            raise IpxeScriptError(f"line {number}: unsupported iPXE command {command!r}")
        if boots:
            break
    return IpxeScript(kernel_url, kernel_args, tuple(initrds), boots, exits)
