"""What a site and a node tell the engine about reaching them: the site's image mirror and the node's SSH
endpoint (a port forward), from the inventory into the model, and the known_hosts name for a port."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.handover import known_hosts_name
from provisioner.lifecycle import Actor
from provisioner.models import Image, Node, Site
from provisioner.services.inventory import enroll


def _inventory(site: dict, node_extra: dict) -> dict:
    return {
        "sites": [site],
        "server_types": [
            {
                "slug": "h100-8x",
                "name": "8x H100",
                "cpu_model": "Xeon",
                "cpu_cores": 112,
                "ram_gib": 2048,
                "gpu_model": "NVIDIA H100 80GB HBM3",
                "gpu_count": 8,
                "gpu_memory_gib": 80,
                "pcie_gen": 5,
                "disk_gib": 30720,
            }
        ],
        "images": [
            {
                "slug": "os",
                "name": "OS",
                "url": "http://images.example/catalog/os-2026.raw",
                "sha256": "0" * 64,
                "size_bytes": 1,
            }
        ],
        "nodes": [
            {
                "name": "n1",
                "server_type": "h100-8x",
                "site": site["slug"],
                "rack": "r1",
                "boot_mac": "52:54:00:00:00:01",
                "address": "198.18.0.2",
                "bmc": {
                    "protocol": "fake",
                    "address": "127.0.0.1",
                    "port": 623,
                    "username": "u",
                    "password": "p",
                },
                **node_extra,
            }
        ],
    }


@pytest.mark.django_db
def test_servers_fetch_images_from_their_sites_mirror_under_the_catalog_file_name():
    enroll(
        _inventory({"slug": "far", "racks": ["r1"], "image_mirror_url": "http://10.0.2.101/"}, {}),
        actor=Actor.system("test"),
    )
    image = Image.objects.get(slug="os")
    assert image.url_for_site(Site.objects.get(slug="far")) == "http://10.0.2.101/os-2026.raw"
    assert image.url_for_site(Site(slug="plain", name="plain")) == image.url
    assert image.url_for_site(None) == image.url


@pytest.mark.django_db
def test_a_nodes_ssh_endpoint_comes_from_the_inventory_and_defaults_to_port_22():
    enroll(
        _inventory(
            {"slug": "lab", "racks": ["r1"]}, {"ssh_endpoint": {"address": "127.0.0.1", "port": 22001}}
        ),
        actor=Actor.system("test"),
    )
    node = Node.objects.get(name="n1")
    assert (node.ssh_endpoint_address, node.ssh_endpoint_port) == ("127.0.0.1", 22001)
    data = _inventory({"slug": "lab", "racks": ["r1"]}, {})
    enroll(data, actor=Actor.system("test"))
    node.refresh_from_db()
    assert (node.ssh_endpoint_address, node.ssh_endpoint_port) == ("", 22)


def test_known_hosts_names_a_host_on_another_port_in_brackets():
    assert known_hosts_name("198.18.0.2", 22) == "198.18.0.2"
    assert known_hosts_name("127.0.0.1", 22001) == "[127.0.0.1]:22001"


def test_a_qemu_lab_puts_its_computers_on_a_site_with_an_image_mirror_and_forwarded_ssh(tmp_path: Path):
    from lab.management.commands.lab import lab_inventory
    from lab.supervisor import make_specs

    specs = make_specs(2, tmp_path, "ipmi", kind="qemu")
    inventory = lab_inventory(specs, {"slug": "os"}, tmp_path)
    site = next(s for s in inventory["sites"] if s["slug"] == "lab-qemu")
    assert site["image_mirror_url"] == "http://10.0.2.101"
    assert [(n["site"], n["ssh_endpoint"]) for n in inventory["nodes"]] == [
        ("lab-qemu", {"address": "127.0.0.1", "port": 22001}),
        ("lab-qemu", {"address": "127.0.0.1", "port": 22002}),
    ]
    simulated = lab_inventory(make_specs(1, tmp_path), {"slug": "os"}, tmp_path)["nodes"][0]
    assert simulated["site"] == "lab" and "ssh_endpoint" not in simulated
