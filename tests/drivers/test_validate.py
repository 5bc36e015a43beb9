"""Every driver's ``validate`` refuses the node data it cannot work with, naming the node and the field, and
accepts a complete record. Pure: no hardware, no database (the Ansible classes are only imported)."""

from __future__ import annotations

import dataclasses

import pytest

from provisioner.drivers.ansible.drivers import AnsibleBurnInDriver, AnsibleDeployDriver
from provisioner.drivers.base import ImageRecord, NodeRecord
from provisioner.drivers.fake import FakePowerDriver
from provisioner.drivers.fake_deploy import FakeBurnInDriver, FakeDeployDriver
from provisioner.drivers.ipmi import IpmiPowerDriver
from provisioner.drivers.redfish import RedfishPowerDriver
from provisioner.errors import InvalidNodeData

IMAGE = ImageRecord(
    slug="ubuntu-24.04",
    url="http://images.example/ubuntu.raw",
    sha256="ab" * 32,
    format="raw",
    size_bytes=4096,
)
GOOD = NodeRecord(
    name="gpu-01",
    bmc_protocol="ipmi",
    bmc_address="10.0.0.5",
    bmc_port=623,
    bmc_scheme="https",  # Redfish's (a complete record for every power driver; IPMI ignores it)
    bmc_username="admin",
    bmc_password_readable=True,
    boot_mac="52:54:00:12:34:56",
    primary_address="198.18.0.10",
    server_type="h100-8x",
    burnin_expectations={"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 8, "gpu_memory_gib": 80},
    burnin_thresholds={"max_pcie_replays": 100},
    deploys=True,
    check_image=True,
    image=IMAGE,
)
POWER = [IpmiPowerDriver, RedfishPowerDriver, FakePowerDriver]
DEPLOY = [FakeDeployDriver, AnsibleDeployDriver]
BURNIN = [FakeBurnInDriver, AnsibleBurnInDriver]


def refused(driver: type, record: NodeRecord) -> InvalidNodeData:
    with pytest.raises(InvalidNodeData) as caught:
        driver.validate(record)
    err = caught.value
    assert err.node == record.name
    assert str(err).startswith(f"{record.name}: {err.field}: ")
    assert err.code == "invalid_node_data"
    return err


@pytest.mark.parametrize("driver", POWER + DEPLOY + BURNIN)
def test_a_complete_record_passes_every_driver(driver):
    driver.validate(GOOD)


@pytest.mark.parametrize("driver", POWER)
@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"bmc_address": ""}, "bmc_address", "no BMC address"),
        ({"bmc_address": "https://10.0.0.5"}, "bmc_address", "no scheme or path"),
        ({"bmc_address": "10.0.0.5 "}, "bmc_address", "not a host name"),
        ({"bmc_port": 0}, "bmc_port", "not a port"),
        ({"bmc_port": 70000}, "bmc_port", "not a port"),
        ({"bmc_port": None}, "bmc_port", "not a port"),
        ({"bmc_username": None}, "bmc_credential", "no BMC credential is stored"),
        ({"bmc_password_readable": False}, "bmc_credential", "cannot be decrypted"),
    ],
)
def test_power_drivers_refuse_an_incomplete_bmc_record(driver, change, field, words):
    err = refused(driver, dataclasses.replace(GOOD, **change))
    assert err.field == field
    assert words in err.reason


def test_ipmi_refuses_a_user_name_longer_than_ipmi_sends_and_redfish_takes_it():
    record = dataclasses.replace(GOOD, bmc_username="a-very-long-username")  # 20 bytes
    err = refused(IpmiPowerDriver, record)
    assert err.field == "bmc_credential"
    assert "20 bytes" in err.reason and "16" in err.reason
    RedfishPowerDriver.validate(record)
    IpmiPowerDriver.validate(dataclasses.replace(GOOD, bmc_username="x" * 16))


def test_redfish_needs_a_user_name_where_ipmi_allows_the_anonymous_user():
    record = dataclasses.replace(GOOD, bmc_username="")
    err = refused(RedfishPowerDriver, record)
    assert err.field == "bmc_credential"
    assert "no user name" in err.reason
    IpmiPowerDriver.validate(record)


def test_redfish_needs_an_ipv6_bmc_address_in_brackets_to_build_its_url():
    record = dataclasses.replace(GOOD, bmc_address="fd00::5")
    err = refused(RedfishPowerDriver, record)
    assert err.field == "bmc_address"
    assert "[fd00::5]" in err.reason
    RedfishPowerDriver.validate(dataclasses.replace(GOOD, bmc_address="[fd00::5]"))
    IpmiPowerDriver.validate(record)  # pyghmi takes the bare address


@pytest.mark.parametrize("scheme", ["", "ftp", "HTTPS"])
def test_redfish_needs_its_url_scheme_in_the_record_and_ipmi_ignores_it(scheme):
    record = dataclasses.replace(GOOD, bmc_scheme=scheme)
    err = refused(RedfishPowerDriver, record)
    assert err.field == "bmc_scheme"
    assert "http or https" in err.reason
    IpmiPowerDriver.validate(record)
    RedfishPowerDriver.validate(dataclasses.replace(GOOD, bmc_scheme="http"))


@pytest.mark.parametrize("driver", DEPLOY)
@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"boot_mac": ""}, "boot_mac", "no boot MAC"),
        ({"boot_mac": "52-54-00-12-34-56"}, "boot_mac", "not a MAC address"),
        ({"image": None}, "image", "no image chosen"),
        ({"image": dataclasses.replace(IMAGE, sha256="")}, "image", "image ubuntu-24.04 has no valid sha256"),
        ({"image": dataclasses.replace(IMAGE, sha256="AB" * 32)}, "image", "no valid sha256"),
    ],
)
def test_deploy_drivers_refuse_a_node_they_cannot_boot_or_an_image_they_cannot_verify(
    driver, change, field, words
):
    err = refused(driver, dataclasses.replace(GOOD, **change))
    assert err.field == field
    assert words in err.reason


@pytest.mark.parametrize("driver", DEPLOY)
def test_work_that_writes_no_image_needs_none(driver):
    driver.validate(dataclasses.replace(GOOD, image=None, check_image=False))
    driver.validate(dataclasses.replace(GOOD, image=None, check_image=False, deploys=False))


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"primary_address": ""}, "primary_address", "no primary address"),
        ({"image": dataclasses.replace(IMAGE, url="file:///srv/u.raw")}, "image", "no http(s) URL"),
        ({"image": dataclasses.replace(IMAGE, format="qcow2")}, "image", "writes raw images only"),
        ({"image": dataclasses.replace(IMAGE, size_bytes=0)}, "image", "has no size"),
    ],
)
def test_the_ansible_deploy_needs_an_address_to_configure_and_an_image_its_agent_can_write(
    change, field, words
):
    record = dataclasses.replace(GOOD, **change)
    err = refused(AnsibleDeployDriver, record)
    assert err.field == field
    assert words in err.reason
    FakeDeployDriver.validate(record)  # the simulation writes no network and streams nothing


def test_an_ansible_wipe_needs_no_primary_address():
    AnsibleDeployDriver.validate(
        dataclasses.replace(GOOD, primary_address="", deploys=False, check_image=False)
    )


@pytest.mark.parametrize("driver", BURNIN)
@pytest.mark.parametrize(
    ("expect", "thresholds", "field"),
    [
        ({"gpu_model": "", "gpu_count": 8}, {}, "server_type.gpu_model"),
        ({"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 0}, {}, "server_type.gpu_count"),
        (
            {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 8},
            {"max_bogus": 1},
            "server_type.burnin_thresholds",
        ),
        (
            {"gpu_model": "NVIDIA H100 80GB HBM3", "gpu_count": 8},
            {"max_pcie_replays": "many"},
            "server_type.burnin_thresholds",
        ),
    ],
)
def test_burnin_drivers_refuse_a_server_type_without_expectations_or_with_unknown_thresholds(
    driver, expect, thresholds, field
):
    err = refused(driver, dataclasses.replace(GOOD, burnin_expectations=expect, burnin_thresholds=thresholds))
    assert err.field == field
    assert "h100-8x" in err.reason
