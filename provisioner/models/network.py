"""The network we drive: switches, where their management address is and how to log in."""

from __future__ import annotations

from django.db import models

from provisioner import crypto
from provisioner.drivers.registry import SWITCH_DRIVERS
from provisioner.drivers.switch import SwitchAccess


class Switch(models.Model):
    """A switch whose ports the control plane moves between VLANs. ``name`` is what nodes' cabling
    (``Node.switch_name``) calls it. The password and private key are encrypted at rest (NEOCLOUD_CREDENTIAL_KEYS)
    and never shown; either may be blank, not both."""

    name = models.CharField(max_length=100, unique=True)
    site = models.ForeignKey("provisioner.Site", null=True, blank=True, on_delete=models.PROTECT)
    driver = models.CharField(max_length=20, choices=[(d, d) for d in SWITCH_DRIVERS], default="linux")
    address = models.CharField(max_length=255, help_text="management address (host name or IP)")
    port = models.PositiveIntegerField(default=22)
    username = models.CharField(max_length=100)
    password_encrypted = models.TextField(blank=True)
    private_key_encrypted = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<Switch {self.name} {self.driver}://{self.username}@{self.address}:{self.port} secrets=***>"

    @property
    def password(self) -> str:
        return crypto.decrypt(self.password_encrypted) if self.password_encrypted else ""

    @password.setter
    def password(self, value: str) -> None:
        self.password_encrypted = crypto.encrypt(value) if value else ""

    @property
    def private_key(self) -> str:
        return crypto.decrypt(self.private_key_encrypted) if self.private_key_encrypted else ""

    @private_key.setter
    def private_key(self, value: str) -> None:
        self.private_key_encrypted = crypto.encrypt(value) if value else ""

    def access(self, timeout: float = 10.0) -> SwitchAccess:
        """What the driver needs to log in (secrets decrypted here, held only by the driver)."""
        return SwitchAccess(
            name=self.name,
            driver=self.driver,
            address=self.address,
            port=self.port,
            username=self.username,
            password=self.password,
            private_key=self.private_key,
            timeout=timeout,
        )
