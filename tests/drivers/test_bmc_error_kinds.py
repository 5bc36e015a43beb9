"""The kind of a failed BMC call (the label of neocloud_bmc_call_errors_total): a BMC that accepts the
connection and never answers is a timeout, one with nothing listening is unreachable; the code people and
clients see is bmc_unreachable for both."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from provisioner.drivers.base import BmcAccess
from provisioner.drivers.redfish import RedfishPowerDriver
from provisioner.errors import (
    BmcAuthFailed,
    BmcCommandFailed,
    BmcTimeout,
    BmcTlsError,
    BmcUnreachable,
    DriverError,
    UnsupportedOperation,
    bmc_error_kind,
)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 whose listener takes connections into its backlog and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def _redfish(port: int) -> RedfishPowerDriver:
    return RedfishPowerDriver(
        BmcAccess("redfish", "127.0.0.1", port, "admin", "pw", timeout=0.5, scheme="http")
    )


def test_a_redfish_bmc_that_never_answers_is_a_timeout(silent_port):
    with pytest.raises(BmcTimeout, match="did not answer within") as err:
        _redfish(silent_port).get_power_state()
    assert err.value.code == "bmc_unreachable"
    assert bmc_error_kind(err.value) == "timeout"


def test_a_redfish_bmc_with_nothing_listening_is_unreachable_not_a_timeout():
    with pytest.raises(BmcUnreachable, match="refused the connection") as err:
        _redfish(_closed_port()).get_power_state()
    assert not isinstance(err.value, BmcTimeout)
    assert bmc_error_kind(err.value) == "unreachable"


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (BmcTimeout("x"), "timeout"),
        (BmcTlsError("x"), "tls"),
        (BmcUnreachable("x"), "unreachable"),
        (BmcAuthFailed("x"), "auth"),
        (BmcCommandFailed("x"), "command"),
        (UnsupportedOperation("x"), "unsupported"),
        (DriverError("x"), "other"),
        (RuntimeError("x"), "other"),
    ],
)
def test_every_driver_error_has_one_kind(error, kind):
    assert bmc_error_kind(error) == kind
