"""The deploy bench's ironic-python-agent comparison: its environment and its driver (bench/ipa_env.py,
bench/ipa_stream.py). The test command makes the environment before pytest (``.venv/bin/python -m bench.ipa_env``,
cached); a fixture makes it when missing, and a failure to make it is an error, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.ipa_env import IPA_VERSION, IpaEnvError, ensure_ipa_env
from provisioner.pxe.images import build_demo_image
from provisioner.pxe.imageserver import ImageServer


def test_ipa_env_without_python311_fails_with_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(IpaEnvError) as failure:
        ensure_ipa_env()
    message = str(failure.value)
    assert message == (
        "cannot make the ironic-python-agent environment: python3.11 is not on the PATH "
        f"(ironic-python-agent {IPA_VERSION} needs Python 3.10-3.12)"
    )
    assert not (tmp_path / "cache" / "neocloud" / f"ipa-{IPA_VERSION}").exists()


@pytest.fixture
def ipa_python() -> Path:
    # made by the test command before pytest (cached); made here when missing: a failure is an error, never a skip
    return ensure_ipa_env()


def test_ipa_streams_the_image_onto_disk_files_without_truncating_them(ipa_python, tmp_path):
    from bench.deploy import parallel_ipa_streams

    image = tmp_path / "images" / "demo.raw"
    sha, size = build_demo_image(image, size_mib=16)
    tail = os.urandom(4096)
    disks = []
    for i in range(2):
        disk = tmp_path / f"disk-{i}.img"
        with open(disk, "wb") as fh:
            fh.write(bytes(size) + tail)  # zeros where the image goes, then bytes the stream must not touch
        disks.append(str(disk))
    with ImageServer(image.parent) as server:
        # raises unless IPA verified the sha256 and each disk's root UUID (blkid) is the image's file system's
        run = parallel_ipa_streams(ipa_python, server.url_for(image.name), disks, sha, size)
    assert run.bps > 0 and run.cpu_per_gib > 0
    for disk in disks:
        data = Path(disk).read_bytes()
        assert len(data) == size + len(tail)  # 'wb+' on a block device does not truncate it
        assert data[:size] == image.read_bytes()
        assert data[size:] == tail


def test_ipa_stream_with_the_wrong_sha256_fails_the_bench_with_ipas_checksum_error(ipa_python, tmp_path):
    from bench.deploy import parallel_ipa_streams

    image = tmp_path / "images" / "demo.raw"
    sha, size = build_demo_image(image, size_mib=16)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(size))
    wrong = ("0" if sha[0] != "0" else "1") + sha[1:]
    with ImageServer(image.parent) as server, pytest.raises(SystemExit) as failure:
        parallel_ipa_streams(ipa_python, server.url_for(image.name), [str(disk)], wrong, size)
    assert "an ironic-python-agent stream exited with 1" in str(failure.value)
    assert "ImageChecksumError" in str(failure.value)
