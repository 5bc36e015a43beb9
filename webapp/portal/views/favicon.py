"""/favicon.ico: browsers ask for it at the site's root whatever the page links, so it is answered here
rather than left to the static files (which live under /static/ and may not be served by Django)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_safe

ICON = Path(__file__).resolve().parent.parent / "static" / "portal" / "favicon.ico"


@cache
def _icon() -> bytes:
    return ICON.read_bytes()


@require_safe
def favicon(request: HttpRequest) -> HttpResponse:
    """The Neocloud mark (16, 32 and 48 px), cached by browsers for a day."""
    response = HttpResponse(_icon(), content_type="image/x-icon")
    response["Cache-Control"] = "public, max-age=86400"
    return response
