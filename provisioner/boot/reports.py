"""What the deploy agent may report, checked before it is stored, and what the engine accepts as a deploy.

The agent's token proves only that the reporter booted with this ticket's script: its reports are input
like any other. ``clean_progress`` and ``clean_result`` keep the fields the engine reads, of the types
and sizes it expects, and refuse anything else with a sentence (the view answers 400). ``verify_deployed``
is the engine's own check of an "ok": the image it asked for, every byte of it, and host keys whose
fingerprints it computes itself rather than believes.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from provisioner.sshkeys import fingerprint_sha256

# Bigger than any honest report (three host keys, a sentence): the view refuses larger bodies unread.
MAX_REPORT_BYTES = 64 * 1024
MAX_MESSAGE_CHARS = 4000
_CODE = re.compile(r"[a-z0-9_]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STAGE = re.compile(r"[a-z_]{1,32}")
HOST_KEY_TYPES = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
)
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")


class ReportError(ValueError):
    """A report the boot service does not store; the message says what is wrong with it."""


def _int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ReportError(f"{field} must be a whole number of at least 0")
    return value


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReportError(f"{field} must be a string")
    return value[:MAX_MESSAGE_CHARS]


MAX_LLDP_NAME = 255
MAX_LLDP_REASON = 500


def _lldp_name(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_LLDP_NAME or not value.isprintable():
        raise ReportError(f"lldp.{field} must be a name of at most {MAX_LLDP_NAME} printable characters")
    return value


def clean_lldp(value: Any) -> dict[str, Any]:
    """What the agent heard by LLDP on its boot NIC: ``heard`` (true or false), ``switch``, ``port``,
    ``interface`` (names or null), ``waited`` (seconds), ``reason`` / ``problem`` (why nothing, or what was
    wrong with the frame). Raises ReportError naming the field at fault."""
    if not isinstance(value, dict):
        raise ReportError('lldp must be an object such as {"heard": true, "switch": "leaf1", "port": "swp3"}')
    heard = value.get("heard")
    if not isinstance(heard, bool):
        raise ReportError("lldp.heard must be true or false")
    cleaned: dict[str, Any] = {"heard": heard}
    for field in ("switch", "port", "interface"):
        cleaned[field] = _lldp_name(value.get(field), field)
    waited = value.get("waited")
    if waited is not None:
        if isinstance(waited, bool) or not isinstance(waited, int | float) or not 0 <= waited <= 86400:
            raise ReportError("lldp.waited must be a number of seconds")
        cleaned["waited"] = waited
    for field in ("reason", "problem"):
        text = _text(value.get(field), f"lldp.{field}")
        if text:
            cleaned[field] = text[:MAX_LLDP_REASON]
    return cleaned


def clean_progress(body: dict[str, Any]) -> dict[str, Any]:
    stage, percent = body.get("stage"), body.get("percent")
    if not isinstance(stage, str) or not _STAGE.fullmatch(stage):
        raise ReportError("stage must be a short lower-case word such as write")
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise ReportError("percent must be a whole number from 0 to 100")
    cleaned = {"stage": stage, "percent": percent, "message": _text(body.get("message"), "message")}
    if body.get("lldp") is not None:
        cleaned["lldp"] = clean_lldp(body["lldp"])
    return cleaned


def _host_key_blob(kind: str, line: Any) -> bytes:
    if not isinstance(line, str) or len(line) > 4096:
        raise ReportError(f"host key {kind!r} must be one public key line")
    parts = line.split()
    if len(parts) < 2 or parts[0] not in HOST_KEY_TYPES:
        raise ReportError(f"host key {kind!r} is not an SSH public key of a known type")
    try:
        return base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise ReportError(f"host key {kind!r} is not valid base64") from None


def clean_result(body: dict[str, Any]) -> dict[str, Any]:
    status = body.get("status")
    if status not in ("ok", "failed"):
        raise ReportError("result must be a JSON object with status ok or failed")
    code = body.get("error_code")
    if code is not None and (not isinstance(code, str) or not _CODE.fullmatch(code)):
        raise ReportError("error_code must be a short lower-case code such as disk_write_failed")
    cleaned: dict[str, Any] = {
        "status": status,
        "error_code": code,
        "message": _text(body.get("message"), "message"),
    }
    if body.get("bytes_written") is not None:
        cleaned["bytes_written"] = _int(body["bytes_written"], "bytes_written")
    sha = body.get("sha256")
    if sha not in (None, ""):
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise ReportError("sha256 must be 64 lower-case hexadecimal digits")
        cleaned["sha256"] = sha
    keys, prints = body.get("host_keys") or {}, body.get("host_key_fingerprints") or {}
    if not isinstance(keys, dict) or not isinstance(prints, dict) or len(keys) > 8 or len(prints) > 8:
        raise ReportError("host_keys and host_key_fingerprints must be objects of at most 8 entries")
    for kind, line in keys.items():
        _host_key_blob(kind, line)
    for kind, value in prints.items():
        if not isinstance(value, str) or not _FINGERPRINT.fullmatch(value):
            raise ReportError(f"host key fingerprint {kind!r} must look like SHA256:<43 base64 characters>")
    if keys or prints:
        cleaned["host_keys"], cleaned["host_key_fingerprints"] = keys, prints
    if body.get("lldp") is not None:
        cleaned["lldp"] = clean_lldp(body["lldp"])
    return cleaned


def verify_deployed(
    result: dict[str, Any], sha256: str, size: int | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The host keys and their fingerprints of a deploy the agent reports ok, once the engine has checked
    that it is the deploy it asked for. Raises ReportError saying what does not match."""
    if result.get("sha256") != sha256.lower():
        raise ReportError(
            f"the agent reports sha256 {result.get('sha256') or 'none'} for the written image, expected {sha256.lower()}"
        )
    if size is not None and result.get("bytes_written") != size:
        raise ReportError(
            f"the agent reports {result.get('bytes_written')} bytes written, the image has {size}"
        )
    keys: dict[str, str] = result.get("host_keys") or {}
    if not keys:
        raise ReportError("the agent reported no host keys")
    prints = {kind: fingerprint_sha256(_host_key_blob(kind, line)) for kind, line in keys.items()}
    claimed = result.get("host_key_fingerprints") or {}
    if claimed != prints:
        raise ReportError("the host key fingerprints the agent reported do not match its host keys")
    return keys, prints
