"""What a person sees, checked without a browser: the favicon, the known_hosts lines, burn-in reports
written for people, help texts. (tests/browser checks the same pages' layout in Chromium.)"""

from __future__ import annotations

import struct

from django.urls import reverse


def test_the_favicon_is_a_real_icon_served_at_the_site_root_and_linked_from_every_page(client, db):
    response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response["Content-Type"] == "image/x-icon"
    reserved, kind, count = struct.unpack("<HHH", response.content[:6])
    assert (reserved, kind) == (0, 1) and count >= 2  # an ICO directory with several sizes
    sizes = {response.content[6 + 16 * i] or 256 for i in range(count)}
    assert {16, 32} <= sizes
    page = client.get(reverse("portal:login")).content.decode()
    assert '<link rel="icon" href="/favicon.ico"' in page
    assert client.head("/favicon.ico").status_code == 200
    assert client.post("/favicon.ico").status_code == 405


def test_sign_up_password_rules_are_a_help_text_like_the_others(client, db):
    body = client.get(reverse("portal:signup")).content.decode()
    field = body[body.index('<label for="id_password1">') :]
    field = field[: field.index('<div class="field')]
    # a list inside a <p> would be pushed out of it by the browser and lose the help text's style
    assert '<div class="help"><ul>' in field and "<li>Your password" in field
    assert '<p class="help">' not in body


def test_the_reservation_page_shows_each_known_hosts_line_on_its_own(
    client, inventory, fake_hw_dir, transactional_db
):
    from provisioner.engine.runner import execute
    from provisioner.models import Node, Operation
    from provisioner.states import OperationKind, OperationState
    from tests.conftest import reserve

    r = reserve(inventory, label="test")
    provision = Operation.objects.get(reservation=r, kind=OperationKind.PROVISION)
    assert execute(provision.pk, owner="test") == OperationState.SUCCEEDED
    node = Node.objects.get(reservation=r)
    lines = [
        "198.18.0.23 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFKPU4f7xkspP6SNv",
        "198.18.0.23 ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAI",
        "198.18.0.23 ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC6a0O6",
    ]
    Node.objects.filter(pk=node.pk).update(ssh_address="198.18.0.23", known_hosts="\n".join(lines) + "\n")
    client.force_login(inventory.owner)
    body = client.get(reverse("portal:reservation", args=[r.pk])).content.decode()
    block = body[body.index(f'id="kh-{node.name}"') :]
    block = block[: block.index("</div>")]
    assert block.count('<code class="kh-line">') == 3
    for line in lines:
        assert f'<code class="kh-line">{line}</code>' in block
    assert "Add these lines to" in body and "this line" not in body
