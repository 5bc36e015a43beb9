"""provisioner.hardware: deploy and burn-in drivers chosen per server type (blank: the installation's default),
and a node validated against the drivers the accepted work uses."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ValidationError

from provisioner import hardware
from provisioner.drivers.ansible.drivers import AnsibleBurnInDriver, AnsibleDeployDriver
from provisioner.drivers.fake_deploy import FakeBurnInDriver, FakeDeployDriver
from provisioner.errors import InvalidNodeData, InvalidRequest, UnsupportedOperation
from provisioner.lifecycle import Actor
from provisioner.models import BmcCredential, Node, ServerType
from provisioner.services.inventory import enroll
from provisioner.states import OperationKind


@pytest.fixture
def h100_node(inventory):
    return Node.objects.select_related("server_type").get(name="node-h100-8x-01")


def test_a_server_type_chooses_its_own_deploy_and_burnin_drivers_over_the_installation_default(
    inventory, h100_node, settings, tmp_path
):
    settings.NEOCLOUD_DEPLOY_DRIVER = settings.NEOCLOUD_BURNIN_DRIVER = "fake"
    settings.NEOCLOUD_LAB_DIR = tmp_path  # no lab: the Ansible drivers find no lab spec
    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="ansible", burnin_driver="ansible")
    h100 = Node.objects.select_related("server_type").get(pk=h100_node.pk)
    a100 = Node.objects.select_related("server_type").get(name="node-a100-8x-01")
    assert isinstance(hardware.deploy_driver(h100), AnsibleDeployDriver)
    assert isinstance(hardware.burnin_driver(h100), AnsibleBurnInDriver)
    assert isinstance(hardware.deploy_driver(a100), FakeDeployDriver)  # blank: the default
    assert isinstance(hardware.burnin_driver(a100), FakeBurnInDriver)

    settings.NEOCLOUD_DEPLOY_DRIVER = settings.NEOCLOUD_BURNIN_DRIVER = "ansible"
    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="fake", burnin_driver="")
    h100 = Node.objects.select_related("server_type").get(pk=h100_node.pk)
    assert isinstance(hardware.deploy_driver(h100), FakeDeployDriver)
    assert isinstance(hardware.burnin_driver(h100), AnsibleBurnInDriver)  # blank: the default
    assert isinstance(hardware.deploy_driver(a100), AnsibleDeployDriver)


def test_a_driver_name_that_matches_no_driver_is_refused_with_the_name(inventory, h100_node):
    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="pxe")  # past the model's choices
    node = Node.objects.select_related("server_type").get(pk=h100_node.pk)
    with pytest.raises(UnsupportedOperation, match="server type h100-8x: unknown deploy driver 'pxe'"):
        hardware.deploy_driver(node)
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(node, OperationKind.CLEAN)
    assert caught.value.field == "server_type.deploy_driver"
    assert "'pxe'" in caught.value.reason

    st = ServerType.objects.get(slug="h100-8x")
    st.deploy_driver, st.burnin_driver = "fake", "nvml"
    with pytest.raises(ValidationError) as invalid:
        st.full_clean()
    assert set(invalid.value.message_dict) == {"burnin_driver"}


def test_inventory_server_types_set_their_drivers_and_an_unknown_name_is_refused(inventory):
    actor = Actor.system("test")
    enroll(
        {"server_types": [{"slug": "h100-8x", "deploy_driver": "ansible", "burnin_driver": ""}]}, actor=actor
    )
    st = ServerType.objects.get(slug="h100-8x")
    assert (st.deploy_driver, st.burnin_driver) == ("ansible", "")
    enroll({"server_types": [{"slug": "h100-8x", "name": "8x H100"}]}, actor=actor)  # left out: kept
    assert ServerType.objects.get(slug="h100-8x").deploy_driver == "ansible"
    with pytest.raises(
        InvalidRequest, match=r"server type h100-8x: unknown burnin_driver 'dcgm' \(expected one of"
    ):
        enroll({"server_types": [{"slug": "h100-8x", "burnin_driver": "dcgm"}]}, actor=actor)
    assert ServerType.objects.get(slug="h100-8x").burnin_driver == ""


def test_a_node_without_a_bmc_credential_or_with_one_no_key_decrypts_fails_power_validation(
    inventory, h100_node, settings
):
    other_key = Fernet.generate_key().decode()
    BmcCredential.objects.filter(node=h100_node).update(
        password_encrypted=Fernet(other_key).encrypt(b"secret-bmc-pw").decode()
    )
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(Node.objects.get(pk=h100_node.pk), OperationKind.POWER)
    assert (caught.value.node, caught.value.field) == ("node-h100-8x-01", "bmc_credential")
    assert "cannot be decrypted" in caught.value.reason
    # the key added to the key list (a rotation), the same stored password reads: no stale answer
    settings.NEOCLOUD_CREDENTIAL_KEYS = f"{settings.NEOCLOUD_CREDENTIAL_KEYS},{other_key}"
    hardware.validate_for(Node.objects.get(pk=h100_node.pk), OperationKind.POWER)

    BmcCredential.objects.filter(node=h100_node).delete()
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(Node.objects.get(pk=h100_node.pk), OperationKind.POWER)
    assert caught.value.field == "bmc_credential"
    assert "no BMC credential is stored" in caught.value.reason


def test_an_unknown_bmc_protocol_is_the_nodes_problem(inventory, h100_node):
    Node.objects.filter(pk=h100_node.pk).update(bmc_protocol="snmp")
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(Node.objects.get(pk=h100_node.pk), OperationKind.POWER)
    assert caught.value.field == "bmc_protocol"
    assert "'snmp'" in caught.value.reason


def test_work_is_validated_with_the_drivers_it_uses_and_an_image_only_where_it_writes_one(
    inventory, h100_node
):
    node = Node.objects.get(pk=h100_node.pk)
    assert node.image_id is None
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(node, OperationKind.REIMAGE)
    assert caught.value.field == "image"
    hardware.validate_for(node, OperationKind.REIMAGE, image=inventory.image)
    Node.objects.filter(pk=node.pk).update(image=inventory.image)
    hardware.validate_for(Node.objects.get(pk=node.pk), OperationKind.REIMAGE)  # its own image, again
    hardware.validate_for(node, OperationKind.CLEAN)  # a wipe writes no image

    # burn-in expectations matter to the work that burns in, not to a wipe
    ServerType.objects.filter(slug="h100-8x").update(gpu_model="")
    node = Node.objects.get(pk=node.pk)
    hardware.validate_for(node, OperationKind.CLEAN)
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(node, OperationKind.PROVISION, image=inventory.image)
    assert caught.value.field == "server_type.gpu_model"


def test_the_ansible_deploy_needs_a_primary_address_to_deploy_but_not_to_wipe(inventory, h100_node):
    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="ansible")
    node = Node.objects.select_related("server_type").get(pk=h100_node.pk)
    assert node.primary_address is None
    hardware.validate_for(node, OperationKind.CLEAN)
    with pytest.raises(InvalidNodeData) as caught:
        hardware.validate_for(node, OperationKind.REIMAGE, image=inventory.image)
    assert caught.value.field == "primary_address"
    assert [e.field for e in hardware.pool_problems(node).values()] == ["primary_address"]


def test_unfit_nodes_lists_each_failing_node_with_its_first_problem(inventory):
    Node.objects.filter(name="node-h100-8x-02").update(bmc_address="")
    Node.objects.filter(name="node-h100-8x-03").update(boot_mac="")
    BmcCredential.objects.filter(node__name="node-h100-8x-04").delete()
    nodes = Node.objects.filter(server_type=inventory.h100)
    unfit = hardware.unfit_nodes(inventory.h100, nodes)
    assert {Node.objects.get(pk=pk).name: err.field for pk, err in unfit.items()} == {
        "node-h100-8x-02": "bmc_address",
        "node-h100-8x-03": "boot_mac",
        "node-h100-8x-04": "bmc_credential",
    }
    # the same problems the operator's view of one node gives
    for pk, err in unfit.items():
        node = Node.objects.select_related("server_type").get(pk=pk)
        assert str(next(iter(hardware.pool_problems(node).values()))) == str(err)
