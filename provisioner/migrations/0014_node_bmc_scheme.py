"""Node.bmc_scheme: the Redfish URL scheme in the node's record. Existing Redfish nodes get what the driver
used to guess from their port (80 and 8000: http, any other: https), so none of them changes behaviour."""

from typing import Any

from django.db import migrations, models


def scheme_from_port(apps: Any, schema_editor: Any) -> None:
    Node = apps.get_model("provisioner", "Node")
    redfish = Node.objects.filter(bmc_protocol="redfish")
    redfish.filter(bmc_port__in=(80, 8000)).update(bmc_scheme="http")
    redfish.exclude(bmc_port__in=(80, 8000)).update(bmc_scheme="https")


class Migration(migrations.Migration):
    dependencies = [
        ("provisioner", "0013_event_stream"),
    ]

    operations = [
        migrations.AddField(
            model_name="node",
            name="bmc_scheme",
            field=models.CharField(
                blank=True,
                choices=[("http", "HTTP"), ("https", "HTTPS")],
                help_text="Redfish URL scheme (blank for IPMI)",
                max_length=5,
            ),
        ),
        migrations.RunPython(scheme_from_port, migrations.RunPython.noop),
    ]
