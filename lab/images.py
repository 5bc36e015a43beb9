"""The lab's image catalog, served over HTTP by a lab process: a small file-system image built once (what the
simulated servers get) and the bootable lab OS image (what the emulated computers boot)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from provisioner.pxe.images import build_demo_image

IMAGE_SERVER_PORT = 8090
IMAGE_NAME = "neocloud-demo-linux.raw"


def ensure_demo_image(image_dir: Path) -> dict[str, object]:
    """Build the demo image if missing; return its catalog entry (sha256 cached next to it)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    path = image_dir / IMAGE_NAME
    meta = image_dir / f"{IMAGE_NAME}.json"
    if not path.exists() or not meta.exists():
        sha256, size = build_demo_image(path)
        meta.write_text(json.dumps({"sha256": sha256, "size": size}))
    info = json.loads(meta.read_text())
    return {
        "slug": "neocloud-demo-linux",
        "name": "Neocloud Demo Linux",
        "url": f"http://127.0.0.1:{IMAGE_SERVER_PORT}/{IMAGE_NAME}",
        "sha256": info["sha256"],
        "size_bytes": info["size"],
        "format": "raw",
        "os_name": "Neocloud Demo Linux (ext4)",
    }


LAB_OS_SLUG = "neocloud-lab-os"


def ensure_lab_os_image(image_dir: Path) -> dict[str, object]:
    """Put the bootable lab OS image (lab.osimage, built or reused) into the catalog directory;
    return its catalog entry. Idempotent: the file is copied again only when the built image changed.

    :raises RamdiskBuildError: the image could not be built (see lab.osimage).
    """
    from lab.osimage import ensure_os_image

    built = ensure_os_image()
    image_dir.mkdir(parents=True, exist_ok=True)
    path = image_dir / built.path.name
    meta = image_dir / f"{built.path.name}.json"
    current = json.loads(meta.read_text()) if meta.exists() else {}
    if not path.exists() or current.get("sha256") != built.sha256:
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(built.path, tmp)
        os.replace(tmp, path)
        meta.write_text(json.dumps({"sha256": built.sha256, "size": built.size}))
    return {
        "slug": LAB_OS_SLUG,
        "name": "Neocloud Lab OS",
        "url": f"http://127.0.0.1:{IMAGE_SERVER_PORT}/{path.name}",
        "sha256": built.sha256,
        "size_bytes": built.size,
        "format": "raw",
        "os_name": "Neocloud Lab OS (Debian kernel, busybox, OpenSSH, Python 3.11)",
    }


def start_image_server(image_dir: Path, lab_dir: Path) -> int:
    """Start (or keep) the lab's image server; returns its pid."""
    pid_file = lab_dir / "imageserver.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if Path(f"/proc/{pid}").exists() and _answers():
            return pid
    log = open(lab_dir / "imageserver.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provisioner.pxe.imageserver",
            "--dir",
            str(image_dir),
            "--bind",
            "127.0.0.1",
            "--port",
            str(IMAGE_SERVER_PORT),
        ],
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    pid_file.write_text(str(proc.pid))
    deadline = time.monotonic() + 10
    while not _answers():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the lab image server did not start; see {lab_dir / 'imageserver.log'}")
        time.sleep(0.1)
    return proc.pid


def stop_image_server(lab_dir: Path) -> None:
    pid_file = lab_dir / "imageserver.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        if b"provisioner.pxe.imageserver" in cmdline:
            os.kill(pid, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{pid}").exists():
                    break
                time.sleep(0.1)
    except (FileNotFoundError, ProcessLookupError):
        pass
    pid_file.unlink(missing_ok=True)


def _answers() -> bool:
    """Whether the image server answers HTTP (any status: a lab of emulated computers serves the OS image
    only, so the demo image's 404 is an answer too)."""
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{IMAGE_SERVER_PORT}/{IMAGE_NAME}", method="HEAD")
        with urllib.request.urlopen(req, timeout=0.5):  # noqa: S310 - loopback only
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
