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
