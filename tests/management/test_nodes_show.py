"""``manage.py nodes show`` tells an operator which drivers serve a node and, when its record fails their
validation, why it is not offered to reservations."""

from __future__ import annotations

from io import StringIO

from django.core.management import call_command

from provisioner.models import Node, ServerType


def _show(name: str) -> str:
    out = StringIO()
    call_command("nodes", "show", name, stdout=out)
    return out.getvalue()


def test_nodes_show_names_the_drivers_and_the_validation_problem(inventory, settings):
    settings.NEOCLOUD_DEPLOY_DRIVER = settings.NEOCLOUD_BURNIN_DRIVER = "fake"
    text = _show("node-h100-8x-01")
    assert "Drivers: power fake, deploy fake, burn-in fake" in text
    assert "Validation: passes its drivers' checks" in text

    ServerType.objects.filter(slug="h100-8x").update(deploy_driver="ansible")
    Node.objects.filter(name="node-h100-8x-01").update(bmc_port=0)
    text = _show("node-h100-8x-01")
    assert "Drivers: power fake, deploy ansible, burn-in fake" in text
    assert "Validation FAILED (not offered to reservations until fixed):" in text
    assert "    power: bmc_port: 0 is not a port (1-65535)" in text
    assert "    deploy: primary_address: no primary address is recorded" in text
    assert "secret-bmc-pw" not in text
