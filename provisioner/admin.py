"""Django admin for operators: inventory, server types (burn-in thresholds editable), reservations, audit.

BMC passwords never appear: the credential admin shows the username only, and a new password is written
through a write-only field.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.utils import timezone

from provisioner import models
from provisioner.lifecycle import Actor
from provisioner.models.inventory import SERVER_TYPE_FIELDS
from provisioner.services import metering
from provisioner.states import NodeState

_DESCRIPTION_FIELDS = ("name", "description", "hourly_price_cents")


class ServerTypeForm(forms.ModelForm):
    class Meta:
        model = models.ServerType
        fields = (
            "slug",
            *SERVER_TYPE_FIELDS,
            "burnin_thresholds",
            "warm_pool_size",
            "warm_pool_image",
            "deploy_driver",
            "burnin_driver",
        )

    def clean_burnin_thresholds(self) -> dict[str, Any]:
        from provisioner.burnin.thresholds import resolve_thresholds
        from provisioner.errors import InvalidRequest

        value = self.cleaned_data["burnin_thresholds"] or {}
        try:
            resolve_thresholds(value)  # unknown keys and bad values get a clear message
        except InvalidRequest as exc:
            raise forms.ValidationError(str(exc))
        return value


@admin.register(models.ServerType)
class ServerTypeAdmin(admin.ModelAdmin):
    form = ServerTypeForm
    list_display = ("slug", "name", "gpu_model", "gpu_count", "pcie_gen", "nvlink_links", "warm_pool_size")
    fieldsets = (
        (None, {"fields": ("slug", *_DESCRIPTION_FIELDS)}),
        ("Hardware", {"fields": tuple(f for f in SERVER_TYPE_FIELDS if f not in _DESCRIPTION_FIELDS)}),
        (
            "Burn-in",
            {
                "fields": ("burnin_thresholds",),
                "description": "Overrides of the default thresholds in provisioner/burnin/thresholds.py "
                "(key: value; null turns a limit off).",
            },
        ),
        (
            "Warm pool",
            {
                "fields": ("warm_pool_size", "warm_pool_image"),
                "description": "Servers of this type kept deployed with the image, burned in and powered on, "
                "handed to a reservation of that image in about a minute; the scheduler refills the pool "
                "(blank image: the type's most booked one).",
            },
        ),
        (
            "Drivers",
            {
                "fields": ("deploy_driver", "burnin_driver"),
                "description": "Which drivers deploy and burn in this type's servers; blank: the "
                "installation's default (NEOCLOUD_DEPLOY_DRIVER, NEOCLOUD_BURNIN_DRIVER).",
            },
        ),
    )


class BmcCredentialForm(forms.ModelForm):
    new_password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="write-only; leave empty to keep the current password",
    )

    class Meta:
        model = models.BmcCredential
        fields = ("node", "username")

    def clean_new_password(self) -> str:
        # a new credential saved without one would store "" as its ciphertext: never decryptable
        value: str = self.cleaned_data.get("new_password") or ""
        if self.instance.pk is None and not value:
            raise forms.ValidationError("A new BMC credential needs its password.")
        return value

    def save(self, commit: bool = True) -> models.BmcCredential:
        cred = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            cred.password = self.cleaned_data["new_password"]
        if commit:
            cred.save()
        return cred


@admin.register(models.BmcCredential)
class BmcCredentialAdmin(admin.ModelAdmin):
    form = BmcCredentialForm
    list_display = ("node", "username", "updated_at")


class SwitchForm(forms.ModelForm):
    new_password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="write-only; leave empty to keep the current password",
    )
    new_private_key = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4}),
        required=False,
        help_text="write-only, an unencrypted OpenSSH private key; leave empty to keep the current key",
    )

    class Meta:
        model = models.Switch
        fields = ("name", "site", "driver", "address", "port", "username")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        has_secret = self.instance.password_encrypted or self.instance.private_key_encrypted
        if not has_secret and not data.get("new_password") and not data.get("new_private_key"):
            raise forms.ValidationError("A switch needs a password or a private key to log in with.")
        return data

    def save(self, commit: bool = True) -> models.Switch:
        switch = super().save(commit=False)
        if self.cleaned_data.get("new_password"):
            switch.password = self.cleaned_data["new_password"]
        if self.cleaned_data.get("new_private_key"):
            switch.private_key = self.cleaned_data["new_private_key"].strip() + "\n"
        if commit:
            switch.save()
        return switch


@admin.register(models.Switch)
class SwitchAdmin(admin.ModelAdmin):
    form = SwitchForm
    list_display = ("name", "site", "driver", "address", "port", "username", "updated_at")


class _ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the services only: operators read them here, change them through the services."""

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(models.SiteNetwork)
class SiteNetworkAdmin(admin.ModelAdmin):
    """A site's VLANs and address ranges; the model's clean() refuses a bad one with a sentence per field."""

    list_display = (
        "site",
        "provisioning_vlan",
        "cleaning_vlan",
        "quarantine_vlan",
        "tenant_vlan_first",
        "tenant_vlan_last",
        "tenant_supernet",
        "tenant_prefix",
        "public_range",
    )


@admin.register(models.TenantNetwork)
class TenantNetworkAdmin(_ReadOnlyAdmin):
    list_display = (
        "cidr",
        "vlan",
        "site",
        "organization",
        "reservation",
        "shared",
        "created_at",
        "released_at",
    )
    list_filter = ("site", "shared")


@admin.register(models.NetworkAttachment)
class NetworkAttachmentAdmin(_ReadOnlyAdmin):
    list_display = ("node", "network", "private_address", "public_address", "reservation", "released_at")


@admin.register(models.Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "server_type", "state", "power_state", "bmc_protocol", "bmc_address", "owner")
    list_filter = ("state", "power_state", "server_type", "bmc_protocol")
    search_fields = ("name", "serial", "boot_mac", "bmc_address")
    # state is written only through the lifecycle service (provisioner/services/lifecycle.py)
    readonly_fields = (
        "state",
        "state_changed_at",
        "state_reason",
        "power_state",
        "lease_owner",
        "lease_operation",
        "lease_expires_at",
        "host_key_fingerprints",
        "known_hosts",
        "switch_vlan",  # what the switch reported (the drift check and the network steps write them)
        "switch_checked_at",
        "network_drift",
        "hold_requested",  # asked for and withdrawn through the node services (audited)
        # written by the booking and lifecycle services: an edit here would hand a leased server to another
        # organization behind the reservation's back
        "owner",
        "reservation",
        "image",
    )

    def get_readonly_fields(self, request: Any, obj: models.Node | None = None) -> tuple[str, ...]:
        fields = tuple(super().get_readonly_fields(request, obj))
        # chosen when a node is added; changed later, it would move a leased server into another pool
        # (re-enrolling from the inventory or NetBox applies it once the node is free)
        return fields if obj is None else (*fields, "server_type")

    def has_delete_permission(self, request: Any, obj: models.Node | None = None) -> bool:
        # only a server in the pool, held by no booking and no operation, leaves the inventory
        if obj is not None and (
            obj.state != NodeState.AVAILABLE or obj.reservation_id is not None or obj.lease_owner
        ):
            return False
        return super().has_delete_permission(request, obj)


for model in (models.Site, models.Rack, models.Image, models.Organization, models.Membership):
    admin.site.register(model)


@admin.register(models.Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ("pk", "organization", "server_type", "count", "state", "starts_at", "ends_at")
    list_filter = ("state", "server_type")
    # Everything but the descriptive fields is the booking service's: an ends_at edited here skipped the
    # capacity and quota checks while the allocations kept the old end (double booking). Bookings are made,
    # extended and released through provisioner/services/reservations.py.
    editable_fields = ("name", "status_message")

    def get_readonly_fields(self, request: Any, obj: models.Reservation | None = None) -> list[str]:
        fields = [f.name for f in self.model._meta.get_fields() if f.concrete and not f.auto_created]
        return [f for f in fields if f not in self.editable_fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: models.Reservation | None = None) -> bool:
        # deleting one would leave its servers leased to no booking
        return False


@admin.register(models.AuditEvent)
class AuditEventAdmin(_ReadOnlyAdmin):
    # events are written by the services only: an operator must not be able to forge one
    list_display = ("created_at", "action", "node", "from_state", "to_state", "actor_label", "reason")
    list_filter = ("action",)


class ServerTypePriceForm(forms.ModelForm):
    """A new price, set through the metering service (its checks: not in the past, the installation's
    currency); blank ``effective_from`` means now."""

    class Meta:
        model = models.ServerTypePrice
        fields = ("server_type", "cents_per_hour", "effective_from")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["effective_from"].required = False
        self.fields[
            "effective_from"
        ].help_text = "UTC; blank: now. Never in the past: used time keeps its price."

    def clean_effective_from(self) -> Any:
        value = self.cleaned_data.get("effective_from")
        if value is not None and value < timezone.now() - metering.PRICE_START_SLACK:
            raise forms.ValidationError(
                "A price cannot start in the past: time already used keeps its price."
            )
        return value


@admin.register(models.ServerTypePrice)
class ServerTypePriceAdmin(admin.ModelAdmin):
    """Prices are added, never edited or deleted: a statement already read must not change."""

    form = ServerTypePriceForm
    list_display = ("server_type", "cents_per_hour", "currency", "effective_from", "created_by")
    list_filter = ("server_type",)

    def has_change_permission(self, request: Any, obj: models.ServerTypePrice | None = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: models.ServerTypePrice | None = None) -> bool:
        return False

    def save_model(self, request: Any, obj: models.ServerTypePrice, form: Any, change: bool) -> None:
        saved = metering.set_price(
            obj.server_type,
            obj.cents_per_hour,
            actor=Actor.operator_from_request(request),
            effective_from=obj.effective_from,
        )
        obj.pk, obj.currency, obj.effective_from = saved.pk, saved.currency, saved.effective_from


@admin.register(models.WebhookEndpoint)
class WebhookEndpointAdmin(_ReadOnlyAdmin):
    # never the secret (encrypted at rest; shown once to the organization that made it)
    list_display = ("organization", "url", "active", "created_at")
    list_filter = ("active",)
    fields = ("organization", "url", "event_types", "description", "active", "created_at")
    readonly_fields = fields


@admin.register(models.WebhookDelivery)
class WebhookDeliveryAdmin(_ReadOnlyAdmin):
    list_display = (
        "created_at",
        "endpoint",
        "event_type",
        "state",
        "attempts",
        "last_status_code",
        "last_error",
    )
    list_filter = ("state", "event_type")


@admin.register(models.InventorySync)
class InventorySyncAdmin(_ReadOnlyAdmin):
    list_display = ("started_at", "source", "role", "actor", "outcome", "counts")
    list_filter = ("outcome",)
