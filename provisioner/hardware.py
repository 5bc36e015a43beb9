"""The drivers of a node: the one place that picks implementations, and that validates a node against them.

Power drivers go by the node's BMC protocol; deploy and burn-in drivers by its server type
(``ServerType.deploy_driver``, ``burnin_driver``), blank meaning the installation's default
(NEOCLOUD_DEPLOY_DRIVER, NEOCLOUD_BURNIN_DRIVER).

Validation (``validate_for``, ``unfit_nodes``) runs each driver's ``validate`` on the node's ``NodeRecord``:
no hardware is contacted, so it runs inside the request that accepts work and over every node a reservation
could be given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db.models import QuerySet

from provisioner import crypto
from provisioner.drivers.base import (
    BootSetting,
    BurnInDriver,
    DeployDriver,
    ImageRecord,
    NodeRecord,
    PowerDriver,
    PowerState,
)
from provisioner.drivers.registry import (
    BURNIN_DRIVERS,
    DEPLOY_DRIVERS,
    power_driver_class,
    power_driver_for,
    switch_driver_for,
)
from provisioner.drivers.switch import SwitchDriver
from provisioner.errors import (
    DriverError,
    InvalidNodeData,
    InvalidRequest,
    UnknownSwitch,
    UnknownSwitchPort,
    UnsupportedOperation,
    bmc_error_kind,
)
from provisioner.models import BmcCallErrors, Image, Node, ServerType, SiteNetwork, Switch
from provisioner.states import OperationKind

POWER, DEPLOY, BURNIN = "power", "deploy", "burnin"
INTERFACES = (POWER, DEPLOY, BURNIN)

# The drivers each kind of work uses: what is validated when that work is accepted.
DRIVERS_USED: dict[str, tuple[str, ...]] = {
    OperationKind.PROVISION: INTERFACES,
    OperationKind.REIMAGE: INTERFACES,
    OperationKind.RELEASE: (POWER, DEPLOY),  # the wipe
    OperationKind.CLEAN: (POWER, DEPLOY),
    OperationKind.BURNIN: (BURNIN,),
    OperationKind.POWER: (POWER,),
    OperationKind.WARM_UP: INTERFACES,
}
DEPLOYS = frozenset({OperationKind.PROVISION, OperationKind.REIMAGE, OperationKind.WARM_UP})
# Work that moves a network-managed node's switch port (issue 18): its cabling and switch are validated too.
NETWORK = "network"
MOVES_PORTS = frozenset(
    {
        OperationKind.PROVISION,
        OperationKind.REIMAGE,
        OperationKind.RELEASE,
        OperationKind.CLEAN,
        OperationKind.BURNIN,
        OperationKind.WARM_UP,
    }
)
T = TypeVar("T")


def deploy_driver_name(server_type: ServerType) -> str:
    """The deploy driver of this type's servers: its own choice, else the installation's default."""
    return server_type.deploy_driver or settings.NEOCLOUD_DEPLOY_DRIVER


def burnin_driver_name(server_type: ServerType) -> str:
    """The burn-in driver of this type's servers: its own choice, else the installation's default."""
    return server_type.burnin_driver or settings.NEOCLOUD_BURNIN_DRIVER


def _known(name: str, names: Sequence[str], what: str, server_type: ServerType) -> str:
    if name not in names:
        raise UnsupportedOperation(
            f"server type {server_type.slug}: unknown {what} driver {name!r} (expected one of "
            f"{', '.join(names)}, or blank for the installation's default)"
        )
    return name


def deploy_driver_class(server_type: ServerType) -> type[DeployDriver]:
    """:raises UnsupportedOperation: the type names a deploy driver that does not exist."""
    if _known(deploy_driver_name(server_type), DEPLOY_DRIVERS, "deploy", server_type) == "ansible":
        from provisioner.drivers.ansible.drivers import AnsibleDeployDriver

        return AnsibleDeployDriver
    from provisioner.drivers.fake_deploy import FakeDeployDriver

    return FakeDeployDriver


def burnin_driver_class(server_type: ServerType) -> type[BurnInDriver]:
    """:raises UnsupportedOperation: the type names a burn-in driver that does not exist."""
    if _known(burnin_driver_name(server_type), BURNIN_DRIVERS, "burn-in", server_type) == "ansible":
        from provisioner.drivers.ansible.drivers import AnsibleBurnInDriver

        return AnsibleBurnInDriver
    from provisioner.drivers.fake_deploy import FakeBurnInDriver

    return FakeBurnInDriver


class CountedPowerDriver(PowerDriver):
    """A node's power driver whose failed calls are counted (BmcCallErrors, by protocol and kind) before
    their error goes on to the caller unchanged: the engine's steps, the fake deploy driver and every
    other process that drives a BMC through :func:`power_driver` feed the same counts."""

    def __init__(self, driver: PowerDriver) -> None:
        super().__init__(driver.access)
        self.driver = driver

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except DriverError as err:
            BmcCallErrors.objects.add(self.access.protocol, bmc_error_kind(err))
            raise

    def get_power_state(self) -> PowerState:
        return self._call(self.driver.get_power_state)

    def power_on(self) -> None:
        self._call(self.driver.power_on)

    def power_off(self, *, soft: bool = False) -> None:
        self._call(self.driver.power_off, soft=soft)

    def reset(self) -> None:
        self._call(self.driver.reset)

    def set_boot_device(self, setting: BootSetting) -> None:
        self._call(self.driver.set_boot_device, setting)

    def get_boot_device(self) -> BootSetting:
        return self._call(self.driver.get_boot_device)

    def get_sensors(self) -> Mapping[str, float]:
        return self._call(self.driver.get_sensors)

    def close(self) -> None:
        self.driver.close()


def power_driver(node: Node) -> PowerDriver:
    """The node's power driver (by its BMC protocol), its failed calls counted (CountedPowerDriver).

    :raises UnsupportedOperation: unknown protocol.
    """
    return CountedPowerDriver(power_driver_for(node.bmc_access()))


def deploy_driver(node: Node) -> DeployDriver:
    """The deploy driver of the node's server type, built for the node.

    :raises UnsupportedOperation: the type names a deploy driver that does not exist.
    """
    if _known(deploy_driver_name(node.server_type), DEPLOY_DRIVERS, "deploy", node.server_type) == "ansible":
        from provisioner.drivers.ansible.drivers import AnsibleDeployDriver

        return AnsibleDeployDriver(node)
    from provisioner.drivers.fake_deploy import FakeDeployDriver

    return FakeDeployDriver(
        power_driver(node), settings.NEOCLOUD_FAKE_HW_DIR, settings.NEOCLOUD_FAKE_AGENT_SECONDS
    )


def burnin_driver(node: Node) -> BurnInDriver:
    """The burn-in driver of the node's server type, built for the node.

    :raises UnsupportedOperation: the type names a burn-in driver that does not exist.
    """
    if _known(burnin_driver_name(node.server_type), BURNIN_DRIVERS, "burn-in", node.server_type) == "ansible":
        from provisioner.drivers.ansible.drivers import AnsibleBurnInDriver

        return AnsibleBurnInDriver(node)
    from provisioner.drivers.fake_deploy import FakeBurnInDriver

    return FakeBurnInDriver(settings.NEOCLOUD_FAKE_HW_DIR)


def image_record(image: Image) -> ImageRecord:
    return ImageRecord(
        slug=image.slug, url=image.url, sha256=image.sha256, format=image.format, size_bytes=image.size_bytes
    )


def node_record(
    node: Node, *, deploys: bool = False, check_image: bool = False, image: Image | None = None
) -> NodeRecord:
    """What the drivers validate of ``node`` (its credential and server type read, the password only
    tried), for work that ``deploys`` an OS and, when ``check_image``, writes ``image``."""
    try:
        cred = node.bmc_credential
    except ObjectDoesNotExist:
        cred = None
    return NodeRecord(
        name=node.name,
        bmc_protocol=node.bmc_protocol,
        bmc_address=node.bmc_address,
        bmc_port=node.bmc_port,
        bmc_system_id=node.bmc_system_id,
        bmc_scheme=node.bmc_scheme,
        bmc_username=cred.username if cred is not None else None,
        bmc_password_readable=cred is not None and crypto.decryptable(cred.password_encrypted),
        boot_mac=node.boot_mac,
        primary_address=node.primary_address or "",
        ssh_endpoint_address=node.ssh_endpoint_address,
        deploys=deploys,
        check_image=check_image,
        image=image_record(image) if image is not None else None,
        **_type_fields(node.server_type),
    )


def _type_fields(server_type: ServerType) -> dict[str, Any]:
    """The server type's part of a NodeRecord."""
    return {
        "server_type": server_type.slug,
        "burnin_expectations": server_type.burnin_expectations(),
        "burnin_thresholds": server_type.burnin_thresholds or {},
    }


def problems(
    record: NodeRecord,
    server_type: ServerType,
    interfaces: Iterable[str] = INTERFACES,
    classes: dict[tuple[str, str], Any] | None = None,
) -> dict[str, InvalidNodeData]:
    """The first problem each of ``interfaces``' drivers finds in ``record`` (none: an empty dict), in the
    order of ``interfaces``. No I/O. ``classes``: a memo of the driver classes, for callers validating many
    nodes of ``server_type``."""
    classes = {} if classes is None else classes
    found: dict[str, InvalidNodeData] = {}
    for interface in interfaces:
        key = (interface, record.bmc_protocol if interface == POWER else "")
        if key not in classes:
            classes[key] = _driver_class(interface, record.bmc_protocol, server_type)
        cls = classes[key]
        try:
            if isinstance(cls, str):  # the name matches no driver: the node's problem
                raise InvalidNodeData(record.name, _NAMED_BY[interface], cls)
            cls.validate(record)
        except InvalidNodeData as exc:
            found[interface] = exc
    return found


# The field that names a node's driver, per interface.
_NAMED_BY = {POWER: "bmc_protocol", DEPLOY: "server_type.deploy_driver", BURNIN: "server_type.burnin_driver"}


def _driver_class(
    interface: str, protocol: str, server_type: ServerType
) -> type[PowerDriver] | type[DeployDriver] | type[BurnInDriver] | str:
    """The class validating ``interface`` for a node; why none, when the name matches no driver."""
    try:
        if interface == POWER:
            return power_driver_class(protocol)
        if interface == DEPLOY:
            return deploy_driver_class(server_type)
        return burnin_driver_class(server_type)
    except UnsupportedOperation as exc:
        return str(exc)


def validate_for(node: Node, kind: str, *, image: Image | None = None) -> None:
    """Validate ``node`` for work of ``kind`` (an OperationKind) with the drivers that work uses; for
    work that writes an image, ``image`` (None: the node's own, to write again). Cheap, no hardware contact:
    call it when the work is accepted.

    :raises InvalidNodeData: the first problem found, naming the node and the field.
    """
    deploys = kind in DEPLOYS
    if deploys and image is None and node.image_id is not None:
        image = node.image
    record = node_record(node, deploys=deploys, check_image=deploys, image=image)
    found = problems(record, node.server_type, DRIVERS_USED[kind])
    if found:
        raise next(iter(found.values()))
    if kind in MOVES_PORTS:
        problem = network_problem(node)
        if problem is not None:
            raise problem


def network_managed(node: Node) -> bool:
    """Whether the node's site has a network (SiteNetwork): then the lifecycle moves its switch port."""
    return node.rack_id is not None and SiteNetwork.objects.filter(site__racks=node.rack_id).exists()


def network_problem(node: Node) -> InvalidNodeData | None:
    """Why a network-managed node's port could not be moved (no cabling recorded, its switch not
    registered or unusable, a port name that switch cannot have); None when it can, or when its site is not
    network-managed. No I/O (whether the port exists is the switch's ``validate``, run by the first move)."""
    if not network_managed(node):
        return None
    try:
        node_switch_port(node)
    except InvalidNodeData as exc:
        return exc
    return None


def _cabling_problem(
    name: str, switch_name: str, switch_port: str, drivers: dict[str, SwitchDriver | str]
) -> InvalidNodeData | None:
    """node_switch_port's checks over plain values, with a memo of the switches' drivers (or why none)."""
    if not switch_name or not switch_port:
        return InvalidNodeData(
            name,
            "switch_name" if not switch_name else "switch_port",
            "no switch cabling is recorded for the boot NIC; set switch name and port in the inventory or NetBox",
        )
    if switch_name not in drivers:
        try:
            drivers[switch_name] = switch_driver(switch_name)
        except (UnknownSwitch, UnsupportedOperation, InvalidRequest) as exc:
            drivers[switch_name] = str(exc)
    driver = drivers[switch_name]
    if isinstance(driver, str):
        return InvalidNodeData(name, "switch_name", driver)
    try:
        driver.validate_port_name(switch_name, switch_port)
    except UnknownSwitchPort as exc:
        return InvalidNodeData(name, "switch_port", str(exc))
    return None


# What unfit_nodes reads of each node, as plain values: it validates every bookable node of a type on each
# booking, and building model instances cost it several times what the validation does.
RECORD_COLUMNS = (
    "pk",
    "name",
    "bmc_protocol",
    "bmc_address",
    "bmc_port",
    "bmc_system_id",
    "bmc_scheme",
    "boot_mac",
    "primary_address",
    "ssh_endpoint_address",
    "bmc_credential__username",
    "bmc_credential__password_encrypted",
    "rack__site__network__id",  # None: the site is not network-managed
    "switch_name",
    "switch_port",
)


def unfit_nodes(server_type: ServerType, nodes: QuerySet[Node]) -> dict[int, InvalidNodeData]:
    """Of ``nodes`` (all of ``server_type``), those that could not be provisioned, by id, with the first
    problem found (what ``pool_problems`` finds, in one query). The image is the reservation's business
    (``image_problem``), so it is not checked here."""
    return unfit_records(server_type, nodes.order_by().values_list(*RECORD_COLUMNS))


# Where a row of RECORD_COLUMNS says whether the node's site is network-managed (not None: it is).
SITE_NETWORK_COLUMN = RECORD_COLUMNS.index("rack__site__network__id")


def unfit_records(server_type: ServerType, rows: Iterable[Sequence[Any]]) -> dict[int, InvalidNodeData]:
    """``unfit_nodes`` of nodes read as rows of RECORD_COLUMNS (by a caller that reads them its own way)."""
    type_fields = _type_fields(server_type)
    interfaces = DRIVERS_USED[OperationKind.PROVISION]
    classes: dict[tuple[str, str], Any] = {}
    switches: dict[str, SwitchDriver | str] = {}
    out: dict[int, InvalidNodeData] = {}
    for (
        pk,
        name,
        protocol,
        address,
        port,
        system_id,
        scheme,
        mac,
        primary,
        endpoint,
        username,
        token,
        site_network,
        switch_name,
        switch_port,
    ) in rows:
        record = NodeRecord(
            name=name,
            bmc_protocol=protocol,
            bmc_address=address,
            bmc_port=port,
            bmc_system_id=system_id,
            bmc_scheme=scheme,
            bmc_username=username,  # None: no credential row (the join found none)
            bmc_password_readable=token is not None and crypto.decryptable(token),
            boot_mac=mac,
            primary_address=primary or "",
            ssh_endpoint_address=endpoint,
            deploys=True,
            **type_fields,
        )
        found = problems(record, server_type, interfaces, classes)
        if found:
            out[pk] = next(iter(found.values()))
        elif site_network is not None:
            problem = _cabling_problem(name, switch_name, switch_port, switches)
            if problem is not None:
                out[pk] = problem
    return out


def pool_problems(node: Node) -> dict[str, InvalidNodeData]:
    """What keeps ``node`` out of the pool reservations draw from: the first problem each of its drivers'
    validation finds in its record for provisioning, by interface (empty: none). For operators."""
    found = problems(node_record(node, deploys=True), node.server_type, DRIVERS_USED[OperationKind.PROVISION])
    problem = network_problem(node)
    if problem is not None:
        found[NETWORK] = problem
    return found


def image_problem(server_type: ServerType, image: Image) -> str:
    """Why the deploy driver of ``server_type`` cannot write ``image`` ("" when it can), completing
    "image <slug> ...". An unknown driver name is the type's problem, found with its nodes."""
    try:
        cls = deploy_driver_class(server_type)
    except UnsupportedOperation:
        return ""
    return cls.image_problem(image_record(image))


def switch_driver(switch_name: str, timeout: float = 10.0) -> SwitchDriver:
    """The driver for the registered switch ``switch_name`` (a node's ``switch_name``). No I/O.

    :raises UnknownSwitch: no switch of that name is registered.
    :raises UnsupportedOperation: its driver name is unknown.
    :raises InvalidRequest: its record lacks an address, port, username or secret.
    """
    switch = Switch.objects.filter(name=switch_name).first()
    if switch is None:
        raise UnknownSwitch(
            f"switch {switch_name!r} is not registered: add it (address and login) before moving its ports"
        )
    return switch_driver_for(switch.access(timeout))


def node_switch_port(node: Node, timeout: float = 10.0) -> tuple[SwitchDriver, str]:
    """The driver of the switch ``node``'s boot NIC is cabled to, and the port, from its recorded cabling
    (``switch_name``, ``switch_port``). No I/O: whether the port exists is the switch's ``validate``.

    :raises InvalidNodeData: no cabling is recorded, the switch is not registered or its record is unusable,
        or the port cannot be a port of that switch; naming the node and the field.
    """
    if not node.switch_name or not node.switch_port:
        raise InvalidNodeData(
            node.name,
            "switch_name" if not node.switch_name else "switch_port",
            "no switch cabling is recorded for the boot NIC; set switch name and port in the inventory or NetBox",
        )
    try:
        driver = switch_driver(node.switch_name, timeout)
    except (UnknownSwitch, UnsupportedOperation, InvalidRequest) as exc:
        raise InvalidNodeData(node.name, "switch_name", str(exc)) from None
    try:
        driver.validate_port_name(node.switch_name, node.switch_port)
    except UnknownSwitchPort as exc:
        raise InvalidNodeData(node.name, "switch_port", str(exc)) from None
    return driver, node.switch_port
