"""The lab NetBox fails loudly, in one sentence, when a part it needs is missing (the NetBox tests then error
with that sentence instead of skipping)."""

from __future__ import annotations

import socket

import pytest

from lab import netbox_server


def test_a_python_that_is_not_3_12_is_named(monkeypatch) -> None:
    monkeypatch.setenv("NEOCLOUD_NETBOX_PYTHON", "/bin/false")
    with pytest.raises(
        netbox_server.NetboxLabError, match=r"^NEOCLOUD_NETBOX_PYTHON=/bin/false is not a working"
    ):
        netbox_server.find_python()


def test_no_postgresql_is_one_sentence(monkeypatch, tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("NEOCLOUD_CACHE", str(tmp_path))
    (tmp_path / "netbox" / netbox_server.NETBOX_VERSION).mkdir(parents=True)
    (tmp_path / "netbox" / netbox_server.NETBOX_VERSION / ".neocloud-ready").write_text("ready\n")
    with pytest.raises(
        netbox_server.NetboxLabError, match=rf"^NetBox needs PostgreSQL: cannot connect to 127.0.0.1:{port}: "
    ):
        netbox_server.ensure_template(f"postgres://postgres@127.0.0.1:{port}/postgres")
