"""The image catalog's file helpers: build the demo image, hash images, copy them in big chunks.

Images are raw disk images (``format: raw``) written byte for byte to a node's disk by the deploy
agent. The demo image is a real ext4 file system (made by ``mkfs.ext4 -d``) holding a tiny
"Neocloud Demo Linux" tree; it is built deterministically (fixed UUID, hash seed, timestamps), so the
same size gives the same sha256 on the same e2fsprogs version.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

CHUNK_SIZE = 4 * 1024 * 1024
DEMO_FS_UUID = "6e656f63-6c6f-7564-2d64-656d6f000001"
DEMO_HASH_SEED = "6e656f63-6c6f-7564-2d64-656d6f000002"
DEMO_EPOCH = 1_700_000_000  # fixed timestamps so rebuilding gives the same bytes

DEMO_OS_RELEASE = (
    'PRETTY_NAME="Neocloud Demo Linux 1.0"\n'
    'NAME="Neocloud Demo Linux"\n'
    'VERSION_ID="1.0"\n'
    'VERSION="1.0"\n'
    "ID=neocloud-demo\n"
    'HOME_URL="https://neocloud.invalid/"\n'
)


class ImageError(Exception):
    """An image could not be built, read or copied."""


def sha256_file(path: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE) -> str:
    """Hex sha256 of a file, read in chunks (never whole into memory). Idempotent.

    :raises OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _demo_tree(root: Path, hostname: str) -> None:
    files = {
        "etc/os-release": DEMO_OS_RELEASE,
        "etc/hostname": f"{hostname}\n",
        "etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n",
        "etc/fstab": "LABEL=neocloud-root\t/\text4\tdefaults\t0 1\n",
        "etc/motd": "Welcome to Neocloud Demo Linux.\n",
        "root/.ssh/authorized_keys": "",
        "etc/neocloud/README": "Configuration is applied at first boot from the Neocloud config drive.\n",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for directory in ("boot", "dev", "proc", "sys", "tmp", "var/log", "home"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "root/.ssh").chmod(0o700)
    (root / "tmp").chmod(0o1777)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (DEMO_EPOCH, DEMO_EPOCH))
    os.utime(root, (DEMO_EPOCH, DEMO_EPOCH))


def _pin_change_times(tree: Path, image: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """mkfs.ext4 -d copies each file's ctime (which utime cannot set) and its atime (which reading the file
    to copy it may change): pin both with debugfs, so that builds in different seconds give the same bytes."""
    paths = ["/"] + ["/" + str(p.relative_to(tree)) for p in sorted(tree.rglob("*"))]
    commands = "".join(f"sif {p} {field} @{DEMO_EPOCH}\n" for p in paths for field in ("ctime", "atime"))
    debugfs = shutil.which("debugfs") or "/usr/sbin/debugfs"
    return subprocess.run(
        [debugfs, "-w", "-f", "-", str(image)],
        input=commands,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def build_demo_image(
    path: str | os.PathLike[str], size_mib: int = 64, *, hostname: str = "localhost"
) -> tuple[str, int]:
    """Build the demo raw disk image (an ext4 file system) at ``path``; return ``(sha256, size)``.

    Idempotent: rebuilding replaces the file and gives the same bytes for the same arguments.

    :raises ImageError: mkfs.ext4 is missing or failed, or ``size_mib`` is too small.
    """
    if size_mib < 8:
        raise ImageError("the demo image needs at least 8 MiB")
    mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
    if not os.path.exists(mkfs):
        raise ImageError("mkfs.ext4 is not installed (Debian package e2fsprogs)")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_image = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tempfile.TemporaryDirectory(prefix="neocloud-demo-image-") as tree:
        _demo_tree(Path(tree), hostname)
        with open(tmp_image, "wb") as fh:
            fh.truncate(size_mib * 1024 * 1024)
        env = dict(os.environ, E2FSPROGS_FAKE_TIME=str(DEMO_EPOCH), LC_ALL="C")
        cmd = [
            mkfs, "-q", "-F", "-t", "ext4", "-b", "4096", "-L", "neocloud-root", "-U", DEMO_FS_UUID,
            "-E", f"hash_seed={DEMO_HASH_SEED},root_owner=0:0,lazy_itable_init=0,nodiscard",
            "-d", tree, str(tmp_image),
        ]  # fmt: skip
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            proc = _pin_change_times(Path(tree), tmp_image, env)
        if proc.returncode != 0:
            tmp_image.unlink(missing_ok=True)
            raise ImageError(f"mkfs.ext4 failed: {proc.stderr.strip()[:500]}")
    os.replace(tmp_image, target)
    return sha256_file(target), target.stat().st_size


def stream_copy(
    source: str, destination: str | os.PathLike[str], chunk_size: int = CHUNK_SIZE
) -> tuple[str, int]:
    """Copy an image from a path or an http(s) URL to ``destination`` in chunks, hashing on the way.

    Returns ``(sha256, bytes copied)``. Idempotent (overwrites the destination).

    :raises ImageError: the source cannot be read or the copy is shorter than announced.
    """
    digest = hashlib.sha256()
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    total = 0
    try:
        if source.startswith(("http://", "https://")):
            src = urllib.request.urlopen(source, timeout=30)  # noqa: S310 - scheme checked above
        else:
            src = open(source, "rb", buffering=0)  # noqa: SIM115 - closed below
        with src, open(destination, "wb", buffering=0) as dst:
            while n := src.readinto(buf):
                digest.update(view[:n])
                dst.write(view[:n])
                total += n
    except OSError as exc:
        raise ImageError(f"copying image {source} failed: {exc}") from exc
    return digest.hexdigest(), total
