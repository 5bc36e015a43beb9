"""The Redfish driver speaks the scheme in the node's record, whatever the port, and names a TLS failure.

Real servers on 127.0.0.1 only: the lab's Redfish service over plain HTTP, and the same service behind TLS
with a self-signed certificate made by ``openssl req``. Both listen on a free port that is neither 80 nor
8000, where the driver once guessed https: a plain-HTTP BMC there failed every call with "could not be
reached within 20.0 s" after a few milliseconds, the TLS handshake that really failed hidden.
"""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.bmc_redfish import RedfishHttpServer, RedfishService
from lab.machine import SimulatedServer
from lab.spec import LabNodeSpec
from provisioner.drivers.base import BmcAccess, PowerState
from provisioner.drivers.redfish import RedfishPowerDriver
from provisioner.errors import BmcTlsError, BmcUnreachable

ADDRESS = "127.0.0.1"
USER, PASSWORD = "admin", "pw-s3cret"


def _serve(tls_context: ssl.SSLContext | None) -> Iterator[tuple[int, SimulatedServer]]:
    spec = LabNodeSpec(
        "tls-01", 1, "h100-8x", "02:00:00:00:78:01", "redfish", ADDRESS, 0, USER, PASSWORD, "1"
    )
    server = SimulatedServer(spec, None)
    httpd = RedfishHttpServer(ADDRESS, 0, RedfishService({"1": server}, USER, PASSWORD))
    if tls_context is not None:
        httpd.socket = tls_context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    assert port not in (80, 8000)  # where the old port rule said https
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield port, server
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def plain_bmc() -> Iterator[tuple[int, SimulatedServer]]:
    yield from _serve(None)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("bmc-cert")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={ADDRESS}"),
            *("-addext", f"subjectAltName=IP:{ADDRESS}"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_bmc(certificate: tuple[Path, Path]) -> Iterator[tuple[int, SimulatedServer]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    yield from _serve(context)


def _driver(port: int, scheme: str, *, verify_tls: bool = False) -> RedfishPowerDriver:
    access = BmcAccess(
        "redfish",
        ADDRESS,
        port,
        USER,
        PASSWORD,
        system_id="1",
        timeout=5.0,
        verify_tls=verify_tls,
        scheme=scheme,
    )
    return RedfishPowerDriver(access)


def test_plain_http_on_any_port_works_when_the_record_says_http(
    plain_bmc: tuple[int, SimulatedServer],
) -> None:
    port, server = plain_bmc
    driver = _driver(port, "http")
    try:
        driver.power_on()
        assert server.power_state() == PowerState.ON
        assert driver.get_power_state() == PowerState.ON
    finally:
        driver.close()


def test_https_to_a_plain_http_bmc_is_named_a_tls_handshake_failure(
    plain_bmc: tuple[int, SimulatedServer],
) -> None:
    port, server = plain_bmc
    driver = _driver(port, "https")
    started = time.monotonic()
    try:
        with pytest.raises(BmcTlsError) as caught:
            driver.get_power_state()
    finally:
        driver.close()
    message = str(caught.value)
    assert f"TLS handshake with {ADDRESS}:{port} failed: " in message
    assert message.endswith("(is the BMC's scheme http?)")
    assert "wrong version number" in message  # OpenSSL's reason: a plain-HTTP answer where TLS was expected
    assert "could not be reached" not in message
    assert PASSWORD not in message
    assert isinstance(caught.value, BmcUnreachable)  # callers that record "unknown" power still do
    assert (caught.value.code, caught.value.retryable) == ("bmc_tls_failed", False)
    assert time.monotonic() - started < 5.0  # a configuration error, not a timeout
    assert server.power_state() == PowerState.OFF


def test_https_to_a_tls_bmc_works_without_verifying_its_certificate(
    tls_bmc: tuple[int, SimulatedServer],
) -> None:
    port, server = tls_bmc
    driver = _driver(port, "https")
    try:
        driver.power_on()
        assert server.power_state() == PowerState.ON
        driver.power_off()
        assert driver.get_power_state() == PowerState.OFF
    finally:
        driver.close()


def test_a_self_signed_certificate_that_must_verify_is_named(tls_bmc: tuple[int, SimulatedServer]) -> None:
    port, server = tls_bmc
    driver = _driver(port, "https", verify_tls=True)
    try:
        with pytest.raises(BmcTlsError) as caught:
            driver.power_on()
    finally:
        driver.close()
    message = str(caught.value)
    assert f"TLS handshake with {ADDRESS}:{port} failed: certificate verify failed: self-signed" in message
    assert "trusted CA" in message
    assert "could not be reached" not in message
    assert server.power_state() == PowerState.OFF


def test_http_to_a_tls_bmc_says_it_may_speak_https(tls_bmc: tuple[int, SimulatedServer]) -> None:
    port, _server = tls_bmc
    driver = _driver(port, "http")
    try:
        with pytest.raises(BmcUnreachable) as caught:
            driver.get_power_state()
    finally:
        driver.close()
    assert "set the node's BMC scheme to https" in str(caught.value)
