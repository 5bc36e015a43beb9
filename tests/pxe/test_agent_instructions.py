"""The deploy agent's check of its instructions: what reaches the config drive is what the node's first boot
writes into line-oriented files (/etc/hostname, root's authorized_keys)."""

from __future__ import annotations

import copy

import pytest

from provisioner.pxe.agent import AgentError, validate_instructions
from provisioner.pxe.configdrive import read_config_drive

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGw2a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5 alice@example"
INSTRUCTIONS = {
    "action": "deploy",
    "node": "lab-node-01",
    "image": {"url": "http://10.0.0.2:8081/demo.img", "sha256": "ab" * 32, "format": "raw", "size": 4096},
    "config": {
        "hostname": "lab-node-01",
        "authorized_keys": [KEY],
        "network": {"address": "198.18.0.5", "prefix": 15},
    },
}


def _with(path: tuple[str, ...], value):
    document = copy.deepcopy(INSTRUCTIONS)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


def test_good_instructions_pass():
    assert validate_instructions(copy.deepcopy(INSTRUCTIONS)) == INSTRUCTIONS


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("config", "hostname"), "lab-node-01\nmallory", "config.hostname"),
        (("config", "hostname"), "lab-node-01\n", "config.hostname"),
        (("config", "hostname"), "lab node 01", "config.hostname"),
        (("config", "hostname"), "../../etc/passwd", "config.hostname"),
        (
            ("config", "authorized_keys"),
            [KEY + "\nssh-ed25519 AAAAmallory mallory@evil"],
            "config.authorized_keys",
        ),
        (("config", "authorized_keys"), [KEY + "\r"], "config.authorized_keys"),
        (("config", "authorized_keys"), [KEY + "\0"], "config.authorized_keys"),
        (("image", "sha256"), "ab" * 32 + "\n", "image.sha256"),
    ],
)
def test_text_that_would_break_out_of_its_line_is_refused(path, value, field):
    with pytest.raises(AgentError) as info:
        validate_instructions(_with(path, value))
    assert info.value.code == "bad_instructions"
    assert field in str(info.value)


def test_instructions_refused_by_the_agent_are_reported_as_the_deploys_failure(tmp_path):
    """The token was good, so the boot service hears why: without a result the engine waited out its
    timeout and then blamed a slow agent."""
    from bootservice import BootService

    from provisioner.pxe.agent import EXIT_NO_INSTRUCTIONS, AgentApi, deploy

    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xa5" * (4 << 20))
    with BootService() as boot:
        token = "tok-badinstr-0123456789abcdef"
        deployment = boot.add_deployment(
            "lab-node-01", "52:54:00:aa:bb:01", token, "http://x/i.img", "ab" * 32, 1
        )
        deployment.instructions["config"]["hostname"] = "lab-node-01\nmallory"

        assert deploy(AgentApi(boot.api_url, token, timeout=5), str(disk)) == EXIT_NO_INSTRUCTIONS

    assert deployment.result is not None
    assert deployment.result["status"] == "failed" and deployment.result["error_code"] == "bad_instructions"
    assert "config.hostname" in deployment.result["message"]
    assert disk.read_bytes() == b"\xa5" * (4 << 20)  # nothing was written


def test_a_failure_nobody_foresaw_is_reported_and_the_disk_never_looks_deployed(tmp_path, monkeypatch):
    """Anything the agent raises (here: the config drive writer hits a bug) reaches the boot service as a
    failed result at once, with the disk's markers wiped, instead of leaving the engine to its timeout."""
    from bootservice import BootService

    from provisioner.pxe import agent
    from provisioner.pxe.images import build_demo_image
    from provisioner.pxe.imageserver import ImageServer

    def broken(_disk: str, _document: dict) -> None:
        raise KeyError("network")

    monkeypatch.setattr(agent, "write_config_drive", broken)
    sha, size = build_demo_image(tmp_path / "demo.img", size_mib=8)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xa5" * (16 << 20))
    with ImageServer(tmp_path) as images, BootService() as boot:
        token = "tok-unforeseen-0123456789abcdef"
        deployment = boot.add_deployment(
            "lab-node-01", "52:54:00:aa:bb:01", token, images.url_for("demo.img"), sha, size
        )
        assert (
            agent.deploy(agent.AgentApi(boot.api_url, token, timeout=5), str(disk))
            == agent.EXIT_DEPLOY_FAILED
        )

    result = deployment.result
    assert result is not None and result["status"] == "failed" and result["error_code"] == "agent_failed"
    assert "KeyError" in result["message"] and "network" in result["message"]
    assert read_config_drive(str(disk)) is None
    with open(disk, "rb") as fh:
        assert fh.read(1 << 20) == bytes(1 << 20)
