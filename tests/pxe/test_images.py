"""The demo image builder and the image server, over real HTTP."""

from __future__ import annotations

import hashlib
import http.client
import subprocess
import urllib.request

import pytest

from provisioner.pxe.images import build_demo_image, sha256_file, stream_copy
from provisioner.pxe.imageserver import ImageServer


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    sha, size = build_demo_image(directory / "demo.img", size_mib=16)
    return directory, sha, size


def test_demo_image_is_a_deterministic_ext4_filesystem(demo, tmp_path):
    directory, sha, size = demo
    assert size == 16 * 1024 * 1024
    assert (
        sha256_file(directory / "demo.img")
        == sha
        == hashlib.sha256((directory / "demo.img").read_bytes()).hexdigest()
    )
    assert build_demo_image(tmp_path / "again.img", size_mib=16) == (sha, size)
    out = subprocess.run(
        ["debugfs", "-R", "cat /etc/os-release", str(directory / "demo.img")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert 'NAME="Neocloud Demo Linux"' in out
    fsck = subprocess.run(["e2fsck", "-fn", str(directory / "demo.img")], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr


def test_image_server_get_head_range_and_refusals(demo, tmp_path):
    directory, sha, size = demo
    with ImageServer(directory) as server:
        assert stream_copy(server.url_for("demo.img"), tmp_path / "copy.img") == (sha, size)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("HEAD", "/demo.img")
        head = conn.getresponse()
        head.read()
        assert head.status == 200 and int(head.getheader("Content-Length")) == size
        conn.request("GET", "/demo.img", headers={"Range": "bytes=1024-2047"})
        part = conn.getresponse()
        assert part.status == 206 and part.getheader("Content-Range") == f"bytes 1024-2047/{size}"
        assert part.read() == (directory / "demo.img").read_bytes()[1024:2048]
        conn.request("GET", "/demo.img", headers={"Range": f"bytes={size}-"})
        unsatisfiable = conn.getresponse()
        unsatisfiable.read()
        assert unsatisfiable.status == 416
        # Range headers this server does not take are ignored: the whole image, 200 (RFC 9110 14.2)
        for ignored in ("bytes=5-3", "bytes=0-1,4-5", "bytes=" + "9" * 5000 + "-", "bytes=-", "items=0-1"):
            conn.request("GET", "/demo.img", headers={"Range": ignored})
            whole = conn.getresponse()
            assert whole.status == 200, ignored
            assert len(whole.read()) == size
        for path in ("/missing.img", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/"):
            conn.request("GET", path)
            refused = conn.getresponse()
            refused.read()
            assert refused.status == 404, path
        conn.close()
        with urllib.request.urlopen(server.url_for("demo.img"), timeout=10) as response:
            assert hashlib.sha256(response.read()).hexdigest() == sha
            # urllib asks to close: the answer must say the server closes, or a pooling client races it
            assert response.headers["Connection"] == "close"
