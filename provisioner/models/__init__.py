"""Neocloud's domain model, split by concern."""

from provisioner.models.audit import AuditEvent
from provisioner.models.counters import BmcCallErrors
from provisioner.models.events import Event
from provisioner.models.inventory import BmcCredential, Image, InventorySync, Node, Rack, ServerType, Site
from provisioner.models.metering import ServerTypePrice
from provisioner.models.network import NetworkAttachment, SiteNetwork, Switch, TenantNetwork
from provisioner.models.operations import LogLine, Operation, Rollout, Step
from provisioner.models.reservations import Allocation, BurnInReport, DeployTicket, Reservation
from provisioner.models.tenancy import ApiToken, Membership, Organization, SignInFailure, SSHKey
from provisioner.models.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint

__all__ = [
    "Allocation",
    "ApiToken",
    "AuditEvent",
    "BmcCallErrors",
    "BmcCredential",
    "BurnInReport",
    "DeployTicket",
    "Event",
    "Image",
    "InventorySync",
    "LogLine",
    "Membership",
    "NetworkAttachment",
    "Node",
    "Operation",
    "Organization",
    "Rack",
    "Reservation",
    "Rollout",
    "SSHKey",
    "ServerType",
    "ServerTypePrice",
    "SignInFailure",
    "Site",
    "SiteNetwork",
    "Step",
    "Switch",
    "TenantNetwork",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
]
