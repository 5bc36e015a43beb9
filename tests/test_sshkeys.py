"""Customer SSH key validation and fingerprints, checked against the real ssh-keygen."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path

import pytest

from provisioner.errors import InvalidRequest
from provisioner.sshkeys import fingerprint_sha256, generate_keypair, parse_public_key

pytestmark = pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")


def _keygen(directory: Path, name: str, *args: str) -> tuple[Path, str]:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "", "-C", f"{name}@example", "-f", str(path), *args],
        check=True,
        timeout=60,
    )
    return path, path.with_name(name + ".pub").read_text()


def _keygen_fingerprint(pub_path: Path) -> tuple[int, str]:
    out = subprocess.run(
        ["ssh-keygen", "-lf", str(pub_path)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    return int(out[0]), out[1]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


ACCEPTED = [
    ("ed25519", ["-t", "ed25519"], 256),
    ("ecdsa256", ["-t", "ecdsa", "-b", "256"], 256),
    ("ecdsa384", ["-t", "ecdsa", "-b", "384"], 384),
    ("ecdsa521", ["-t", "ecdsa", "-b", "521"], 521),
    ("rsa3072", ["-t", "rsa", "-b", "3072"], 3072),
]


@pytest.mark.parametrize(("name", "args", "bits"), ACCEPTED)
def test_accepted_key_types_parse_with_fingerprint_equal_to_ssh_keygen(
    keydir: Path, name: str, args: list[str], bits: int
) -> None:
    path, text = _keygen(keydir, name, *args)
    key = parse_public_key(text)
    keygen_bits, keygen_fp = _keygen_fingerprint(path.with_name(name + ".pub"))
    assert key.fingerprint == keygen_fp
    assert key.bits == keygen_bits == bits
    assert key.comment == f"{name}@example"
    assert key.line == text.strip()
    assert key.key_type == text.split()[0]
    assert fingerprint_sha256(base64.b64decode(key.blob_b64)) == keygen_fp


def test_key_is_normalized_from_messy_paste(keydir: Path) -> None:
    _path, text = _keygen(keydir, "messy", "-t", "ed25519")
    key_type, b64, comment = text.split()
    key = parse_public_key(f"\n   {key_type}   {b64}   {comment}   extra  words \r\n\n")
    assert key.line == f"{key_type} {b64} {comment} extra words"
    assert parse_public_key(f"{key_type} {b64}").line == f"{key_type} {b64}"


def test_rsa_2048_is_refused_with_its_size(keydir: Path) -> None:
    _path, text = _keygen(keydir, "rsa2048", "-t", "rsa", "-b", "2048")
    with pytest.raises(InvalidRequest, match="RSA keys must be at least 3072 bits; this key has 2048"):
        parse_public_key(text)


def test_dsa_is_refused(keydir: Path) -> None:
    try:
        _path, text = _keygen(keydir, "dsa", "-t", "dsa")
    except subprocess.CalledProcessError:
        pytest.skip("this ssh-keygen cannot make DSA keys any more")
    with pytest.raises(InvalidRequest, match="DSA"):
        parse_public_key(text)


def test_private_key_pasted_by_mistake_is_refused_without_echoing_it(keydir: Path) -> None:
    path, _text = _keygen(keydir, "leak", "-t", "ed25519")
    private = path.read_text()
    with pytest.raises(InvalidRequest, match="private key") as err:
        parse_public_key(private)
    assert private.splitlines()[1] not in str(err.value)


def test_two_keys_in_one_field_are_refused(keydir: Path) -> None:
    _p1, one = _keygen(keydir, "two-a", "-t", "ed25519")
    _p2, two = _keygen(keydir, "two-b", "-t", "ed25519")
    with pytest.raises(InvalidRequest, match="more than one"):
        parse_public_key(one + two)
    with pytest.raises(InvalidRequest, match="more than one"):
        parse_public_key(one.strip() + " " + two.strip())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("hello world", "not an SSH public key"),
        ("ssh-ed25519", "no key data"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI!!!notbase64", "not valid base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", r"truncated|damaged"),
        ("ssh-foo AAAAB3NzaC1yc2E= x", "SSH key type ssh-foo is not accepted"),
        ("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----", "OpenSSH format"),
    ],
)
def test_garbage_is_refused_with_a_sentence(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_public_key(text)


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\x7f"])
def test_control_characters_in_a_key_line_are_refused(keydir: Path, character: str) -> None:
    _path, text = _keygen(keydir, f"control-{ord(character)}", "-t", "ed25519")
    with pytest.raises(InvalidRequest, match="control characters"):
        parse_public_key(f"{text.strip()}{character}[31m evil")


def test_key_whose_data_is_another_type_is_refused(keydir: Path) -> None:
    _path, text = _keygen(keydir, "liar", "-t", "ecdsa", "-b", "256")
    with pytest.raises(InvalidRequest, match="altered"):
        parse_public_key("ssh-ed25519 " + text.split()[1])


def test_truncated_rsa_key_is_refused(keydir: Path) -> None:
    _path, text = _keygen(keydir, "cut", "-t", "rsa", "-b", "3072")
    blob = base64.b64decode(text.split()[1])
    cut = base64.b64encode(blob[:-20]).decode()
    with pytest.raises(InvalidRequest, match=r"damaged|truncated"):
        parse_public_key(f"ssh-rsa {cut}")


def test_options_before_the_key_are_refused(keydir: Path) -> None:
    _path, text = _keygen(keydir, "opts", "-t", "ed25519")
    with pytest.raises(InvalidRequest, match="Options"):
        parse_public_key('from="10.0.0.1" ' + text)


def test_a_key_pasted_with_a_byte_order_mark_is_accepted_without_it(keydir: Path) -> None:
    _path, text = _keygen(keydir, "notepad", "-t", "ed25519")
    key = parse_public_key("\ufeff" + text.replace("\n", "\r\n"))
    assert key.line == " ".join(text.split())
    assert key.fingerprint == parse_public_key(text).fingerprint


@pytest.mark.parametrize("key_type", ["SSH-ED25519", "Ssh-Rsa", "ECDSA-SHA2-NISTP256"])
def test_an_upper_case_key_type_is_an_unrecognised_type_not_options(keydir: Path, key_type: str) -> None:
    _path, text = _keygen(keydir, f"upper-{key_type}", "-t", "ed25519")
    with pytest.raises(InvalidRequest) as err:
        parse_public_key(f"{key_type} {text.split(None, 1)[1]}")
    message = str(err.value)
    assert f"SSH key type {key_type} is not recognised" in message
    assert f"written in lower case, e.g. {key_type.lower()};" in message
    assert "Options" not in message


def test_certificate_types_are_refused(keydir: Path) -> None:
    _path, text = _keygen(keydir, "certified", "-t", "ed25519")
    with pytest.raises(InvalidRequest, match="certificates"):
        parse_public_key("ssh-ed25519-cert-v01@openssh.com " + text.split()[1])


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_generated_keypair_is_usable_by_openssh(tmp_path: Path, kind: str) -> None:
    private, public = generate_keypair(kind)
    assert "PRIVATE KEY" in private and "PRIVATE KEY" not in public
    key_file = tmp_path / "id"
    key_file.write_text(private)
    key_file.chmod(0o600)
    derived = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert derived[:2] == public.split()[:2]
    (tmp_path / "id.pub").write_text(public + "\n")
    _bits, keygen_fp = _keygen_fingerprint(tmp_path / "id.pub")
    assert parse_public_key(public).fingerprint == keygen_fp
    assert public.endswith(" neocloud-provisioning")


def test_generated_keypairs_differ() -> None:
    assert generate_keypair()[1] != generate_keypair()[1]


def test_ssh_command_names_the_port_and_key_only_when_needed() -> None:
    from provisioner.sshkeys import ssh_command

    assert ssh_command("root", "198.18.0.2") == "ssh root@198.18.0.2"
    assert ssh_command("root", "127.0.0.1", 22001) == "ssh -p 22001 root@127.0.0.1"
    assert ssh_command("ubuntu", "h", 2222, identity="/k/id") == "ssh -i /k/id -p 2222 ubuntu@h"
