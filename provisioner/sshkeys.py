"""SSH public keys: validating what customers paste, fingerprints, and the provisioning key pair.

Accepted customer keys: ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa of at least 3072 bits.
Everything else is refused with a sentence saying what is wrong and what to do (InvalidRequest).
Fingerprints are computed exactly as ``ssh-keygen -lf`` prints them: ``SHA256:`` + unpadded base64
of the SHA-256 of the key blob.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from provisioner.errors import InvalidRequest

MIN_RSA_BITS = 3072
ECDSA_CURVES = {
    "ecdsa-sha2-nistp256": ("nistp256", 256),
    "ecdsa-sha2-nistp384": ("nistp384", 384),
    "ecdsa-sha2-nistp521": ("nistp521", 521),
}
ACCEPTED_TYPES = ("ssh-ed25519", *ECDSA_CURVES, "ssh-rsa")
MAX_KEY_TEXT = 16 * 1024  # an 16384-bit RSA key is ~2.8 kB; anything much larger is not one key
_ACCEPTED_SENTENCE = (
    "use an ssh-ed25519 (recommended), ecdsa-sha2-nistp256/384/521 or ssh-rsa (3072 bits or more) key"
)
# Tabs separate fields; any other control character (NUL, ESC) is no part of a key line, and a database
# (PostgreSQL refuses NUL in text) or a terminal showing the comment would choke on it.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_KEY_TOKEN = re.compile(
    r"(?:^|\s)(ssh-[a-z0-9@.-]+|ecdsa-sha2-[a-z0-9@.-]+|sk-[a-z0-9@.-]+)\s+AAAA", re.IGNORECASE
)


@dataclasses.dataclass(frozen=True)
class PublicKey:
    key_type: str  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    blob_b64: str  # canonical base64 of the key blob
    comment: str
    bits: int
    fingerprint: str  # "SHA256:..." as ssh-keygen -lf prints it
    line: str = dataclasses.field(init=False)  # normalized authorized_keys line: type, base64[, comment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "line", f"{self.key_type} {self.blob_b64} {self.comment}".rstrip())

    @property
    def blob(self) -> bytes:
        return base64.b64decode(self.blob_b64)


def fingerprint_sha256(blob: bytes) -> str:
    """The SHA256 fingerprint of a public key blob, as ``ssh-keygen -lf`` prints it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _read_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4 : end], end


def _invalid(message: str) -> InvalidRequest:
    return InvalidRequest(message)


def _refuse_obvious_mistakes(text: str) -> str:
    # Windows Notepad saves (and some editors copy) a UTF-8 byte order mark before the text: no part of it.
    stripped = text.strip().lstrip("\ufeff").strip()
    if not stripped:
        raise _invalid(f"The SSH key is empty: paste one public key line; {_ACCEPTED_SENTENCE}.")
    if len(stripped) > MAX_KEY_TEXT:
        raise _invalid("The SSH key is too long to be one public key: paste one public key line.")
    if "PRIVATE KEY" in stripped:
        raise _invalid(
            "This is a private key: never share it. Paste the public key instead "
            "(the .pub file, e.g. ~/.ssh/id_ed25519.pub)."
        )
    if "BEGIN SSH2 PUBLIC KEY" in stripped or "BEGIN PUBLIC KEY" in stripped:
        raise _invalid(
            "This public key is in PEM/RFC 4716 format: paste it in OpenSSH format "
            "(convert it with 'ssh-keygen -i -f key.pub')."
        )
    lines = [line for line in stripped.splitlines() if line.strip()]
    if len(lines) > 1 or len(_KEY_TOKEN.findall(stripped)) > 1:
        raise _invalid("The field holds more than one SSH key: add each key separately.")
    if _CONTROL.search(lines[0]):
        raise _invalid(
            "The SSH key holds control characters: it was altered when copied. Paste the line as it is in "
            "the .pub file."
        )
    return lines[0].strip()


def parse_public_key(text: str) -> PublicKey:
    """Validate one customer public key line and return it normalized, with bits and fingerprint.

    Pure function (idempotent). Raises InvalidRequest with a sentence for the customer when the text is
    not exactly one accepted public key: a private key, several keys, DSA, RSA under 3072 bits,
    security-key or certificate types, malformed base64, a blob that does not match its type.
    """
    line = _refuse_obvious_mistakes(text)
    parts = line.split(None, 2)
    key_type = parts[0]
    if key_type not in ACCEPTED_TYPES:
        if key_type == "ssh-dss":
            raise _invalid(f"DSA (ssh-dss) keys are insecure and no longer accepted; {_ACCEPTED_SENTENCE}.")
        if key_type.startswith(("sk-", "ssh-ed25519-sk")):
            raise _invalid(
                f"Security-key (FIDO) SSH keys ({key_type}) are not supported by our images; "
                f"{_ACCEPTED_SENTENCE}."
            )
        if "-cert-" in key_type:
            raise _invalid(f"SSH certificates ({key_type}) are not accepted as keys; {_ACCEPTED_SENTENCE}.")
        # The type itself (any case) is no option: only a key token after the first field means options.
        if re.fullmatch(r"(ssh|ecdsa|sk)-[a-z0-9@.-]+", key_type, re.IGNORECASE):
            if key_type != key_type.lower():  # SSH-ED25519: sshd matches key types case-sensitively
                lower = key_type.lower()
                hint = (
                    f": key types are written in lower case, e.g. {lower}" if lower in ACCEPTED_TYPES else ""
                )
                raise _invalid(f"SSH key type {key_type} is not recognised{hint}; {_ACCEPTED_SENTENCE}.")
            raise _invalid(f"SSH key type {key_type} is not accepted; {_ACCEPTED_SENTENCE}.")
        if _KEY_TOKEN.search(line):
            raise _invalid(
                "Options before the key (such as from=... or command=...) are not accepted: "
                "paste only the key line, starting with its type."
            )
        raise _invalid(
            "This is not an SSH public key: a key line starts with its type (e.g. ssh-ed25519); "
            f"{_ACCEPTED_SENTENCE}."
        )
    if len(parts) < 2:
        raise _invalid(f"The {key_type} key has no key data after its type: paste the whole line.")
    b64 = parts[1]
    comment = " ".join(parts[2].split()) if len(parts) > 2 else ""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _invalid(
            f"The {key_type} key data is not valid base64: it was probably cut or altered when copied."
        )
    try:
        inner_type, offset = _read_string(blob, 0)
    except ValueError:
        raise _invalid(f"The {key_type} key data is truncated: paste the whole line.")
    if inner_type.decode(errors="replace") != key_type:
        raise _invalid(
            f"The key says it is {key_type} but its data is a {inner_type.decode(errors='replace')!r} key: "
            "it was altered when copied."
        )
    bits = _check_blob(key_type, blob, offset)
    try:
        loaded = load_ssh_public_key(f"{key_type} {b64}".encode())
    except (ValueError, TypeError) as exc:
        raise _invalid(f"The {key_type} key data is not a valid public key ({exc}).")
    if isinstance(loaded, rsa.RSAPublicKey):
        bits = loaded.key_size
        if bits < MIN_RSA_BITS:
            raise _invalid(
                f"RSA keys must be at least {MIN_RSA_BITS} bits; this key has {bits}. "
                "Generate a new one with 'ssh-keygen -t ed25519' (or 'ssh-keygen -t rsa -b 4096')."
            )
    canonical = base64.b64encode(blob).decode()
    return PublicKey(key_type, canonical, comment, bits, fingerprint_sha256(blob))


def _check_blob(key_type: str, blob: bytes, offset: int) -> int:
    """Check the blob's fields for its type (no trailing data); return its size in bits."""
    try:
        if key_type == "ssh-ed25519":
            point, end = _read_string(blob, offset)
            if len(point) != 32:
                raise ValueError("bad length")
            bits = 256
        elif key_type in ECDSA_CURVES:
            curve, end = _read_string(blob, offset)
            _point, end = _read_string(blob, end)
            if curve.decode(errors="replace") != ECDSA_CURVES[key_type][0]:
                raise ValueError("curve mismatch")
            bits = ECDSA_CURVES[key_type][1]
        else:
            _e, end = _read_string(blob, offset)
            _n, end = _read_string(blob, end)
            bits = 0  # from the loaded key
    except ValueError:
        raise _invalid(f"The {key_type} key data is damaged: it was probably cut or altered when copied.")
    if end != len(blob):
        raise _invalid(f"The {key_type} key data has extra bytes at its end: it was altered when copied.")
    return bits


def generate_keypair(kind: str = "ed25519", comment: str = "neocloud-provisioning") -> tuple[str, str]:
    """A fresh key pair: (private key in OpenSSH format, public key line with ``comment``).

    ``kind`` is "ed25519", "ecdsa" (nistp256) or "rsa" (4096 bits). Not idempotent (new key each call).
    Raises ValueError for another kind.
    """
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    elif kind == "ecdsa":
        private = ec.generate_private_key(ec.SECP256R1())
    elif kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    else:
        raise ValueError(f"unknown key kind {kind!r}: use ed25519, ecdsa or rsa")
    private_text = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public_line = (
        private.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    if comment:
        public_line = f"{public_line} {comment}"
    return private_text, public_line


def ssh_command(user: str, address: str, port: int = 22, *, identity: str = "") -> str:
    """The command that logs in to a handed-over server: ``ssh [-i identity] [-p port] user@address``. Pure."""
    options = (f"-i {identity} " if identity else "") + ("" if port == 22 else f"-p {port} ")
    return f"ssh {options}{user}@{address}"
