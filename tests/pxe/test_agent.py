"""The deploy agent against a real HTTP boot service (tests/pxe/bootservice.py) and our image server."""

from __future__ import annotations

import errno
import hashlib
import http.server
import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bootservice import BootService

from provisioner.pxe.agent import fingerprint, parse_kernel_cmdline
from provisioner.pxe.configdrive import read_config_drive, write_config_drive
from provisioner.pxe.images import build_demo_image
from provisioner.pxe.imageserver import ImageServer

ROOT = Path(__file__).resolve().parents[2]
MAC = "52:54:00:aa:bb:01"
CUSTOMER_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGw2a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5 alice@example"
)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    directory = tmp_path_factory.mktemp("images")
    path = directory / "demo.img"
    sha, size = build_demo_image(path, size_mib=16)
    return path, sha, size


@pytest.fixture(scope="module")
def image_server(image: tuple[Path, str, int]) -> Iterator[ImageServer]:
    with ImageServer(image[0].parent) as server:
        yield server


@pytest.fixture
def boot() -> Iterator[BootService]:
    with BootService() as service:
        yield service


def make_disk(path: Path, size: int = 32 * MIB, fill: bytes = b"\xa5") -> Path:
    with open(path, "wb") as fh:
        fh.write(fill * size)
    return path


def run_agent(boot: BootService, token: str, disk: Path, *extra: str, env: dict[str, str] | None = None):
    environment = dict(os.environ, NEOCLOUD_TOKEN=token, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "provisioner.pxe.agent", "--api", boot.api_url, "--disk", str(disk), *extra],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ssh_keygen_fingerprint(public_line: str, tmp_path: Path) -> str:
    path = tmp_path / "key.pub"
    path.write_text(public_line + "\n")
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def test_agent_writes_image_and_config_drive_with_fresh_host_keys(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-happy-0123456789abcdef"
    deployment = boot.add_deployment(
        "lab-node-01", MAC, token, image_server.url_for("demo.img"), sha, size, [CUSTOMER_KEY]
    )
    disk = make_disk(tmp_path / "disk.img")

    proc = run_agent(boot, token, disk)

    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout + proc.stderr
    with open(disk, "rb") as fh:
        assert hashlib.sha256(fh.read(size)).hexdigest() == sha
    assert disk.stat().st_size == 32 * MIB  # the disk keeps its size
    document = read_config_drive(str(disk))
    assert document is not None
    assert document["hostname"] == "lab-node-01"
    assert document["authorized_keys"] == [CUSTOMER_KEY]
    assert document["network"] == {"address": "198.18.0.5", "prefix": 15}
    assert document["image"]["sha256"] == sha
    assert set(document["host_keys"]) == {"ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"}

    result = deployment.result
    assert result is not None and result["status"] == "ok" and result["error_code"] is None
    assert result["sha256"] == sha and result["bytes_written"] == size
    for kind, pair in document["host_keys"].items():
        assert pair["private"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert result["host_keys"][kind] == pair["public"]
        # The fingerprint the agent reports is the one ssh-keygen computes for the key on the disk.
        assert result["host_key_fingerprints"][kind] == ssh_keygen_fingerprint(pair["public"], tmp_path)
        key_file = tmp_path / f"{kind}.key"
        key_file.write_text(pair["private"])
        key_file.chmod(0o600)
        derived = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(key_file)], capture_output=True, text=True, check=True
        ).stdout.split()[:2]
        assert derived == pair["public"].split()[:2]
    stages = [p["stage"] for p in deployment.progress]
    assert (
        stages[0] == "download" and "write" in stages and "verify" in stages and stages[-1] == "configdrive"
    )
    assert all(0 <= p["percent"] <= 100 for p in deployment.progress)


def test_two_deploys_get_different_host_keys(boot, image, image_server, tmp_path):
    _path, sha, size = image
    fingerprints = []
    for n in range(2):
        token = f"tok-twice-{n}-0123456789abcdef"
        deployment = boot.add_deployment(
            "lab-node-01", MAC, token, image_server.url_for("demo.img"), sha, size
        )
        assert run_agent(boot, token, make_disk(tmp_path / f"disk{n}.img")).returncode == 0
        fingerprints.append(deployment.result["host_key_fingerprints"]["ssh-ed25519"])
    assert fingerprints[0] != fingerprints[1]


def test_checksum_mismatch_wipes_disk_and_reports_failure(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-mismatch-0123456789abcdef"
    wrong = hashlib.sha256(b"not the image").hexdigest()
    deployment = boot.add_deployment("lab-node-02", MAC, token, image_server.url_for("demo.img"), wrong, size)
    disk = make_disk(tmp_path / "disk.img")
    write_config_drive(str(disk), {"hostname": "previous-tenant"})  # a previous deploy's config drive

    proc = run_agent(boot, token, disk)

    assert proc.returncode == 1
    assert "image_checksum_mismatch" in proc.stderr
    result = deployment.result
    assert result["status"] == "failed" and result["error_code"] == "image_checksum_mismatch"
    assert wrong in result["message"] and result["sha256"] == sha
    assert result["host_keys"] == {}
    assert read_config_drive(str(disk)) is None  # the node never looks deployed
    with open(disk, "rb") as fh:
        assert fh.read(MIB) == bytes(MIB)


def test_corrupted_stream_is_detected(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-corrupt-0123456789abcdef"
    deployment = boot.add_deployment("lab-node-03", MAC, token, image_server.url_for("demo.img"), sha, size)
    disk = make_disk(tmp_path / "disk.img")

    proc = run_agent(boot, token, disk, env={"NEOCLOUD_FAULT_CORRUPT_OFFSET": str(5 * MIB + 7)})

    assert proc.returncode == 1
    assert deployment.result["error_code"] == "image_checksum_mismatch"
    assert deployment.result["sha256"] != sha
    assert read_config_drive(str(disk)) is None


def test_reused_token_is_refused_and_disk_untouched(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-reused-0123456789abcdef"
    boot.add_deployment("lab-node-04", MAC, token, image_server.url_for("demo.img"), sha, size)
    assert run_agent(boot, token, make_disk(tmp_path / "first.img")).returncode == 0
    second = make_disk(tmp_path / "second.img")

    proc = run_agent(boot, token, second)

    assert proc.returncode == 2
    assert "token_already_used" in proc.stderr
    assert token not in proc.stderr
    with open(second, "rb") as fh:
        assert fh.read(MIB) == b"\xa5" * MIB


def test_unknown_token_is_refused(boot, tmp_path):
    proc = run_agent(boot, "tok-nobody-0123456789abcdef", make_disk(tmp_path / "disk.img", size=4 * MIB))
    assert proc.returncode == 2
    assert "token_refused" in proc.stderr


def test_image_larger_than_disk_fails_before_writing(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-toolarge-0123456789abcdef"
    deployment = boot.add_deployment("lab-node-05", MAC, token, image_server.url_for("demo.img"), sha, size)
    disk = make_disk(tmp_path / "small.img", size=size)  # no room left for the config drive

    proc = run_agent(boot, token, disk)

    assert proc.returncode == 1
    assert deployment.result["error_code"] == "image_too_large"
    assert deployment.result["bytes_written"] == 0
    assert disk.stat().st_size == size
    with open(disk, "rb") as fh:
        assert fh.read(MIB) == bytes(MIB)


def test_size_announced_by_server_must_match_instructions(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-size-0123456789abcdef"
    deployment = boot.add_deployment(
        "lab-node-06", MAC, token, image_server.url_for("demo.img"), sha, size - 4096
    )
    proc = run_agent(boot, token, make_disk(tmp_path / "disk.img"))
    assert proc.returncode == 1
    assert deployment.result["error_code"] == "image_size_mismatch"


def test_missing_image_is_reported(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-missing-0123456789abcdef"
    deployment = boot.add_deployment("lab-node-07", MAC, token, image_server.url_for("nope.img"), sha, size)
    proc = run_agent(boot, token, make_disk(tmp_path / "disk.img"))
    assert proc.returncode == 1
    assert deployment.result["error_code"] == "image_download_failed"
    assert "404" in deployment.result["message"]


def test_agent_reads_api_and_token_from_kernel_cmdline(boot, image, image_server, tmp_path):
    _path, sha, size = image
    token = "tok-cmdline-0123456789abcdef"
    deployment = boot.add_deployment("lab-node-08", MAC, token, image_server.url_for("demo.img"), sha, size)
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(
        f"BOOT_IMAGE=vmlinuz neocloud.api={boot.api_url} neocloud.token={token} console=ttyS0\n"
    )
    disk = make_disk(tmp_path / "disk.img")
    environment = {k: v for k, v in os.environ.items() if k != "NEOCLOUD_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "provisioner.pxe.agent", "--cmdline", str(cmdline), "--disk", str(disk)],
        env=dict(environment, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert deployment.result["status"] == "ok"
    assert token not in proc.stderr


def test_parse_kernel_cmdline():
    params = parse_kernel_cmdline(
        "quiet neocloud.api=http://h/boot/api neocloud.token=abc console=ttyS0,115200\n"
    )
    assert params["neocloud.api"] == "http://h/boot/api"
    assert params["neocloud.token"] == "abc"
    assert params["quiet"] == ""


def test_fingerprint_rejects_garbage():
    with pytest.raises(ValueError):
        fingerprint("ssh-ed25519")


class _StuckBootService:
    """A boot service whose progress endpoint hangs until released: the write path must not wait for it."""

    timeout = 5.0

    def __init__(self) -> None:
        import threading

        self.release = threading.Event()
        self.reports: list[tuple[str, int]] = []

    def post_progress(self, stage: str, percent: int, message: str) -> None:
        self.release.wait(10)
        self.reports.append((stage, percent))


def test_the_image_is_written_while_a_progress_report_hangs(image, image_server, tmp_path):
    from provisioner.pxe.agent import CONFIG_DRIVE_SIZE, ProgressReporter, stream_image_to_disk

    path, sha, size = image
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(size + CONFIG_DRIVE_SIZE + (1 << 20))
    service = _StuckBootService()
    reporter = ProgressReporter(service, "write", size)  # type: ignore[arg-type]
    outcome = stream_image_to_disk(
        image_server.url_for(path.name), str(disk), size, reporter, chunk_size=1 << 16
    )
    assert outcome.sha256 == sha and outcome.bytes_written == size
    assert service.reports == []  # the first report is still stuck, and the whole image is on disk
    service.release.set()
    reporter.close()
    assert service.reports[-1] == ("write", 100)  # close() sends the last state
    assert len(service.reports) <= 2  # reports due while one hung collapsed into the newest


class _RecordingBootService:
    timeout = 1.0

    def __init__(self) -> None:
        self.reports: list[tuple[float, int]] = []

    def post_progress(self, stage: str, percent: int, message: str) -> None:
        self.reports.append((time.monotonic(), percent))


def test_progress_reports_are_spaced_by_the_minimum_interval():
    from provisioner.pxe.agent import ProgressReporter

    service = _RecordingBootService()
    reporter = ProgressReporter(service, "write", 100, every_percent=5, min_interval=0.2)  # type: ignore[arg-type]
    for written in range(1, 101):  # a fast disk: 100% in about a second
        reporter(written)
        time.sleep(0.01)
    time.sleep(2.3)  # the reporter sends a change older than 2 s on its own
    assert service.reports[-1][1] == 100
    times = [t for t, _ in service.reports]
    assert 3 <= len(times) <= 8  # every 5% would have been 20 reports
    assert all(b - a >= 0.19 for a, b in itertools.pairwise(times))
    reporter.close()  # nothing new to say: no further report
    assert len(service.reports) == len(times)


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash_thread", "hash_on_receive"])
@pytest.mark.parametrize("direct", [True, False], ids=["o_direct", "page_cache_only"])
def test_streamed_image_lands_byte_for_byte_with_or_without_o_direct(
    tmp_path, monkeypatch, direct, hash_thread
):
    """Whole chunks go to the disk with O_DIRECT, the unaligned tail through the page cache; where the
    file system refuses O_DIRECT (tmpfs) everything goes through the page cache. The same whether a thread
    of its own hashes or the receiving one."""
    from provisioner.pxe import agent

    body = os.urandom(3 * MIB + 123)  # not a multiple of the disk block: the tail takes the other path
    (tmp_path / "odd.img").write_bytes(body)
    disk = make_disk(tmp_path / "disk.img", size=8 * MIB)
    opened: list[int] = []
    real_open = os.open

    def spy_open(path, flags, *args):
        if flags & os.O_DIRECT and not direct:
            raise OSError(22, "Invalid argument")  # as tmpfs answers
        opened.append(flags & os.O_DIRECT)
        return real_open(path, flags, *args)

    monkeypatch.setattr(agent.os, "open", spy_open)
    with ImageServer(tmp_path) as server:
        outcome = agent.stream_image_to_disk(
            server.url_for("odd.img"), str(disk), len(body), chunk_size=MIB, hash_thread=hash_thread
        )
    assert outcome.sha256 == hashlib.sha256(body).hexdigest() and outcome.bytes_written == len(body)
    data = disk.read_bytes()
    assert data[: len(body)] == body
    assert data[len(body) : len(body) + 16] == b"\xa5" * 16  # nothing past the image was touched
    assert (os.O_DIRECT in opened) == direct


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash_thread", "hash_on_receive"])
@pytest.mark.parametrize(
    "offset",
    [0, 256 * 1024 - 1, 256 * 1024, MIB + 5, 3 * MIB + 122],
    ids=["first", "piece_end", "piece_start", "mid", "last"],
)
def test_a_byte_corrupted_in_transit_is_hashed_as_written(tmp_path, offset, hash_thread):
    """The fault injection flips one byte of the stream: the sha256 must be that of the bytes on the disk,
    wherever the byte falls (first or last of a received piece, of a chunk, of the image)."""
    from provisioner.pxe import agent

    body = os.urandom(3 * MIB + 123)
    (tmp_path / "odd.img").write_bytes(body)
    disk = make_disk(tmp_path / "disk.img", size=8 * MIB)
    with ImageServer(tmp_path) as server:
        outcome = agent.stream_image_to_disk(
            server.url_for("odd.img"),
            str(disk),
            len(body),
            chunk_size=MIB,
            corrupt_offset=offset,
            hash_thread=hash_thread,
        )
    on_disk = disk.read_bytes()[: len(body)]
    assert on_disk[offset] == body[offset] ^ 0xFF
    assert on_disk[:offset] == body[:offset] and on_disk[offset + 1 :] == body[offset + 1 :]
    assert outcome.sha256 == hashlib.sha256(on_disk).hexdigest() != hashlib.sha256(body).hexdigest()


class _ShortBodyHandler(http.server.BaseHTTPRequestHandler):
    """Announces 3 MiB and hangs up after 1.5 MiB, as a server that dies mid-transfer would."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(3 * MIB))
        self.end_headers()
        self.wfile.write(b"\x11" * (3 * MIB // 2))
        self.wfile.flush()
        self.close_connection = True


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash_thread", "hash_on_receive"])
def test_a_stream_that_ends_early_is_refused(tmp_path, hash_thread):
    from provisioner.pxe import agent

    disk = make_disk(tmp_path / "disk.img", size=8 * MIB)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ShortBodyHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(agent.AgentError) as failure:
            agent.stream_image_to_disk(
                f"http://127.0.0.1:{server.server_port}/x.img",
                str(disk),
                3 * MIB,
                chunk_size=MIB,
                timeout=10,
                hash_thread=hash_thread,
            )
    finally:
        server.shutdown()
        server.server_close()
    assert failure.value.code in ("image_size_mismatch", "image_download_failed")
    assert f"{3 * MIB // 2} " in str(failure.value)  # how far it got, in bytes


@pytest.mark.parametrize("hash_thread", [True, False], ids=["hash_thread", "hash_on_receive"])
def test_a_write_error_mid_stream_fails_the_write_and_stops_the_stream(tmp_path, monkeypatch, hash_thread):
    """The disk refuses the third chunk (ENOSPC): the stream stops there instead of reading the rest of the
    image, every worker ends (no thread left waiting for a buffer), and the error says what and where."""
    from provisioner.pxe import agent

    body = os.urandom(16 * MIB)
    (tmp_path / "big.img").write_bytes(body)
    disk = make_disk(tmp_path / "disk.img", size=24 * MIB)
    real_pwrite = agent._DiskWriter.pwrite

    def failing_pwrite(self, view, offset):
        if offset >= 2 * MIB:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_pwrite(self, view, offset)

    monkeypatch.setattr(agent._DiskWriter, "pwrite", failing_pwrite)
    threads_before = threading.active_count()
    with ImageServer(tmp_path) as server, pytest.raises(agent.AgentError) as failure:
        agent.stream_image_to_disk(
            server.url_for("big.img"), str(disk), len(body), chunk_size=MIB, hash_thread=hash_thread
        )
    assert failure.value.code == "disk_write_failed"
    assert "No space left on device" in str(failure.value)
    assert "after 2097152 bytes" in str(failure.value)  # the two chunks before the refused one
    assert disk.read_bytes()[: 2 * MIB] == body[: 2 * MIB]
    assert threading.active_count() == threads_before


@pytest.mark.parametrize("cpus, expected", [(1, False), (2, False), (3, False), (4, True), (64, True)])
def test_a_hash_thread_only_where_a_core_is_free_for_it(monkeypatch, cpus, expected):
    from provisioner.pxe import agent

    monkeypatch.setattr(agent.os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert agent.hash_on_its_own_thread() is expected


class _SlowLastWriteReportService:
    """A boot service that takes a second to answer the write stage's last progress report."""

    timeout = 5.0

    def __init__(self, instructions: dict) -> None:
        self.instructions = instructions
        self.last_write_report_answered = 0.0
        self.result: dict = {}

    def get_instructions(self) -> dict:
        return self.instructions

    def post_progress(self, stage: str, percent: int, message: str) -> None:
        if stage == "write" and percent == 100:
            time.sleep(1.0)
            self.last_write_report_answered = time.time()

    def post_result(self, result: dict) -> None:
        self.result = result


def test_write_stage_ends_when_the_image_is_on_disk_not_when_its_last_report_is_answered(
    image, image_server, tmp_path, caplog
):
    """The agent's "stage=write done" line times the data path (stream, hash, write, fsync): the deploy
    bench measures the agents' throughput from it."""
    from provisioner.pxe.agent import CONFIG_DRIVE_SIZE, deploy

    path, sha, size = image
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as fh:
        fh.truncate(size + 2 * CONFIG_DRIVE_SIZE)
    service = _SlowLastWriteReportService(
        {
            "image": {"url": image_server.url_for(path.name), "sha256": sha, "size": size},
            "config": {"hostname": "n1"},
        }
    )
    caplog.set_level("INFO", logger="provisioner.pxe.agent")
    assert deploy(service, str(disk)) == 0  # type: ignore[arg-type]
    assert service.result["status"] == "ok"
    done = [r for r in caplog.records if r.getMessage().startswith("stage=write done")]
    assert len(done) == 1
    assert float(done[0].getMessage().rsplit("seconds=", 1)[1]) < 1.0
    assert done[0].created < service.last_write_report_answered
