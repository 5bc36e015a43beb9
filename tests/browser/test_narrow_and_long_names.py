"""A customer on a phone-sized screen with long names (organization, reservation, SSH key): nothing spills
sideways out of the page; and a bad availability window is explained where the answer appears."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from provisioner.models import Organization, SSHKey
from tests.browser.conftest import shot, sign_in
from tests.conftest import reserve

pytestmark = [pytest.mark.browser]

LONG_ORG = "Acme Artificial Intelligence Research Laboratories and Foundation Model Training Group"
LONG_NAME = "llama-3-70b-instruct-finetune-experiment-2024-11-27-learning-rate-sweep-run-000000001"

OVERFLOW_JS = """() => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  document.querySelectorAll("body *").forEach((el) => {
    const box = el.getBoundingClientRect();
    if (box.width && box.right > width + 1 && !el.closest(".card.flush, .mainnav")) {
      wide.push(el.tagName.toLowerCase() + "." + el.className + " right=" + Math.round(box.right));
    }
  });
  return {scroll: document.documentElement.scrollWidth, width: width, wide: wide.slice(0, 8)};
}"""


def _no_sideways_spill(page, where: str) -> None:
    found = page.evaluate(OVERFLOW_JS)
    assert found["scroll"] <= found["width"] and not found["wide"], (where, found)


def test_long_names_stay_inside_a_narrow_screen(page, inventory):
    Organization.objects.filter(pk=inventory.acme.pk).update(name=LONG_ORG)
    SSHKey.objects.filter(pk=inventory.key.pk).update(name="laptop-" + "x" * 60)
    r = reserve(inventory, label="test", ends_at=timezone.now() + dt.timedelta(days=1), name=LONG_NAME)
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, "olivia", "pw-olivia-123")
    for path, name in [
        ("/", "narrow-01-catalog"),
        ("/reserve/", "narrow-02-reserve"),
        ("/reservations/", "narrow-03-reservations"),
        (f"/reservations/{r.pk}/", "narrow-04-reservation"),
        ("/org/", "narrow-05-organization"),
    ]:
        page.goto(path)
        shot(page, name)
        _no_sideways_spill(page, path)


def test_a_bad_availability_window_is_explained_where_the_answer_appears(page, inventory):
    sign_in(page, "olivia", "pw-olivia-123")
    page.wait_for_selector("[data-type=h100-8x]")
    start = timezone.now() + dt.timedelta(days=2)
    page.fill("#id_starts_at", start.strftime("%Y-%m-%dT%H:%M"))
    page.fill("#id_ends_at", (start - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))
    page.click(".window-form button[type=submit]")
    page.wait_for_selector("#availability .alert-error >> text=The window must end after it starts.")
    assert "/login/" not in page.url and page.locator("header.topbar").count() == 1  # swapped, not reloaded
    shot(page, "customer-08-bad-window")
